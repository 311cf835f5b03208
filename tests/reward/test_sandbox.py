"""Each escape attempt must be contained, scored 0, and leave the caller running."""

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from reward import sandbox
from reward.code import code_reward

FAST = sandbox.Limits(cpu_s=2, wall_s=4, case_s=1.5)
NS = sandbox.enforcement()["mode"] == "namespaces"
needs_ns = pytest.mark.skipif(not NS, reason="needs root + unshare (namespaces mode)")


def processes_of(uid):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        if str(uid) in uids:
            found.append(pid)
    return found


def run_asserts(code, tests=("assert True",), limits=FAST):
    return sandbox.run({"mode": "asserts", "code": code, "tests": list(tests)}, limits)


def test_good_code_passes_and_runs_in_own_dir():
    r = run_asserts("import os\ncwd = os.getcwd()\nopen('scratch.txt', 'w').write('ok')",
                    ["assert open('scratch.txt').read() == 'ok'", "assert cwd != os.path.expanduser('~root')"])
    assert r.status == "ok" and r.payload["passed"] == [True, True]


def test_infinite_loop_is_stopped():
    t = time.monotonic()
    r = run_asserts("while True:\n    pass")
    assert time.monotonic() - t < FAST.wall_s + 1
    assert r.payload is None or r.payload["passed"] == [False]
    assert code_reward(["while True: pass"], tests=[["assert True"]], limits=FAST) == [0.0]


def test_signal_ignoring_sleeper_is_killed_at_wall_time():
    code = "import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\ntime.sleep(60)"
    t = time.monotonic()
    r = run_asserts(code, limits=sandbox.Limits(cpu_s=2, wall_s=2, case_s=30))
    assert r.status == "timeout" and r.payload is None
    assert time.monotonic() - t < 4


@needs_ns
def test_fork_bomb_ends_in_time_and_leaves_no_process():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    t = time.monotonic()
    r = run_asserts(bomb)
    assert time.monotonic() - t < FAST.wall_s + 1
    assert r.payload is None or r.payload["passed"] == [False]
    assert r.uid is not None and processes_of(r.uid) == []


@needs_ns
def test_detached_background_process_does_not_survive():
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(120)\n    os._exit(0)"
    r = run_asserts(code)
    assert r.payload["passed"] == [True]  # the parent side completes normally...
    time.sleep(0.2)
    assert processes_of(r.uid) == []  # ...but its daemonised child died with the pid namespace


def test_ten_gigabyte_allocation_fails():
    r = run_asserts("x = bytearray(10 * 1024 ** 3)")
    assert r.payload["passed"] == [False] and "MemoryError" in r.payload["error"]


def test_socket_cannot_reach_host_loopback():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'leak')"
    assert code_reward([code], tests=[["assert True"]], limits=FAST) == [0.0]
    with pytest.raises(socket.timeout):
        listener.accept()  # nothing ever connected
    listener.close()


@needs_ns
def test_writes_outside_work_dir_do_not_land():
    tmp_target = Path("/tmp") / f"escape-{uuid.uuid4().hex}"
    repo_target = Path(__file__).resolve().parent / f"escape-{uuid.uuid4().hex}"
    code = (f"for p in [{str(tmp_target)!r}, {str(repo_target)!r}, '../escape-up']:\n"
            "    try:\n        open(p, 'w').write('x')\n    except OSError:\n        pass\n"
            f"open({str(tmp_target)!r}, 'w').write('x')")
    r = run_asserts(code, ["assert False"])
    assert r.status == "ok"
    assert not tmp_target.exists() and not repo_target.exists()
    assert not any(Path("/tmp").glob("escape-up"))


def test_trainer_environment_is_not_inherited(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_TEST_SECRET", "hunter2")
    r = run_asserts("import os", ["assert 'POSTTRAIN_TEST_SECRET' not in os.environ"])
    assert r.payload["passed"] == [True]


@needs_ns
def test_private_home_is_hidden():
    r = run_asserts("import os", ["assert os.listdir(os.path.expanduser('~root')) in ([], ['.pyenv'])"
                                  " or not os.path.isdir(os.path.expanduser('~root'))"])
    assert r.payload["passed"] == [True]


def test_output_flood_is_capped():
    r = run_asserts("import os\nwhile True:\n    os.write(1, b'x' * 65536)")
    assert r.payload is None or r.payload["passed"] == [False]


def test_hard_exit_cannot_fake_success():
    assert code_reward(["import os\nos._exit(0)"], tests=[["assert True"]], limits=FAST) == [0.0]
    assert code_reward(["import sys\nsys.exit(0)"], tests=[["assert True"]], limits=FAST) == [0.0]


def test_caller_keeps_going_with_concurrent_mixed_jobs():
    good = "def f():\n    return 1"
    comps = [good, "while True: pass", "x = bytearray(10 * 1024 ** 3)", good]
    t = time.monotonic()
    scores = code_reward(comps, tests=[["assert f() == 1"]] * 4, workers=2, limits=FAST)
    assert scores == [1.0, 0.0, 0.0, 1.0]
    assert time.monotonic() - t < 2 * FAST.wall_s


def test_enforcement_report_is_honest():
    info = sandbox.enforcement()
    assert info["mode"] in ("namespaces", "rlimits")
    assert info["uid_drop"] == (os.geteuid() == 0)


def test_rlimits_fallback_blocks_sockets_and_still_runs(monkeypatch):
    """The degraded mode used without root/unshare: socket functions are disabled in the child."""
    fallback = {**sandbox.enforcement(), "mode": "rlimits", "net_namespace": False, "pid_namespace": False,
                "private_tmp": False, "uid_drop": False}
    monkeypatch.setattr(sandbox, "enforcement", lambda: fallback)
    ok = run_asserts("def f():\n    return 2", ["assert f() == 2"])
    assert ok.payload["passed"] == [True] and ok.uid is None
    blocked = run_asserts("import socket\nsocket.socket()", ["assert True"])
    assert blocked.payload["passed"] == [False] and "PermissionError" in blocked.payload["error"]
