"""Crash-safe file writing, shared by everything that puts a file on disk.

A file is written to a temporary name in its destination directory, flushed and fsynced, given the usual
permissions (``mkstemp`` creates owner-only files), renamed over the destination, and the directory is fsynced
so the rename itself survives a power cut. A crash at any moment leaves the old file or the new one, never a
part of either; on error the temporary file is removed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory (makes renames inside it durable); a no-op where the platform refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | str | None = None, *,
                 writer: Callable[[Path], None] | None = None) -> Path:
    """Atomically replace ``path`` with ``data``, or with whatever ``writer(tmp_path)`` writes to the temporary
    path (for libraries that write files themselves, e.g. ``safetensors.torch.save_file``)."""
    if (data is None) == (writer is None):
        raise TypeError("give exactly one of data or writer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            if data is not None:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        if writer is not None:
            writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
