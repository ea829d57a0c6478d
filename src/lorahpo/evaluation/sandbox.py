"""Run untrusted Python code (model-generated programs) in a sandbox.

Each program runs in its own process, in a fresh temporary folder that is deleted afterwards,
with these layers, outermost first:

1. **Limits** (``setrlimit``): CPU seconds, address space (memory), size of any file written,
   open files, no core dumps; and a wall-clock timeout after which the whole process group is
   killed.
2. **No network**: the process gets its own, empty network namespace (``unshare``) where the
   kernel allows it (root, or unprivileged user namespaces); it cannot reach any address, not
   even this machine's loopback.
3. **Another user**: started as root, the interpreter imports the standard-library modules such
   programs use and then becomes ``nobody`` (so it works even when Python lives in a folder only
   root can read, such as ``/root/.pyenv``; other modules then fail to import there); file
   permissions protect the system and the process-count limit stops fork bombs.
4. **Audit hook** (:mod:`lorahpo.evaluation._jail`): inside the interpreter, writes outside the
   folder, deletions, process creation, sockets and native code are refused.

:func:`sandbox_info` says which layers are active on this machine. Layer 4 always is; it is what
stops a fork bomb or a write to ``/tmp`` when layers 2 and 3 are not available, and it is not a
boundary against a determined attacker who finds a hole in the interpreter. Run evaluations of
models you do not trust in a container or VM as well.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

_JAIL = Path(__file__).with_name("_jail.py")
_TAIL_BYTES = 2000

Outcome = Literal["passed", "failed", "timeout"]


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed program.

    Attributes:
        wall_s: Wall-clock seconds before the process group is killed.
        cpu_s: CPU seconds (the kernel kills the process past them).
        memory_mb: Address space in MiB (allocations past it raise ``MemoryError``).
        file_mb: Largest file the program may write, in MiB (stdout and stderr included).
        open_files: Most file descriptors open at once.
        processes: Most processes of the sandbox user (enforced for non-root users only).
    """

    wall_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 1024
    file_mb: int = 8
    open_files: int = 64
    processes: int = 16


@dataclass(frozen=True)
class RunResult:
    """What a sandboxed program did.

    Attributes:
        outcome: ``passed`` (exit code 0), ``failed`` (non-zero exit, a signal, a limit) or
            ``timeout`` (killed after the wall-clock limit).
        returncode: The exit code; negative for a signal (``-9``: killed, ``-24``: CPU limit).
        stdout: The last bytes of standard output, decoded.
        stderr: The last bytes of standard error, decoded.
        wall_s: How long it ran.
    """

    outcome: Outcome
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"


@dataclass(frozen=True)
class SandboxInfo:
    """Which isolation layers this machine grants (see the module documentation)."""

    network_namespace: bool
    user: str
    audit_hook: bool = True

    def describe(self) -> str:
        net = "own network namespace" if self.network_namespace else "sockets refused by audit hook only"
        return f"user {self.user}; {net}; rlimits; audit hook"


def run_python(code: str, limits: Limits = Limits(), isolation: SandboxInfo | None = None) -> RunResult:
    """Run ``code`` as a Python program in the sandbox and report how it ended.

    Args:
        code: The program's source.
        limits: Resource limits.
        isolation: The layers to use; default :func:`sandbox_info`, all that work here. Tests
            pass fewer, to show that the inner layers contain a program on their own.

    Returns:
        The outcome; exceptions of the program are a ``failed`` outcome, never raised here.
    """
    info = isolation or sandbox_info()
    folder = Path(tempfile.mkdtemp(prefix="lorahpo-sandbox-"))
    try:
        (folder / "program.py").write_text(code, encoding="utf-8")
        if info.user == "nobody":
            ids = _nobody()
            if ids is None:
                raise RuntimeError("the sandbox should run as nobody, but there is no user nobody")
            os.chown(folder, *ids)
        return _run(folder, "program.py", _settings(limits, info), limits.wall_s)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@functools.cache
def sandbox_info() -> SandboxInfo:
    """Probe once which isolation layers work here: a network namespace, running as ``nobody``."""
    with tempfile.TemporaryDirectory(prefix="lorahpo-sandbox-probe-") as tmp:
        (Path(tmp) / "probe.py").write_text("import math\n")
        os.chmod(tmp, 0o755)

        def works(info: SandboxInfo) -> bool:
            return _run(Path(tmp), "probe.py", _settings(Limits(), info), 30.0).passed

        network = works(SandboxInfo(network_namespace=True, user=_current_user()))
        nobody = os.geteuid() == 0 and _nobody() is not None and works(SandboxInfo(False, "nobody"))
    return SandboxInfo(network_namespace=network, user="nobody" if nobody else _current_user())


def _settings(limits: Limits, info: SandboxInfo) -> dict[str, object]:
    uid, gid = (_nobody() or (None, None)) if info.user == "nobody" else (None, None)
    return {
        "cpu_s": limits.cpu_s,
        "memory_mb": limits.memory_mb,
        "file_mb": limits.file_mb,
        "open_files": limits.open_files,
        "processes": limits.processes,
        "network_namespace": info.network_namespace,
        "uid": uid,
        "gid": gid,
    }


def _run(folder: Path, program: str, settings: dict[str, object], wall_s: float) -> RunResult:
    # Output goes to anonymous files (capped by the file-size limit), not to pipes a program
    # could flood, nor to paths it could replace.
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(folder), "TMPDIR": str(folder)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", str(_JAIL), str(folder), program, json.dumps(settings)],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            close_fds=True,
            start_new_session=True,  # own process group: the timeout kills all of it
        )
        outcome: Outcome
        returncode: int | None
        try:
            returncode = proc.wait(timeout=wall_s)
            outcome = "passed" if returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            returncode, outcome = None, "timeout"
        finally:
            _kill_group(proc)
        wall = time.monotonic() - start
        return RunResult(outcome, returncode, _tail(out), _tail(err), wall)


def _nobody() -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(fh: BinaryIO) -> str:
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(size - _TAIL_BYTES, 0))
    return fh.read().decode("utf-8", "replace")
