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


def test_integers_past_4300_digits_parse_as_in_evalplus_tests():
    big = "7" * 5000
    r = run_asserts(f"def f():\n    return {big}", [f"assert f() == {big}", "assert len(str(f())) == 5000"])
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


# ---- the filesystem the code sees: the interpreter and its libraries, read-only, and its own tmp --
ROOT = Path(__file__).resolve().parents[2]


def probe(code, site_packages=False):
    """Run `code` that sets `found` and return found (or the error it raised)."""
    job = {"mode": "asserts", "code": code, "tests": ["assert False, repr(found)"]}
    r = sandbox.run(job, FAST, site_packages=site_packages)
    assert r.status == "ok", r
    return r.payload["error"].split(": ", 1)[1]


def try_read(path):
    return (f"try:\n    found = open({str(path)!r}).read()[:40]\n"
            f"except OSError as e:\n    found = type(e).__name__\n")


@needs_ns
@pytest.mark.parametrize("path", ["/etc/shadow", "/etc/hostname", "/etc/hosts", ROOT / "README.md", ROOT / "pyproject.toml",
                                  Path(__file__), Path.home() / ".bashrc", "/proc/1/environ"])
def test_host_files_cannot_be_read(path):
    assert probe(try_read(path)) in ("'FileNotFoundError'", "'PermissionError'")


@needs_ns
def test_user_database_is_made_up():
    found = probe("import getpass, os\nfound = open('/etc/passwd').read(), getpass.getuser(), os.path.expanduser('~')")
    passwd, user, home = eval(found)
    assert passwd.splitlines()[0].startswith("root:x:0:0") and len(passwd.splitlines()) == 2
    assert Path("/etc/passwd").read_text() != passwd and user == "sandbox" and home == "/tmp"


@needs_ns
def test_a_host_file_written_now_is_not_there(tmp_path):
    secret = tmp_path / "checkpoint.txt"
    secret.write_text("weights")
    secret.chmod(0o644)
    assert probe(try_read(secret)) == "'FileNotFoundError'"


@needs_ns
@pytest.mark.parametrize("site_packages", [False, True])
def test_project_tree_cannot_be_listed(site_packages):
    code = (f"import os\ntry:\n    found = sorted(os.listdir({str(ROOT)!r}))\n"
            "except OSError as e:\n    found = type(e).__name__\n")
    found = probe(code, site_packages)
    # the venv is inside the project tree here; with site_packages it alone is shown, read-only
    assert found == "'FileNotFoundError'" or (site_packages and found in ("['.venv']", "[]")), found


@needs_ns
def test_root_holds_only_the_interpreter_libraries_and_private_dirs():
    found = probe("import os\nfound = sorted(os.listdir('/')), sorted(os.listdir('/etc')), os.getcwd(), "
                  "sorted(p for p in os.listdir('/proc') if p.isdigit())")
    top, etc, cwd, pids = eval(found)
    interp_top = {Path(p).parts[1] for p in sandbox._expose()}
    assert set(top) <= {"dev", "proc", "tmp"} | interp_top, top
    assert set(etc) <= {"ld.so.cache", "passwd", "group"} and cwd == "/tmp/sandbox"
    assert len(pids) <= 3  # its own pid namespace: the harness and the code, no host process


@needs_ns
def test_interpreter_and_libraries_are_read_only_and_tmp_is_private():
    code = ("import os, sys\nfound = []\n"
            "for p in [os.__file__, '/usr/lib/evil.so', sys.prefix + '/evil']:\n"
            "    try:\n        open(p, 'a').write('x')\n        found.append('wrote ' + p)\n"
            "    except OSError as e:\n        found.append(type(e).__name__)\n"
            "open('/tmp/scratch', 'w').write('ok')\nfound.append(open('/tmp/scratch').read())\n"
            "import json, ctypes, decimal\nfound.append('stdlib ok')")
    found = eval(probe(code))
    assert not any(f.startswith("wrote") for f in found) and found[-2:] == ["ok", "stdlib ok"], found
    assert not Path("/tmp/scratch").exists() or Path("/tmp/scratch").read_text() != "ok"


@needs_ns
def test_site_packages_are_importable_when_asked():
    assert probe("import yaml\nfound = yaml.safe_load('a: 1')", site_packages=True) == "{'a': 1}"
