"""A prepared dataset: ``train.bin`` / ``val.bin`` (uint16 token ids, nanoGPT's layout) and ``meta.json``; loading a
split with every id checked against the model's vocabulary, and validation windows.

Prepared dataset layout (nanoGPT's): ``train.bin`` and ``val.bin`` hold the GPT-2 token ids of every
document, each followed by ``<|endoftext|>`` (50256), as one flat little-endian ``uint16`` array;
``meta.json`` records where they came from (sources with document and token counts, split seed and
fraction, tokenizer hash, format version). :func:`load_tokens` also reads directories or ``.bin`` files
prepared by nanoGPT itself (e.g. OpenWebText), which have no ``meta.json``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mom.data.tokenizer import MAX_VOCAB, N_VOCAB, Tokenizer, check_data_tokenizer
from mom.errors import DataError
from mom.fileio import read_json

DEFAULT_DATA_DIR = Path("data") / "builtin"


FORMAT_VERSION = 1


DTYPE = np.uint16


SPLITS = ("train", "val")


DATASET_FILES = ("train.bin", "val.bin", "meta.json")


_CHECK_CHUNK = 1 << 24  # tokens per chunk when scanning a token file for out-of-vocabulary ids


def read_meta(path: str | os.PathLike) -> dict | None:
    """The ``meta.json`` of a prepared directory (or of the directory holding a ``.bin``), or ``None`` if absent."""
    p = Path(path)
    meta_path = (p if p.is_dir() else p.parent) / "meta.json"
    if not meta_path.is_file():
        return None
    meta = read_json(meta_path, "dataset metadata", DataError)
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: dataset metadata must be a JSON object")
    if meta.get("format") == "mom-tokens":
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{meta_path}: dataset format version {meta.get('format_version')!r} is not supported "
                f"(this mom reads version {FORMAT_VERSION}); prepare it again"
            )
        if meta.get("dtype") != "uint16":
            raise DataError(f"{meta_path}: dtype {meta.get('dtype')!r} is not supported (uint16 only)")
        vocab = meta.get("vocab_size", N_VOCAB)
        if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
            raise DataError(f"{meta_path}: vocab_size {vocab!r} is not a positive integer")
        if vocab > MAX_VOCAB:
            raise DataError(f"{meta_path}: vocab_size {vocab:,} does not fit uint16 token ids (at most {MAX_VOCAB:,})")
    return meta


def load_tokens(
    path: str | os.PathLike,
    split: str = "train",
    *,
    vocab_size: int | None = None,
    check_ids: bool = True,
) -> np.memmap:
    """The tokens of one split as a read-only ``np.memmap`` of ``uint16``.

    ``path`` is a directory holding ``{split}.bin`` (one made by :func:`prepare`, or nanoGPT's own layout with
    ``train.bin``/``val.bin`` and no meta.json), or a single ``.bin`` file, used as the given split's tokens.
    Checks: non-empty, whole number of uint16 values, token count equal to meta.json's (when present), and,
    with ``check_ids``, every id below ``vocab_size`` (default: meta.json's, else 50257; scanned in chunks).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    meta = read_meta(p)
    if p.is_dir():
        bin_path = p / f"{split}.bin"
        if not bin_path.is_file():
            have = sorted(f.name for f in p.glob("*.bin"))
            raise DataError(
                f"{p}: no {split}.bin here (found: {', '.join(have) or 'no .bin files'}); "
                f"prepare a dataset with: mom prepare --out {p}"
            )
    elif p.suffix != ".bin":
        # A text file read as uint16 would pass every check but the id range, and flops/routes/prune would then
        # measure, and decide on, noise.
        raise DataError(f"{p}: not a token file (.bin) or dataset directory; tokenise text first with: "
                        f"mom prepare --corpus {p} --out DIR")
    else:
        bin_path = p
    if meta is not None and meta.get("format") != "mom-tokens":
        meta = None  # someone else's meta.json (nanoGPT writes a pickle, not this): ignore it
    size = bin_path.stat().st_size
    if size == 0:
        raise DataError(f"{bin_path}: token file is empty")
    if size % 2:
        raise DataError(f"{bin_path}: size {size} bytes is odd, not a uint16 token file (truncated or wrong format?)")
    n = size // 2
    if meta is not None and bin_path.name in ("train.bin", "val.bin"):
        expected = meta.get(f"{bin_path.stem}_tokens")
        if isinstance(expected, int) and expected != n:
            raise DataError(
                f"{bin_path}: holds {n:,} tokens but meta.json says {expected:,} (truncated or replaced?)"
            )
    if vocab_size is None:
        vocab_size = int(meta["vocab_size"]) if meta is not None and "vocab_size" in meta else N_VOCAB
    try:
        tokens = np.memmap(bin_path, dtype=DTYPE, mode="r", shape=(n,))
    except (OSError, ValueError) as e:
        raise DataError(f"{bin_path}: cannot map the token file ({e})") from None
    if check_ids and vocab_size < 65536:
        for i in range(0, n, _CHECK_CHUNK):
            chunk = tokens[i : i + _CHECK_CHUNK]
            if int(chunk.max()) >= vocab_size:
                j = int(np.argmax(chunk >= vocab_size))
                raise DataError(
                    f"{bin_path}: token id {int(chunk[j])} at position {i + j} exceeds the vocabulary ({vocab_size})"
                )
    return tokens


def val_windows(data: str | os.PathLike, vocab_size: int, seq_len: int, windows: int,
                tokenizer: Tokenizer | None = None) -> Tensor:
    """(W, T) consecutive validation windows from the start of the split (deterministic; token ids checked
    against the model's vocabulary, and the data's tokenizer against the model's ``tokenizer`` when given)."""
    check_data_tokenizer(data, tokenizer)

    tokens = load_tokens(data, "val", vocab_size=vocab_size)
    if len(tokens) < seq_len:
        raise DataError(f"{data}: the val split holds {len(tokens):,} tokens, fewer than --seq-len {seq_len}")
    w = max(1, min(windows, len(tokens) // seq_len))
    return torch.from_numpy(np.asarray(tokens[: w * seq_len], dtype=np.int64).reshape(w, seq_len))
