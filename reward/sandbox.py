"""Run untrusted Python in a separate, limited process; never in the trainer's process.

Each run is a fresh `python -I` child (reward/_sandbox_harness.py) in its own session, with
its own temp dir as cwd, stdout/stderr to files (a flood cannot fill the trainer's memory),
a minimal environment (the trainer's API keys are not inherited), and a wall-clock kill of the
whole process group. What else is enforced depends on the host, see `enforcement()`:

* root + working `unshare` ("namespaces", the case on our CI/train boxes):
  - network: new empty net namespace (`unshare --net`): no interface but a down loopback;
  - processes: new pid namespace; when its init (the harness) dies the kernel kills every
    process in it, so fork bombs leave nothing behind; RLIMIT_NPROC on a random throwaway
    uid (root ignores RLIMIT_NPROC, so the harness drops to that uid) caps the bomb's size;
  - filesystem: a new root (mount namespace + chroot, set up by the harness as root before
    the uid drop) that holds, read-only, the interpreter (its prefix; the venv too when
    `site_packages`) and the system library dirs it links against (`_expose()`), a few device
    nodes (null, zero, full, random, urandom), a /proc of its own pid namespace, private tmpfs
    /tmp and /dev/shm, and its own work dir at /tmp/sandbox (cwd). Nothing else of the host
    exists there: not /etc (except ld.so.cache), /home, /root, the project tree or the
    trainer's checkpoints. The uid owns nothing, so only /tmp, /dev/shm and its work dir
    are writable, and all three vanish with the run. bubblewrap would do the same, but is
    not installed by `pip`; unshare (util-linux) is on every Debian/Ubuntu base image.
* otherwise ("rlimits"): same rlimits with RLIMIT_NPROC low enough to forbid forking, socket
  functions replaced in the child before the code runs (a determined program can get round
  that, e.g. via ctypes), and files are read and written as the trainer's user (the host's
  whole filesystem is visible: run RL with code rewards as root, or in a container).

Always: RLIMIT_CPU, RLIMIT_AS (per process: with no cgroups the total is nproc x memory),
RLIMIT_FSIZE, no core dumps, per-case SIGALRM timeouts, wall timeout with killpg.
Known gap: the untrusted code shares an interpreter with the harness, so code written to
attack the harness could forge its result line if it found the nonce in memory.

>>> run({"mode": "asserts", "code": "def f(x): return 2 * x", "tests": ["assert f(2) == 4"]}).payload["passed"]
[True]
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HARNESS = str(Path(__file__).with_name("_sandbox_harness.py"))
PRIVATE_DIRS = ["/tmp", "/dev/shm"]  # writable in the sandbox's root, each a fresh tmpfs
# Where shared libraries live (merged-/usr systems link /lib* to /usr/lib*; links are recreated).
LIBRARY_DIRS = ["/lib", "/lib32", "/lib64", "/libx32", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32",
                "/etc/ld.so.cache"]
UNSHARE = ["unshare", "--net", "--pid", "--mount", "--fork", "--kill-child", "--mount-proc"]
# Random uids from a range no distro hands out, so concurrent runs never share a NPROC budget.
UID_RANGE = (1_000_000, 2_000_000_000)


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 5            # RLIMIT_CPU per process
    wall_s: float = 10.0      # whole run, then killpg
    case_s: float = 4.0       # per test / stdin case (SIGALRM)
    memory_mb: int = 1024     # RLIMIT_AS per process
    nproc: int = 8            # processes+threads of the throwaway uid
    fsize_mb: int = 16        # largest file the code may write (stdout included)
    max_output: int = 1 << 20  # bytes of captured stdout per stdin case


@dataclass
class RunResult:
    status: str                 # "ok" | "timeout" | "crashed" (no result line) | "error" (host side)
    payload: dict | None        # the harness' result: {"passed": [...]} or {"outputs": [...]}
    returncode: int | None
    stderr: str
    wall_s: float
    uid: int | None             # throwaway uid the code ran as (None in rlimits mode)


@functools.lru_cache(maxsize=1)
def enforcement() -> dict[str, Any]:
    """What this host can enforce (probed once): {"mode": "namespaces"|"rlimits", ...}."""
    root = os.geteuid() == 0
    ns = False
    if root and shutil.which("unshare"):
        # Probe the mount too: some containers allow unshare but not mounting inside it.
        probe = subprocess.run([*UNSHARE, "mount", "-t", "tmpfs", "tmpfs", "/tmp"], capture_output=True, timeout=10)
        ns = probe.returncode == 0
    return {"mode": "namespaces" if ns else "rlimits", "net_namespace": ns, "pid_namespace": ns,
            "private_tmp": ns, "private_root": ns, "uid_drop": root, "nproc_limit": True,
            "cpu_limit": True, "memory_limit": True, "wall_kill": True}


def _command(site_packages: bool) -> list[str]:
    # -S skips site (and the venv's .pth finders): ~3x faster start, stdlib only, and then the
    # base interpreter runs directly, so the venv (inside the project tree) need not be visible.
    exe = sys.executable if site_packages else os.path.realpath(sys.executable)
    # int_max_str_digits=0: EvalPlus's HumanEval+/MBPP+ tests hold integer literals past Python's
    # 4,300-digit default, which made a right solution fail (EvalPlus lifts the limit the same way).
    python = [exe, "-I", *([] if site_packages else ["-S"]), "-X", "int_max_str_digits=0", HARNESS]
    return [*UNSHARE, *python] if enforcement()["net_namespace"] else python


def _expose(site_packages: bool = False) -> list[str]:
    """Host paths the sandbox's root shows read-only: the interpreter's install (and the venv
    with its site-packages when the code may import them) and the system library dirs."""
    interp = {sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    if site_packages:
        interp.add(sys.prefix)
    return LIBRARY_DIRS + sorted(interp)


def _parse(stdout: bytes, nonce: str) -> dict | None:
    tag = nonce.encode()
    at = stdout.rfind(tag)
    if at < 0:
        return None
    try:
        return json.loads(stdout[at + len(tag):].split(b"\n", 1)[0])
    except ValueError:
        return None


def run(job: dict[str, Any], limits: Limits = Limits(), site_packages: bool = False) -> RunResult:
    """Run one job: {"mode": "asserts", "code", "tests"} or {"mode": "stdio", "code", "inputs"}.

    `site_packages`: let the code import the venv's packages (numpy...), at ~3x start-up cost.
    """
    info = enforcement()
    base = Path(tempfile.mkdtemp(prefix="posttrain-sbx-"))
    work = base / "work"
    work.mkdir()
    uid = secrets.randbelow(UID_RANGE[1] - UID_RANGE[0]) + UID_RANGE[0] if info["uid_drop"] else None
    if uid is not None:
        os.chown(work, uid, uid)
    nonce = secrets.token_hex(16)
    (base / "root").mkdir(mode=0o700)  # mount point of the sandbox's own root
    cfg = {**job, "nonce": nonce, "workdir": str(work), "root": str(base / "root"), "uid": uid,
           "isolate": info["net_namespace"], "expose": _expose(site_packages), "cpu_s": limits.cpu_s,
           "case_s": limits.case_s, "memory_mb": limits.memory_mb, "fsize_mb": limits.fsize_mb,
           "max_output": limits.max_output,
           # Without a uid of its own the count includes the trainer's threads: forbid forks.
           "nproc": limits.nproc if uid is not None else 1}
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "OMP_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.monotonic()
    status = "ok"
    try:
        with open(base / "stdout", "w+b") as out, open(base / "stderr", "w+b") as err:
            proc = subprocess.Popen(_command(site_packages), stdin=subprocess.PIPE, stdout=out, stderr=err,
                                    cwd=work, env=env, start_new_session=True)
            # A timer kill plus a blocking wait: Popen.wait(timeout) polls with sleeps of up to
            # 50 ms, which was half the cost of a short run.
            expired = threading.Event()
            timer = threading.Timer(limits.wall_s, lambda: (expired.set(), _kill_group(proc.pid)))
            timer.start()
            try:
                try:
                    proc.stdin.write(json.dumps(cfg).encode())
                    proc.stdin.close()
                except BrokenPipeError:  # died before reading its config; the result says so
                    pass
                # Wait without reaping, so the group id cannot be recycled before killpg below.
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            finally:
                timer.cancel()
                # Also on success: in rlimits mode a child may have forked and left the harness.
                _kill_group(proc.pid)
                proc.wait()
            if expired.is_set():
                status = "timeout"
            out.seek(0)
            payload = _parse(out.read(), nonce)
            err.seek(0)
            stderr = err.read()[-4000:].decode("utf-8", "replace")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if payload is None and status == "ok":
        status = "crashed"
    return RunResult(status, payload, proc.returncode, stderr, time.monotonic() - start, uid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@functools.lru_cache(maxsize=8)
def pool(workers: int) -> ThreadPoolExecutor:
    """Shared pool: threads only wait on child processes, so `workers` = concurrent sandboxes."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox")


def run_many(jobs: list[dict[str, Any]], limits: Limits = Limits(), workers: int = 2,
             site_packages: bool = False) -> list[RunResult]:
    """Run jobs concurrently on `workers` sandboxes; results in input order."""
    return list(pool(workers).map(lambda j: _run_safely(j, limits, site_packages), jobs))


def _run_safely(job: dict[str, Any], limits: Limits, site_packages: bool) -> RunResult:
    # A host-side failure (disk full, fork refused) must cost one row, not the training step.
    try:
        return run(job, limits, site_packages)
    except (OSError, subprocess.SubprocessError) as exc:
        return RunResult("error", None, None, repr(exc), 0.0, None)
