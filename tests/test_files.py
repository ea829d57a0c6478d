"""Atomic writes: the whole content or the old file, and no temporary file left behind."""

from __future__ import annotations

import stat
import threading

import pytest

from lorahpo.files import atomic_writer, write_atomic


def test_text_and_bytes_are_written_whole_with_the_mode_asked(tmp_path):
    path = tmp_path / "a.json"
    assert write_atomic(path, "{\"é\": 1}\n") == path
    assert path.read_bytes() == "{\"é\": 1}\n".encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_atomic(path, b"\x00\x01", mode=0o600, fsync=True)
    assert path.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    write_atomic(path, "old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_writer(path) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("disk on fire")
    assert path.read_text() == "old"
    with pytest.raises(TypeError):
        write_atomic(path, 42)  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_missing_folder_is_an_error_not_a_new_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "no" / "a.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_concurrent_writers_never_produce_a_torn_file(tmp_path):
    path = tmp_path / "shared.txt"
    contents = [bytes([ord("a") + i]) * 200_000 for i in range(4)]  # large: a torn write would show
    write_atomic(path, contents[0])
    seen: set[bytes] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(data: bytes) -> None:
        try:
            for _ in range(30):
                write_atomic(path, data)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    def reader() -> None:
        while not stop.is_set():
            seen.add(path.read_bytes())

    watcher = threading.Thread(target=reader)
    watcher.start()
    writers = [threading.Thread(target=writer, args=(data,)) for data in contents]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    watcher.join()
    assert errors == []
    assert seen and seen <= set(contents)
    assert path.read_bytes() in contents
    assert [p.name for p in tmp_path.iterdir()] == ["shared.txt"]
