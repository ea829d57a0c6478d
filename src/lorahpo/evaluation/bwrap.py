"""The operating system's sandbox of a program: a bubblewrap (``bwrap``) command line and its seccomp filter.

bubblewrap (the Debian package ``bubblewrap``; what Flatpak uses) starts the program in new
user, mount, PID, IPC, UTS, cgroup and network namespaces:

- the file system it sees is built from nothing: ``/usr`` (and the ``/bin``, ``/lib``...
  links to it) and the Python installation, read-only; a minimal ``/dev``; and ``/work``, a
  size-limited tmpfs that is the only writable place and disappears with the run. No ``/etc``,
  ``/home``, ``/root`` (beyond the Python installation when it lives there), ``/tmp``, ``/run``,
  ``/proc`` or ``/sys`` of the host: no file, socket or process of the host is reachable by path;
- it runs as user 65534 in its user namespace, with no capabilities; inside its PID namespace
  it sees only its own processes, and when the run ends (or the evaluating process dies:
  ``--die-with-parent``) the namespace ends and the kernel kills every process left in it;
- its network namespace has no interface but a loopback that is down: no address is reachable,
  and abstract Unix sockets of the host are in another namespace;
- a seccomp filter (built with libseccomp through ``pyseccomp``) refuses system calls that
  widen the kernel's surface or reach other processes: creating processes (threads are
  allowed), ptrace and reading other processes' memory, pidfds, namespaces and mounts, kernel
  keys, BPF, perf events, userfaultfd, io_uring, kernel modules, reboot, clocks, sockets other
  than Unix sockets... (:data:`DENIED`).
"""

from __future__ import annotations

import errno
import functools
import os
import subprocess
import sys
from pathlib import Path
from shutil import which

#: The work folder inside the sandbox: a tmpfs, the only writable place.
WORK = "/work"
#: Where the start-up script is mounted (read-only) inside the sandbox.
JAIL = "/jail.py"
#: The uid and gid of the program inside its user namespace (``nobody``).
SANDBOX_ID = "65534"
#: System calls the seccomp filter refuses with EPERM.
DENIED = (
    # other processes: create, trace, read or signal them
    "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "process_madvise",
    # namespaces, mounts, root
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr",
    # kernel interfaces that have been the way in for kernel exploits
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "fanotify_init", "name_to_handle_at", "open_by_handle_at",
    "personality",
    # administration of the machine
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon",
    "swapoff", "acct", "quotactl", "syslog", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname", "iopl", "ioperm", "vhangup",
)
#: The oldest bubblewrap with every option used here (``--disable-userns`` came in 0.8.0).
MIN_VERSION = (0, 8, 0)
_CLONE_THREAD = 0x10000
_BINARY_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def command(python: str, jail: Path, settings_json: str, program_fd: int, seccomp_fd: int, disk_mb: int) -> list[str]:
    """The command line that runs ``python -I -S -B JAIL WORK program.py SETTINGS`` in the sandbox.

    Args:
        python: The interpreter (the real file, not a virtual environment's link to it).
        jail: The start-up script on the host; it is mounted read-only at :data:`JAIL`.
        settings_json: The start-up script's settings.
        program_fd: A readable descriptor of the program's source; it is copied to
            ``WORK/program.py`` (the descriptor must be inherited by bwrap).
        seccomp_fd: A readable descriptor of the compiled seccomp filter (inherited too).
        disk_mb: Size of the work folder's tmpfs in MiB: the total of what the program can write.
    """
    args = [
        "bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
        "--uid", SANDBOX_ID, "--gid", SANDBOX_ID, "--hostname", "sandbox", "--cap-drop", "ALL",
        "--ro-bind", "/usr", "/usr",
    ]
    for name in _BINARY_DIRS:
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for folder in python_folders(python):
        args += ["--ro-bind", folder, folder]
    args += [
        "--dev", "/dev",
        "--size", str(disk_mb * 1024 * 1024), "--tmpfs", WORK,
        "--file", str(program_fd), f"{WORK}/program.py",
        "--ro-bind", str(jail), JAIL,
        # The sandbox's own root and /dev are tmpfs mounts of bwrap's, without a size limit: read-only
        # (writing to the device files in /dev still works).
        "--remount-ro", "/", "--remount-ro", "/dev",
        "--chdir", WORK,
        "--seccomp", str(seccomp_fd),
        python, "-I", "-S", "-B", JAIL, WORK, "program.py", settings_json,
    ]
    return args


def python_folders(python: str) -> list[str]:
    """The folders of the Python installation that the sandbox mounts (those outside ``/usr``)."""
    found = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(python))}
    kept: list[str] = []
    for folder in sorted(found):  # sorted: a folder comes before the folders inside it
        if not any(folder == k or folder.startswith(k + os.sep) for k in ["/usr", *kept]):
            kept.append(folder)
    return kept


def interpreter() -> str:
    """The real file of the Python interpreter (a virtual environment's ``python`` is a link to it)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(base)


@functools.cache
def seccomp_filter() -> bytes:
    """The compiled seccomp filter (classic BPF), built once with libseccomp.

    Raises:
        OSError: libseccomp or its ``pyseccomp`` binding is missing.
    """
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError, AttributeError) as exc:  # the binding loads libseccomp.so at import
        raise OSError(f"libseccomp is not usable ({exc})") from exc

    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in DENIED:
        rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
    # clone is how threads start too: refused only without CLONE_THREAD (a new process). clone3
    # passes its flags in memory, out of the filter's sight: ENOSYS makes the C library fall back
    # to clone.
    rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, 0))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    rules.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.NE, 1))  # 1: AF_UNIX
    fd = os.memfd_create("lorahpo-seccomp")
    with os.fdopen(fd, "w+b") as fh:
        rules.export_bpf(fh)
        fh.seek(0)
        return fh.read()


def version_tuple(text: str) -> tuple[int, ...]:
    """``"0.8.0"`` as ``(0, 8, 0)``; ``()`` when it is not a version."""
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return ()


def problem() -> str | None:
    """Why the sandbox cannot run here, in one line that names the fix; None when it can."""
    if which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed: install it (Debian/Ubuntu: apt-get install bubblewrap)"
    version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=60).stdout.split()
    if version_tuple(version[-1] if version else "") < MIN_VERSION:
        return (f"bubblewrap {' '.join(version[-1:]) or '(unknown version)'} is too old: the sandbox needs "
                f"{'.'.join(map(str, MIN_VERSION))} or later (--disable-userns, --size)")
    try:
        seccomp_filter()
    except OSError as exc:
        return f"{exc}: install libseccomp2 (Debian/Ubuntu) and the pyseccomp package"
    probe = subprocess.run(
        ["bwrap", "--unshare-all", "--unshare-user", "--die-with-parent", "--ro-bind", "/", "/", "true"],
        capture_output=True, text=True, timeout=60,
    )
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        return (f"bwrap cannot create namespaces here ({why}): enable unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces) or allow them in the container")
    return None
