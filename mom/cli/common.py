"""What several commands share: output files checked before long work, the data directory a measuring command
reads, windows in batches, a model config with overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from mom.config.model import MoMConfig, resolve_config
from mom.data.tokens import DEFAULT_DATA_DIR
from mom.errors import DataError, MomError
from mom.fileio import atomic_write


# ================================================================================================ shared CLI helpers
def check_output_file(path: str | os.PathLike, option: str | None = None) -> Path:
    """A file a command will write: not a directory, in a directory that exists and is writable. Commands that write
    at the end of long work call it up front, naming their ``option``; :func:`write_atomic` calls it again."""
    path = Path(path)
    where = f"{option} {path}" if option else str(path)
    if path.is_dir():
        raise MomError(f"{where}: is a directory; give a file name")
    if not path.parent.is_dir():
        state = "is not a directory" if path.parent.exists() else "does not exist"
        raise MomError(f"{where}: directory {path.parent} {state}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise MomError(f"{where}: directory {path.parent} is not writable")
    return path


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """:func:`mom.fileio.atomic_write` with every OS failure turned into one clear user error."""
    path = check_output_file(path)
    try:
        return atomic_write(path, data)
    except OSError as e:
        raise MomError(f"{path}: cannot write ({e.strerror or e})") from None


def resolve_data_dir(spec: str | None, measure: str = "routing",
                     accepts: str = "DIR (a directory with val.bin, from 'mom prepare --out DIR')") -> Path:
    """``--data`` if given, else the built-in corpus when it has been prepared under data/builtin. Without either,
    the error says what the command would ``measure`` and which ``--data`` forms it ``accepts``."""
    if spec is not None:
        path = Path(spec)
        if not path.exists():
            raise DataError(f"{path}: no such data directory or token file")
        return path
    if (DEFAULT_DATA_DIR / "val.bin").is_file():
        return DEFAULT_DATA_DIR
    raise DataError(f"no data to measure {measure} on: pass --data {accepts}, or prepare the built-in corpus with "
                    f"'mom prepare --out {DEFAULT_DATA_DIR}'")


def iter_batches(windows_WT: Tensor, batch_size: int, device: torch.device) -> Iterator[Tensor]:
    for i in range(0, windows_WT.shape[0], batch_size):
        yield windows_WT[i:i + batch_size].to(device)


def check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise MomError(f"{name} must be ≥ 1, got {value}")


def model_config(spec: str, overrides: dict[str, str]) -> MoMConfig:
    """A preset or JSON config with the command's ``--model.FIELD`` overrides applied."""
    cfg = resolve_config(spec)
    return cfg.replace(**overrides) if overrides else cfg
