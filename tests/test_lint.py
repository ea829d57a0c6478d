"""Static checks as tests: ruff on the code, tests and benchmarks, and mypy on the library.

Both read their settings from pyproject.toml. Where ruff or mypy is not installed the test is
skipped, except under CI (``CI=true``), where that is a failure: CI must run the checks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from servers import unavailable

ROOT = Path(__file__).resolve().parents[1]


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        unavailable(f"{tool} is not installed (pip install -e '.[test]')")
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_finds_nothing():
    # --no-cache: the check takes well under a second, and leaves no .ruff_cache in the checkout.
    proc = _run("ruff", "check", "--no-cache", "src", "tests", "benchmarks")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_finds_nothing():
    # The cache lives outside the checkout, one per user and checkout: the first run analyses
    # the installed torch and transformers (minutes), later runs only what changed (seconds).
    key = hashlib.sha256(f"{os.getuid()}:{ROOT}".encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / f"lorahpo-mypy-{key}"
    proc = _run("mypy", "--cache-dir", str(cache), "src")
    assert proc.returncode == 0, proc.stdout + proc.stderr
