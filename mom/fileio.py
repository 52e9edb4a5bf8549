"""Crash-safe file writing and integrity manifests, shared by everything that puts a file on disk.

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


# ------------------------------------------------------------------------------------------------ manifests
# A directory of files that belong together (a model, a training checkpoint) carries ``manifest.json``: every
# file's size and sha256, written last. Reading verifies it, so a file truncated, edited or swapped since it was
# written is named with what is wrong instead of surfacing later as an obscure tensor error or wrong numbers.
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mom-manifest"
MANIFEST_VERSION = 1


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: str | os.PathLike, names: list[str]) -> Path:
    """Record size and sha256 of ``directory/name`` for each name, atomically, as the directory's manifest."""
    directory = Path(directory)
    files = {n: {"bytes": (directory / n).stat().st_size, "sha256": sha256_file(directory / n)} for n in names}
    return write_json_atomic(directory / MANIFEST, {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                                                    "files": files})


def verify_manifest(directory: str | os.PathLike, *, required: bool = False) -> list[str] | None:
    """Check every file the manifest of ``directory`` lists; return the names checked (None: no manifest).

    Raises :class:`mom.errors.CheckpointError` naming the first file that is missing, truncated, grown or changed,
    or the manifest itself when it is unreadable, foreign or from a newer format."""
    from mom.errors import CheckpointError

    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path}: missing (the checkpoint is incomplete)")
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT or not isinstance(m.get("files"), dict):
        raise CheckpointError(f"{path}: not a mom manifest")
    if m.get("version") != MANIFEST_VERSION:
        raise CheckpointError(f"{path}: manifest version {m.get('version')!r} is not supported (this mom reads "
                              f"version {MANIFEST_VERSION}; was it written by another mom release?)")
    for name, entry in m["files"].items():
        f = directory / name
        try:
            want_bytes, want_sha = int(entry["bytes"]), str(entry["sha256"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed entry for {name}") from None
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (listed in {MANIFEST})")
        size = f.stat().st_size
        if size < want_bytes:
            raise CheckpointError(f"{f}: truncated ({size:,} of {want_bytes:,} bytes)")
        if size > want_bytes:
            raise CheckpointError(f"{f}: {size:,} bytes, {want_bytes:,} expected (appended to or replaced)")
        if sha256_file(f) != want_sha:
            raise CheckpointError(f"{f}: corrupted (sha256 differs from {MANIFEST}: changed since it was written)")
    return list(m["files"])
