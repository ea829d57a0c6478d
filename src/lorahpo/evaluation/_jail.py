"""Start-up script of a sandboxed program: ``python -I -S -B _jail.py FOLDER PROGRAM SETTINGS``.

Trusted code runs first: it sets the resource limits SETTINGS (JSON) asks for (CPU seconds,
address space, file size, open files, processes, no core), installs an audit hook, and runs
PROGRAM (a file in FOLDER) as ``__main__``. Limits that cannot be set end the process with exit
code 97 before PROGRAM runs.

**The completion marker.** When PROGRAM's module code has run to its end without an exception,
and only then, this script reads a random token from the file descriptor ``marker_fd`` of
SETTINGS and writes it as the last line of standard output. The caller counts a run as
completed only when that line is there: ``SystemExit``, ``os._exit``, an exit handler or a
signal end the process before it is written. The token is not in the program's file, its
arguments or its environment, and this script reads it only after the program has finished.

The audit hook is an extra layer inside the operating system's sandbox (``bwrap``), never the
boundary: audit hooks are not a security boundary (Python's documentation says so), and a
program can reach the hook's globals through a traceback and switch it off. It refuses, by
raising ``PermissionError``:

- opening a file for writing, or any directory, outside FOLDER (``/dev/null`` excepted);
- deleting, renaming, or changing modes, owners or times of paths outside FOLDER; links; and
  every such call relative to a directory descriptor (which could point anywhere);
- creating processes (fork, exec, spawn, ``subprocess``, ``os.system``) and sending signals;
- sockets of any kind, and loading native code (``ctypes``, ``_posixsubprocess``);
- raising limits, and walking the garbage collector's object graph (a way to reach the hook).
"""

import builtins
import json
import os
import posixpath
import resource
import stat
import sys
import types
from os import fspath
from posixpath import abspath, isdir, realpath

SETUP_FAILED = 97

# The work folder, set in the hook's private namespace by _install.
_ROOT = _PREFIX = ""
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_DEVNULL = ("/dev/null", b"/dev/null")
_ALWAYS = frozenset(
    {
        "os.fork", "os.forkpty", "os.exec", "os.spawn", "os.posix_spawn", "os.system", "os.kill", "os.killpg",
        "os.chroot", "os.link", "os.symlink", "subprocess.Popen", "pty.spawn", "resource.setrlimit",
        "resource.prlimit", "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.setprofile",
        "sys.settrace", "os.startfile",
    }
)
_DENIED_PREFIXES = ("socket.", "ctypes.", "syslog.", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.")
_DENIED_IMPORTS = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "cffi"})
# Events that change the file system: positions of their path arguments, and of their
# directory-descriptor arguments (a path relative to a descriptor could be anywhere).
_PATH_EVENTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "os.remove": ((0,), (1,)),
    "os.rmdir": ((0,), (1,)),
    "os.rename": ((0, 1), (2, 3)),
    "os.mkdir": ((0,), (2,)),
    "os.chmod": ((0,), (2,)),
    "os.chown": ((0,), (3,)),
    "os.utime": ((0,), (3,)),
    "os.mkfifo": ((0,), (2,)),
    "os.mknod": ((0,), (3,)),
    "os.truncate": ((0,), ()),
    "os.chflags": ((0,), ()),
    "os.lchflags": ((0,), ()),
    "os.setxattr": ((0,), ()),
    "os.removexattr": ((0,), ()),
    "shutil.rmtree": ((0,), (1,)),
    "shutil.copyfile": ((1,), ()),
    "shutil.copymode": ((1,), ()),
    "shutil.copystat": ((1,), ()),
    "shutil.copytree": ((1,), ()),
    "shutil.move": ((0, 1), ()),
    "shutil.chown": ((0,), ()),
}


def _inside(path: object) -> bool:
    if not isinstance(path, str | bytes | os.PathLike):
        return False  # a file descriptor, or None: not a path
    try:
        full = realpath(abspath(fspath(path)))
    except (TypeError, ValueError):
        return False
    if isinstance(full, bytes):
        full = full.decode("utf-8", "surrogateescape")
    return full == _ROOT or full.startswith(_PREFIX)


def _deny(what: str) -> None:
    raise PermissionError(f"sandbox: {what} is not allowed")


def _hook(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None))[:3]
        if isinstance(path, int) or _inside(path) or path in _DEVNULL:
            return
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS
        ):
            _deny(f"writing {path!r} outside the work folder")
        if isdir(path):  # a directory descriptor would let *at() calls reach outside
            _deny(f"opening the directory {path!r}")
    elif event in _PATH_EVENTS:
        paths, dir_fds = _PATH_EVENTS[event]
        if any(i < len(args) and args[i] not in (None, -1) for i in dir_fds):
            _deny(f"{event} relative to a directory descriptor")
        for i in paths:
            path = args[i] if i < len(args) else None
            if isinstance(path, int):
                if event != "os.truncate":  # truncating needs a descriptor opened for writing
                    _deny(f"{event} on a file descriptor")
            elif path is not None and not _inside(path):
                _deny(f"{event}({path!r}) outside the work folder")
    elif event == "import":
        if args[0] in _DENIED_IMPORTS:
            _deny(f"import {args[0]}")
    elif event in _ALWAYS or event.startswith(_DENIED_PREFIXES):
        _deny(event)


def _install(root: str) -> None:
    """Install :func:`_hook`, cut off from everything the program can change.

    The hook and the path functions it calls (copies of ``posixpath``'s) get a private global
    namespace: private copies of the builtins, of the constants above and of the ``os`` and
    ``stat`` modules' attributes. Rebinding a builtin, a module attribute or a global of this
    script later does not change what the hook sees.
    """
    private: dict = {"__builtins__": dict(vars(builtins))}
    private["os"] = types.SimpleNamespace(**vars(os))
    private["stat"] = types.SimpleNamespace(**vars(stat))
    for name, value in [*vars(posixpath).items(), *globals().items()]:
        if name.startswith("__") or name in ("os", "stat"):
            continue
        if isinstance(value, types.FunctionType):
            copy = types.FunctionType(value.__code__, private, name, value.__defaults__, value.__closure__)
            copy.__kwdefaults__ = value.__kwdefaults__
            value = copy
        elif isinstance(value, dict):
            value = dict(value)
        private[name] = value
    private["_ROOT"], private["_PREFIX"] = root, root + os.sep
    sys.addaudithook(private["_hook"])


def _limit(settings: dict) -> None:
    """Apply the resource limits that ``settings`` ask for (soft and hard: they cannot be raised)."""
    mib = 1024 * 1024
    for which, value in (
        (resource.RLIMIT_CPU, settings["cpu_s"]),
        (resource.RLIMIT_AS, settings["memory_mb"] * mib),
        (resource.RLIMIT_FSIZE, settings["file_mb"] * mib),
        (resource.RLIMIT_NOFILE, settings["open_files"]),
        (resource.RLIMIT_NPROC, settings["processes"]),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(which, (value, value))


def main() -> None:
    folder, program, settings = os.path.realpath(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    os.chdir(folder)
    with open(program, encoding="utf-8") as fh:
        code = compile(fh.read(), program, "exec")
    try:
        _limit(settings)
    except (OSError, ValueError) as exc:
        print(f"sandbox: setup failed: {exc}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(SETUP_FAILED)
    marker_fd = settings["marker_fd"]
    del sys.argv[1:], settings
    _install(folder)
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    # Reached only when the program's module code returned: an exception, SystemExit or an exit
    # of the process skip it.
    token = os.read(marker_fd, 256)
    sys.stdout.flush()
    os.write(1, b"\n" + token + b"\n")


if __name__ == "__main__":
    main()
