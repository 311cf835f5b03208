"""Runs inside the sandbox child (`python -I _sandbox_harness.py`, config on stdin).

Standard library only, and no import of `reward`: this file is executed, not imported, by a
fresh interpreter that must not pull the trainer's code in. Steps: read config, (as root in
fresh namespaces) move into a new root that holds the interpreter and its libraries read-only
and nothing else of the host, drop to a throwaway uid, set rlimits, then run the untrusted code
against the tests and print one result line tagged with a nonce that the code never sees on
stdin/argv/env.
"""

import ctypes
import io
import json
import os
import resource
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
DEVICES = ("null", "zero", "full", "random", "urandom")


def _mount(libc, src, dst, fstype, flags, data):
    rc = libc.mount(src.encode(), dst.encode(), fstype.encode() if fstype else None, flags,
                    data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {dst}: {os.strerror(err)}")


def _bind(libc, src, dst, readonly):
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:  # a file or device node is mounted over an empty file
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    _mount(libc, src, dst, None, MS_BIND, None)
    if readonly:  # a bind takes its flags from a second, remounting call
        _mount(libc, "none", dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)


def isolate(cfg):
    """Root, inside unshare's mount/pid/net namespaces (nothing here touches the host's mounts):
    build a new root on an empty tmpfs holding only read-only binds of the interpreter and the
    library dirs (`expose`), a few device nodes, a fresh /proc of the new pid namespace, private
    /tmp and /dev/shm, and the work dir at /tmp/sandbox; then chroot into it. The code runs as a
    throwaway uid afterwards, which cannot chroot back out (no CAP_SYS_CHROOT) and holds no
    descriptor of a host directory."""
    libc = ctypes.CDLL(None, use_errno=True)
    root = cfg["root"]
    _mount(libc, "tmpfs", root, "tmpfs", MS_NOSUID, "size=1m,mode=755")
    for d in ("/tmp", "/dev/shm"):  # the only writable places besides the work dir
        os.makedirs(root + d, exist_ok=True)
        _mount(libc, "tmpfs", root + d, "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")
    for path in cfg["expose"]:
        if os.path.islink(path):  # merged /usr: /lib -> usr/lib stays a link into the new root
            os.makedirs(os.path.dirname(root + path), exist_ok=True)
            os.symlink(os.readlink(path), root + path)
        elif os.path.exists(path):
            _bind(libc, path, root + path, readonly=True)
    for dev in DEVICES:
        if os.path.exists("/dev/" + dev):
            _bind(libc, "/dev/" + dev, root + "/dev/" + dev, readonly=False)
    os.makedirs(root + "/proc")
    _mount(libc, "proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    _bind(libc, cfg["workdir"], root + "/tmp/sandbox", readonly=False)
    # Made-up user databases, so user lookups (expanduser, getpass) work without the host's.
    uid = cfg["uid"] if cfg["uid"] is not None else os.getuid()
    os.makedirs(root + "/etc", exist_ok=True)
    with open(root + "/etc/passwd", "w") as f:
        f.write(f"root:x:0:0:root:/root:/bin/false\nsandbox:x:{uid}:{uid}:sandbox:/tmp:/bin/false\n")
    with open(root + "/etc/group", "w") as f:
        f.write(f"root:x:0:\nsandbox:x:{uid}:\n")
    _mount(libc, "none", root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID, "size=1m,mode=755")
    os.chroot(root)
    os.chdir("/tmp/sandbox")


def drop_privileges(uid):
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def set_limits(cfg):
    mem = cfg["memory_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
    size = cfg["fsize_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def block_sockets():
    """Weak fallback when no network namespace is available: a speed bump, not a wall."""
    import _socket
    import socket

    def refuse(*_a, **_k):
        raise PermissionError("network disabled in sandbox")

    for mod in (socket, _socket):
        for name in ("socket", "socketpair", "create_connection", "getaddrinfo", "fromfd"):
            if hasattr(mod, name):
                setattr(mod, name, refuse)


class CaseTimeout(BaseException):
    """BaseException so `except Exception` in the untrusted code does not swallow it."""


def _on_alarm(*_):
    raise CaseTimeout()


def _timed(fn, seconds):
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _describe(exc):
    return f"{type(exc).__name__}: {exc}"[:300]


def run_asserts(cfg):
    ns = {"__name__": "solution"}
    try:
        _timed(lambda: exec(compile(cfg["code"], "solution.py", "exec"), ns), cfg["case_s"])
    except BaseException as exc:  # the code itself failed: no test can pass
        return {"passed": [False] * len(cfg["tests"]), "error": _describe(exc)}
    passed, error = [], None
    for test in cfg["tests"]:
        try:
            _timed(lambda: exec(compile(test, "test.py", "exec"), ns), cfg["case_s"])
            passed.append(True)
        except BaseException as exc:
            passed.append(False)
            error = error or _describe(exc)
    return {"passed": passed, "error": error}


def run_stdio(cfg):
    try:
        program = compile(cfg["code"], "solution.py", "exec")
    except BaseException as exc:
        return {"outputs": [None] * len(cfg["inputs"]), "error": _describe(exc)}
    outputs, error = [], None
    for stdin in cfg["inputs"]:
        out = io.BytesIO()
        sys.stdin = io.TextIOWrapper(io.BytesIO(str(stdin).encode()), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
        try:
            _timed(lambda: exec(program, {"__name__": "__main__"}), cfg["case_s"])
            ok = True
        except SystemExit:  # any exit status: open-instruct's grade_stdio grades the output regardless
            ok = True
        except BaseException as exc:
            ok, error = False, error or _describe(exc)
        outputs.append(out.getvalue()[: cfg["max_output"]].decode("utf-8", "replace") if ok else None)
    return {"outputs": outputs, "error": error}


def decode_tests(cfg):
    """base64(zlib(pickle)) test blob -> plain JSON data, decoded here because unpickling runs code."""
    import base64
    import pickle
    import zlib
    try:
        tests = pickle.loads(zlib.decompress(base64.b64decode(cfg["blob"])))
        json.dumps(tests)  # only plain data may leave the sandbox
        return {"tests": tests}
    except BaseException as exc:
        return {"error": _describe(exc)}


def main():
    cfg = json.loads(sys.stdin.buffer.read())
    nonce = cfg.pop("nonce")
    sys.stdin = open(os.devnull)
    real_stdout = os.fdopen(os.dup(1), "w")
    if cfg["isolate"]:
        isolate(cfg)
    else:
        os.chdir(cfg["workdir"])
    if cfg["uid"] is not None:
        drop_privileges(cfg["uid"])
    set_limits(cfg)
    if not cfg["isolate"]:
        block_sockets()
    signal.signal(signal.SIGALRM, _on_alarm)
    runner = {"stdio": run_stdio, "decode": decode_tests}.get(cfg["mode"], run_asserts)
    result = runner(cfg)
    sys.stdout = sys.__stdout__
    real_stdout.write("\n" + nonce + json.dumps(result) + "\n")
    real_stdout.flush()
    os._exit(0)  # skip atexit hooks the untrusted code may have registered


if __name__ == "__main__":
    main()
