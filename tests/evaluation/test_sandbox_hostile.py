"""Hostile programs against the sandbox itself: each switches the audit hook off first.

Every program starts with :data:`HOOK_OFF`, the known way past the audit hook (a refused
call's traceback carries the hook's frames, whose ``f_globals`` is the hook's namespace), and
prints ``HOOK OFF`` when that worked, so each test shows the operating system's sandbox
holding on its own. Each test then checks from outside (as root where the tests run as root):
no file outside the work folder, no process left, no signal to this process or to another run,
no connection.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

import psutil
import pytest

from lorahpo.evaluation import bwrap, sandbox
from lorahpo.evaluation.sandbox import Limits

pytestmark = pytest.mark.usefixtures("code_sandbox")
HOSTILE = Limits(wall_s=15.0)
HOOK_OFF = """\
import os
try:
    os.kill(os.getpid(), 0)
except PermissionError as exc:
    tb = exc.__traceback__
    while tb is not None:
        if "_hook" in tb.tb_frame.f_globals:
            tb.tb_frame.f_globals["_deny"] = lambda what: None
        tb = tb.tb_next
os.kill(os.getpid(), 0)  # refused while the hook is on
print("HOOK OFF", flush=True)
"""


def run_hostile(code: str, limits: Limits = HOSTILE, alone: bool = True) -> sandbox.RunResult:
    """Run HOOK_OFF then ``code`` in the sandbox and check that the hook was off.

    When the run is ``alone``, no process of any sandbox may be left after it.
    """
    result = sandbox.run_python(HOOK_OFF + code, limits)
    assert result.stdout.startswith("HOOK OFF"), result.stderr
    if alone:
        assert sandbox_processes() == [], "a process of the sandbox outlived its run"
    return result


def sandbox_processes(wait_s: float = 2.0) -> list[int]:
    """Processes of sandboxed programs still running (the start-up script's path is on their command line)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if bwrap.JAIL in (proc.info["cmdline"] or []):
                found.append(proc.pid)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.fixture
def outside_targets(tmp_path):
    """``outside_targets(name, *folders)``: paths outside the work folder a program must not create,
    in this test's folder, in $HOME and in ``folders``; whatever of them exists afterwards is removed."""
    made: list[str] = []

    def targets(name: str, *folders: str) -> list[str]:
        unique = f"lorahpo-escape-{uuid.uuid4().hex}"
        paths = [str(tmp_path / name), os.path.join(os.path.expanduser("~"), "." + unique)]
        paths += [os.path.join(folder, unique) for folder in folders]
        made.extend(paths)
        return paths

    yield targets
    for path in made:
        if os.path.lexists(path):
            os.remove(path)


def assert_absent(paths: list[str]) -> None:
    present = [p for p in paths if os.path.lexists(p)]
    assert not present, f"the sandbox wrote outside its folder: {present}"


def test_1_with_the_hook_off_nothing_outside_is_reachable(outside_targets):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    targets = outside_targets("escaped.txt", "/tmp")
    code = f"""
import ctypes, socket
libc = ctypes.CDLL(None, use_errno=True)
def attempt(name, call):
    try:
        result = call()
        print("ESCAPED", name, result)
    except OSError as exc:
        print(name, "refused", exc.errno)
for path in {targets!r}:
    attempt("write " + path, lambda: open(path, "w").write("escaped"))
attempt("fork", os.fork)
attempt("tcp", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2))
attempt("raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
print("ptrace", libc.ptrace(0x4206, os.getppid(), 0, 0), ctypes.get_errno())  # PTRACE_SEIZE
attempt("setuid", lambda: os.setuid(0))
"""
    try:
        result = run_hostile(code)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert_absent(targets)
    assert "ESCAPED" not in result.stdout, result.stdout
    assert "ptrace -1 1" in result.stdout  # EPERM
    assert result.passed, result.stderr


def test_2_writes_through_a_directory_descriptor_stay_inside(outside_targets):
    # No hook bypass needed before: the hook saw the path relative to the cwd, the kernel
    # resolved it relative to the descriptor.
    targets = outside_targets("escaped.txt")
    code = f"""
fd = os.open(".", os.O_RDONLY)
os.makedirs("a/b/c")
os.chdir("a/b/c")
for target in {targets!r}:
    try:
        os.open("../../.." + target, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
        print("ESCAPED", target)
    except OSError as exc:
        print("refused", exc.errno)
"""
    result = run_hostile(code)
    assert_absent(targets)
    assert "ESCAPED" not in result.stdout and result.passed


def test_3_fifos_are_made_nowhere_but_in_the_work_folder(outside_targets):
    targets = outside_targets("fifo", "/tmp", "/var/tmp", "/dev/shm")
    code = f"""
for path in {targets!r}:
    try:
        os.mkfifo(path)
        print("ESCAPED", path)
    except OSError as exc:
        print("refused", path, exc.errno)
os.mkfifo("inside")
print("inside", os.path.exists("inside"))
"""
    result = run_hostile(code)
    assert_absent(targets)
    assert "ESCAPED" not in result.stdout and "inside True" in result.stdout


def test_4_exit_status_tricks_are_not_a_completed_run():
    for trick in ("raise SystemExit\n", "os._exit(0)\n", "import atexit\natexit.register(os._exit, 0)\nassert 0\n"):
        result = run_hostile(trick)
        assert result.returncode == 0 and not result.completed and not result.passed, trick


def test_5_double_forked_daemons_do_not_outlive_the_run(tmp_path):
    flag = tmp_path / "daemon-was-here"
    code = f"""
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
for fork in (os.fork, libc.fork):
    try:
        pid = fork()
    except OSError as exc:
        print("refused", exc.errno)
        continue
    if pid == 0:  # the child: detach, fork again, live on and write later
        os.setsid()
        if fork() == 0:
            time.sleep(3)
            open({str(flag)!r}, "w").write("alive")
        os._exit(0)
    print("forked", pid, ctypes.get_errno())
time.sleep(0.5)
"""
    result = run_hostile(code)
    time.sleep(3.5)
    assert not flag.exists() and sandbox_processes(0) == []
    assert result.passed and "refused 1" in result.stdout and "forked -1 1" in result.stdout  # EPERM both ways


def test_6_no_signal_reaches_this_process_or_another_run(tmp_path):
    code_b = """
import signal
for pid in {victims} + [{parent}]:
    for name, call in (("pidfd", lambda: signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGKILL)),
                       ("kill", lambda: os.kill(pid, signal.SIGKILL))):
        try:
            call()
            print("ESCAPED", name, pid)
        except OSError as exc:
            print(name, pid, "refused", exc.errno)
try:
    os.kill(-1, signal.SIGKILL)
except OSError as exc:
    print("kill -1 refused", exc.errno)
"""
    victim_result = {}
    victim = threading.Thread(target=lambda: victim_result.update(
        r=sandbox.run_python("import time\ntime.sleep(4)\nprint('victim done')\n", Limits(wall_s=15.0))))
    victim.start()
    try:
        deadline = time.monotonic() + 10
        while not (pids := sandbox_processes(0)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pids, "the victim did not start"
        result = run_hostile(code_b.format(victims=pids, parent=os.getpid()), alone=False)
    finally:
        victim.join()
    assert "ESCAPED" not in result.stdout, result.stdout
    assert victim_result["r"].passed and victim_result["r"].stdout == "victim done\n"
    assert sandbox_processes() == []


def test_7_native_code_reaches_no_socket_or_process_outside(tmp_path):
    path_server = socket.socket(socket.AF_UNIX)
    path_server.bind(str(tmp_path / "sock"))
    abstract = f"\0lorahpo-test-{uuid.uuid4().hex}"
    abstract_server = socket.socket(socket.AF_UNIX)
    abstract_server.bind(abstract)
    servers = (path_server, abstract_server)
    for server in servers:
        server.listen()
        server.settimeout(0.5)
    code = f"""
import ctypes, socket
cdll = next(c for c in object.__subclasses__() if c.__name__ == "CDLL")  # reached as in the report
libc = cdll(None, use_errno=True)
for address in ({str(tmp_path / "sock")!r}, {abstract!r}):
    try:
        socket.socket(socket.AF_UNIX).connect(address)
        print("ESCAPED", address)
    except OSError as exc:
        print("refused", exc.errno)
for name, call in (
    ("unshare", lambda: libc.unshare(0x10000000)),
    ("mount", lambda: libc.mount(b"x", b"/work", b"tmpfs", 0, None)),
    ("ptrace", lambda: libc.ptrace(16, 1, 0, 0)),  # PTRACE_ATTACH
):
    print(name, call(), ctypes.get_errno())
"""
    try:
        result = run_hostile(code)
        for server in servers:
            with pytest.raises(TimeoutError):
                server.accept()
    finally:
        for server in servers:
            server.close()
    assert "ESCAPED" not in result.stdout, result.stdout
    for name in ("unshare", "mount", "ptrace"):
        assert f"{name} -1 1\n" in result.stdout  # EPERM


def test_8_the_work_folder_has_a_total_quota():
    limits = Limits(wall_s=30.0, disk_mb=32, file_mb=8)
    code = """
written = 0
try:
    for i in range(256):  # 2 GiB in files under the file-size limit
        with open(f"part{i}", "wb") as fh:
            fh.write(b"x" * (7 * 1024**2))
        written += 7
except OSError as exc:
    print("stopped", exc.errno)
print("written", written)
"""
    result = run_hostile(code, limits)
    assert "stopped 28" in result.stdout  # ENOSPC
    written = int(result.stdout.split("written ")[1])
    assert written <= limits.disk_mb


def test_a_run_killed_at_its_wall_clock_leaves_no_process():
    code = "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\ntime.sleep(60)\n"
    result = run_hostile(code, Limits(wall_s=1.0))
    assert result.outcome == "timeout" and result.wall_s < 5
