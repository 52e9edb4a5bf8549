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
from typing import TYPE_CHECKING, Any, Callable

from mom.errors import CheckpointError

if TYPE_CHECKING:  # torch is imported where tensors are read or written, not by `mom --help`
    import torch
    from torch import Tensor


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


def read_json(path: str | os.PathLike, what: str, error: type[Exception] = CheckpointError) -> Any:
    """The JSON in ``path``; a missing, unreadable or malformed file is one ``error`` naming ``what`` it holds."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read {what} ({e})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: {what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


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
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        if required:
            raise CheckpointError(f"{path}: missing (the checkpoint is incomplete)")
        return None
    m = read_json(path, "manifest")
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


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu",
                     expect_format: str | None = None) -> dict[str, Tensor]:
    """Read a safetensors file, turning every way it can be broken into one :class:`CheckpointError`.

    ``expect_format``: the ``format`` its metadata must name (mom writes ``mom`` for models and ``mom-train-state``
    for optimiser state), so a foreign file (HF weights, another tool's tensors) is refused by name."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        if expect_format is not None:
            with safe_open(str(path), framework="pt") as f:
                found = (f.metadata() or {}).get("format")
            if found != expect_format:
                raise CheckpointError(f"{path}: not a {expect_format} file (its metadata names format {found!r}; "
                                      "a file from another tool?)")
        return load_file(str(path), device=str(device))
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {str(e)[:200]})") from None


def save_safetensors(tensors: dict[str, Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (moved to the CPU, made contiguous) as a safetensors file, atomically and fsynced."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, writer=lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
