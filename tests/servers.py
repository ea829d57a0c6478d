"""Servers the parallel tests start for themselves: a PostgreSQL in a temporary folder, and a
local Ray cluster bound to 127.0.0.1. Both stop when the test session ends.

Where one cannot start (no PostgreSQL binaries, no ray package), its tests are skipped, except
under CI, where that is a failure (see ci.py).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from ci import unavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(proc: subprocess.Popen[str], port: int, what: str, timeout_s: float = 30) -> None:
    """Wait until ``proc`` accepts connections on 127.0.0.1:``port``; fail the test, with its
    output, if it ends or does not listen within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"{what} did not start: {proc.communicate()[0]}")
            time.sleep(0.1)


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    path = found[-1] if found else shutil.which("initdb")
    return os.path.dirname(path) if path else None


@contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 in a temporary folder; yields its URL."""
    bindir = _pg_bin()
    if bindir is None:
        unavailable("PostgreSQL server binaries (initdb) not found")
    # PostgreSQL refuses to run as root: run it as the `postgres` user where we are root.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = tempfile.mkdtemp(prefix="lorahpo-pg-")
    if as_user:
        shutil.chown(folder, "postgres")
    data, port = os.path.join(folder, "data"), free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=60)  # noqa: E731
    try:
        run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "lorahpo")
        run(f"{bindir}/pg_ctl", "-D", data, "-l", os.path.join(folder, "log"), "-w", "start",
            "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}")
        try:
            yield f"postgresql+psycopg2://lorahpo@127.0.0.1:{port}/postgres"
        finally:
            run(f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def ray_cluster(num_cpus: int = 4) -> Iterator[str]:
    """A local Ray cluster owned by this process (127.0.0.1, its own temp folder); yields its address."""
    try:
        import ray
    except ImportError:
        unavailable("the ray package is not installed")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # no token written to ~/.ray
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    info = ray.init(
        num_cpus=num_cpus,
        _node_ip_address="127.0.0.1",
        _temp_dir=folder,
        object_store_memory=100 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="warning",
    )
    try:
        yield info.address_info["gcs_address"]
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
