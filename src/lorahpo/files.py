"""Writing a file so that a reader sees the old file or the whole new one, never part of one.

Study processes, trial processes and concurrent trials read files that others are writing
(results, verdicts, cached data). Each write goes to a temporary file in the same folder, which
then replaces the target in one ``os.replace``: atomic on the same filesystem.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_writer(path: str | os.PathLike[str], *, mode: int = 0o644, fsync: bool = False) -> Iterator[BinaryIO]:
    """Open a binary file that replaces ``path`` when the ``with`` block ends without an error.

    The temporary file is named after the target, the process id and a random part, so
    concurrent writers, in threads or processes, never share one. If the block raises, the
    temporary file is removed and ``path`` is left as it was.

    Args:
        path: The file to write; its folder must exist.
        mode: Permission bits of the new file (0o644: readable by all, like any file pip writes).
        fsync: Flush the data to disk before the rename, so it survives a power loss.

    Yields:
        The temporary file, open for writing bytes.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], data: str | bytes, *, mode: int = 0o644, fsync: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; see :func:`atomic_writer`.

    Returns:
        ``path``, as a :class:`~pathlib.Path`.
    """
    with atomic_writer(path, mode=mode, fsync=fsync) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)
