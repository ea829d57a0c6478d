"""Run untrusted Python code (model-generated programs) in a sandbox.

Each program runs in its own process, with these layers, outermost first:

1. **The operating system's sandbox** (:mod:`lorahpo.evaluation.bwrap`): bubblewrap starts the
   program in new user, mount, PID, IPC, UTS and network namespaces, on a read-only view of the
   system and of the Python installation, with a size-limited tmpfs as the only writable place
   and a seccomp filter; every process it leaves ends with the run. This is the boundary.
2. **Limits** (``setrlimit``): CPU seconds, address space (memory), size of any file written,
   open files, no core dumps; and a wall-clock timeout after which the run is killed.
3. **Audit hook** (:mod:`lorahpo.evaluation._jail`): inside the interpreter, writes outside the
   folder, process creation, sockets and native code are refused. An extra layer only: a
   program can switch it off.

A run counts as completed only when the program's module code returned: the start-up script
then prints a random token, read from a pipe only after the program has finished, as the last
line; early exits (``SystemExit``, ``os._exit``, exit handlers) never print it.

Where bubblewrap or user namespaces are not available, :func:`run_python` refuses to run code
(:class:`SandboxUnavailable`, one line naming the fix) unless the caller asks for an
unsandboxed run explicitly (``sandboxed=False``: layers 2 and 3 only, in a temporary folder
of the host; for code you trust).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from lorahpo.evaluation import bwrap

_JAIL = Path(__file__).with_name("_jail.py")
_TAIL_BYTES = 2000

Outcome = Literal["passed", "failed", "timeout"]


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run on this machine; the message names the fix, in one line."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed program.

    Attributes:
        wall_s: Wall-clock seconds before the run is killed.
        cpu_s: CPU seconds (the kernel kills the process past them).
        memory_mb: Address space in MiB (allocations past it raise ``MemoryError``).
        file_mb: Largest file the program may write, in MiB (stdout and stderr included).
        disk_mb: All the program may write, in MiB (the size of its tmpfs; sandboxed runs only).
        open_files: Most file descriptors open at once.
        processes: Most processes of the user (unsandboxed runs of a non-root user; in the
            sandbox no process can be created).
    """

    wall_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 1024
    file_mb: int = 8
    disk_mb: int = 64
    open_files: int = 64
    processes: int = 16


@dataclass(frozen=True)
class RunResult:
    """What a sandboxed program did.

    Attributes:
        outcome: ``passed`` (its module code returned, then exit code 0), ``failed`` (an
            exception, an early exit of any status, a signal, a limit) or ``timeout`` (killed
            after the wall-clock limit).
        returncode: The exit code; negative for a signal (``-9``: killed, ``-24``: CPU limit).
        stdout: The last bytes of standard output, decoded, without the completion marker.
        stderr: The last bytes of standard error, decoded.
        wall_s: How long it ran.
        completed: Whether the program's module code returned (the completion marker came).
    """

    outcome: Outcome
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    completed: bool = False

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"


def run_python(code: str, limits: Limits = Limits(), *, sandboxed: bool = True) -> RunResult:
    """Run ``code`` as a Python program and report how it ended.

    Args:
        code: The program's source.
        limits: Resource limits.
        sandboxed: Run it in the operating system's sandbox (the default). False runs it with the
            limits and the audit hook only, in a temporary folder of the host: for code you trust.

    Returns:
        The outcome; exceptions of the program are a ``failed`` outcome, never raised here.

    Raises:
        SandboxUnavailable: ``sandboxed`` and the sandbox cannot run here.
    """
    if not sandboxed:
        return _run_unsandboxed(code, limits)
    reason = sandbox_problem()
    if reason is not None:
        raise SandboxUnavailable(reason)
    return _run_sandboxed(code, limits)


@functools.cache
def sandbox_problem() -> str | None:
    """Why the sandbox cannot run here (one line naming the fix), or None when it can; probed once."""
    reason = bwrap.problem()
    if reason is not None:
        return reason
    probe = _run_sandboxed("import math\n", Limits(wall_s=60.0))
    if not probe.passed:
        last = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
        return f"the sandbox cannot start Python here ({last}): see the sandbox section of docs/evaluation.md"
    return None


def _run_sandboxed(code: str, limits: Limits) -> RunResult:
    with _memfd("program", code.encode("utf-8")) as program, _memfd("seccomp", bwrap.seccomp_filter()) as rules:

        def command(settings: str) -> list[str]:
            return bwrap.command(bwrap.interpreter(), _JAIL, settings, program, rules, limits.disk_mb)

        return _run(command, limits, None, (program, rules))


def _run_unsandboxed(code: str, limits: Limits) -> RunResult:
    folder = Path(tempfile.mkdtemp(prefix="lorahpo-unsandboxed-"))
    try:
        (folder / "program.py").write_text(code, encoding="utf-8")

        def command(settings: str) -> list[str]:
            return [sys.executable, "-I", "-S", "-B", str(_JAIL), str(folder), "program.py", settings]

        return _run(command, limits, folder, ())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_allow_unsandboxed = False


@contextlib.contextmanager
def unsandboxed_allowed(allowed: bool = True) -> Iterator[None]:
    """Within this block, :func:`sandboxed` lets code run unsandboxed where the sandbox cannot run."""
    global _allow_unsandboxed
    saved, _allow_unsandboxed = _allow_unsandboxed, allowed
    try:
        yield
    finally:
        _allow_unsandboxed = saved


def sandboxed() -> bool:
    """Whether scorers should run code in the sandbox: True where it runs.

    Raises:
        SandboxUnavailable: It cannot run here, and unsandboxed runs were not allowed
            (:func:`unsandboxed_allowed`).
    """
    reason = sandbox_problem()
    if reason is None:
        return True
    if _allow_unsandboxed:
        return False
    raise SandboxUnavailable(f"{reason}; or accept running generated code unsandboxed (--allow-unsandboxed)")


def describe(sandboxed: bool = True) -> str:
    """The layers a run gets, in words (stored with results)."""
    if not sandboxed:
        return "UNSANDBOXED: rlimits and audit hook only"
    return (
        "bwrap: user/mount/pid/ipc/uts/net namespaces, read-only system, tmpfs work folder, seccomp; "
        "rlimits; audit hook"
    )


def _run(argv: Callable[[str], list[str]], limits: Limits, host_folder: Path | None, fds: tuple[int, ...]) -> RunResult:
    """Start the program and wait for its end.

    Args:
        argv: The command line, given the start-up script's settings (JSON).
        limits: The limits.
        host_folder: The work folder on the host of an unsandboxed run; None in the sandbox.
        fds: Descriptors the command reads (passed on to it).
    """
    token = secrets.token_hex(16)
    marker_read, marker_write = os.pipe()
    os.write(marker_write, token.encode())
    os.close(marker_write)
    settings = {
        "cpu_s": limits.cpu_s,
        "memory_mb": limits.memory_mb,
        "file_mb": limits.file_mb,
        "open_files": limits.open_files,
        "processes": limits.processes,
        "marker_fd": marker_read,
    }
    # Output goes to anonymous files (capped by the file-size limit), not to pipes a program
    # could flood, nor to paths it could replace.
    home = str(host_folder) if host_folder is not None else bwrap.WORK
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home}
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.monotonic()
            proc = subprocess.Popen(
                argv(json.dumps(settings)),
                cwd=host_folder or "/",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                pass_fds=(marker_read, *fds),
                start_new_session=True,  # own process group: the timeout kills all of it
            )
            returncode: int | None
            try:
                returncode = proc.wait(timeout=limits.wall_s)
                if host_folder is None and returncode > 128:  # bwrap reports a program's signal N as 128 + N
                    returncode = 128 - returncode
            except subprocess.TimeoutExpired:
                returncode = None
            finally:
                _kill_group(proc)
            wall = time.monotonic() - start
            stdout, marker = _tail(out), f"\n{token}\n"
            completed = stdout.endswith(marker)
            if completed:
                stdout = stdout[: -len(marker)]
            stderr = _tail(err)
    finally:
        os.close(marker_read)
    outcome: Outcome = "timeout" if returncode is None else "passed" if completed and returncode == 0 else "failed"
    return RunResult(outcome, returncode, stdout, stderr, wall, completed)


@contextlib.contextmanager
def _memfd(name: str, data: bytes) -> Iterator[int]:
    """An anonymous in-memory file holding ``data``, positioned at its start: its descriptor."""
    fd = os.memfd_create(f"lorahpo-{name}")  # close-on-exec, but passed to bwrap (pass_fds)
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(fh: BinaryIO) -> str:
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(size - _TAIL_BYTES, 0))
    return fh.read().decode("utf-8", "replace")

