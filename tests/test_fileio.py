"""Atomic writes: the destination holds the old file or the new one, never a part; no temporary files remain."""

import os
import stat

import pytest

from mom.fileio import atomic_write, file_mode, write_json_atomic


def test_atomic_write_replaces_and_sets_usual_permissions(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write(p, "old")
    atomic_write(p, b"new")
    assert p.read_text() == "new"
    assert stat.S_IMODE(os.stat(p).st_mode) == file_mode()  # not mkstemp's owner-only 0600
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt"]


def test_failed_writer_keeps_the_old_file(tmp_path):
    p = tmp_path / "model.bin"
    atomic_write(p, b"good")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(p, writer=broken)
    assert p.read_bytes() == b"good"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["model.bin"]


def test_json_and_argument_checks(tmp_path):
    write_json_atomic(tmp_path / "sub" / "c.json", {"a": 1, "é": "ü"})
    assert (tmp_path / "sub" / "c.json").read_text(encoding="utf-8") == '{\n  "a": 1,\n  "é": "ü"\n}\n'
    with pytest.raises(TypeError):
        atomic_write(tmp_path / "x", b"1", writer=lambda t: None)
