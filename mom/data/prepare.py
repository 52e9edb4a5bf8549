"""``prepare``: documents (the built-in corpus or users' files, :mod:`mom.data.corpus`) → a document-level
train/val split → token files in nanoGPT's layout (:mod:`mom.data.tokens`), written into place atomically.

Split: document level, by a keyed hash of ``(seed, document text)``: the ``max(1, round(n·val_fraction))``
documents with the smallest hashes go to ``val`` (identical documents land on the same side). An input with a
single document is cut in two at the line break nearest ``1 - val_fraction`` of its length instead.

Tokenizer (``tokenizer=``, ``mom prepare --tokenizer``): ``gpt2`` (the default; GPT-2's 50,257 tokens, required
for GPT-2 weights) or ``bpe:N``, a byte-level BPE of N tokens (257 ≤ N ≤ 65,536: ids are stored as uint16)
learnt by HF ``tokenizers`` from the **train split only** (the split is decided first, from the documents'
hashes, so no val text shapes the vocabulary), written as ``tokenizer.json`` beside the token files and named in
meta.json by its sha256. The same corpus, seed, fraction and N give the same ``tokenizer.json`` and the same ids.

meta.json also records what makes runs with different tokenizers comparable (:mod:`mom.data.yardstick`): the UTF-8
bytes each split's tokens stand for (``train_bytes``, ``val_bytes``; ``<|endoftext|>`` stands for 0) and the
unigram yardstick of the val split, the cross-entropy of every val token under the train split's token
frequencies with add-one smoothing over the vocabulary, in nats per token (``unigram_loss``) and bits per byte
(``unigram_bpb``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from mom.data.corpus import BUILTIN_SOURCES, directory_files, file_kind, jsonl_documents, txt_documents
from mom.data.tokenizer import (
    TOKENIZER_FILE,
    TOKENIZER_NAME,
    Tokenizer,
    gpt2_tokenizer,
    parse_tokenizer_spec,
    train_bpe,
)
from mom.data.tokens import _CHECK_CHUNK, DATASET_FILES, DTYPE, FORMAT_VERSION
from mom.data.yardstick import target_bytes, token_counts, unigram_yardstick
from mom.errors import DataError
from mom.fileio import fsync_dir

_BATCH_DOCS = 512  # documents per tokenizer batch
_BATCH_CHARS = 8 << 20  # ... or this many characters, whichever comes first


# ----------------------------------------------------------------------------------------------------------
# Built-in corpus files


# ----------------------------------------------------------------------------------------------------------
# User files


class _Source:
    """One entry of ``inputs``: a name for meta.json and a generator of documents."""

    def __init__(self, name: str, kind: str, docs: Callable[[], Iterable[str]], info: dict | None = None):
        self.name, self.kind, self.docs, self.info = name, kind, docs, dict(info or {})


def _resolve_inputs(inputs: Sequence[str | os.PathLike] | str | os.PathLike | None) -> list[_Source]:
    if inputs is None:
        inputs = ["builtin"]
    elif isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if len(inputs) == 0:
        raise DataError("no corpus given: pass 'builtin' or paths of .txt/.jsonl files or directories")
    sources: list[_Source] = []
    for item in inputs:
        if isinstance(item, str) and item == "builtin":
            for name, (fn, pf) in BUILTIN_SOURCES.items():
                pf.path()  # fail fast when a data package is missing
                sources.append(
                    _Source(name, "builtin", fn, {"package": pf.pip, "file": pf.relpath, "license": pf.license})
                )
            continue
        path = Path(item)
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
        if path.is_dir():
            files = directory_files(path)
            if not files:
                raise DataError(f"{path}: directory has no .txt or .jsonl files")

            def dir_docs(files=files, path=path) -> Iterator[str]:
                n = 0
                for f in files:
                    for doc in txt_documents(f) if file_kind(f) == "txt" else jsonl_documents(f):
                        n += 1
                        yield doc
                if n == 0:
                    raise DataError(f"{path}: directory has no text (all its .txt/.jsonl files are empty)")

            sources.append(_Source(str(item), "directory", dir_docs, {"files": len(files)}))
            continue
        if not path.is_file():
            raise DataError(f"{path}: not a regular file or directory")
        kind = file_kind(path)
        if kind is None:
            hint = " (token files are used as they are: pass them to training, not to prepare)" if (
                path.suffix.lower() == ".bin"
            ) else ""
            raise DataError(f"{path}: unsupported file type '{path.suffix}', expected .txt or .jsonl{hint}")

        def file_docs(path=path, kind=kind) -> Iterator[str]:
            n = 0
            for doc in txt_documents(path) if kind == "txt" else jsonl_documents(path):
                n += 1
                yield doc
            if n == 0:
                what = "file is empty (no text)" if kind == "txt" else "no line has a non-empty \"text\""
                raise DataError(f"{path}: {what}")

        sources.append(_Source(str(item), kind, file_docs))
    return sources


# ----------------------------------------------------------------------------------------------------------
# prepare


def _split_key(seed: int, text: str) -> int:
    h = hashlib.blake2b(f"{seed}\x00".encode(), digest_size=8)
    h.update(text.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest(), "big")


def _single_document_cut(text: str, val_fraction: float) -> int:
    """Where to cut a lone document: the line break nearest (1 - val_fraction) of it, else a space, else there."""
    target = min(max(1, round(len(text) * (1.0 - val_fraction))), len(text) - 1)
    for sep in ("\n", " ", None):
        if sep is None:
            cut = target
        else:
            before, after = text.rfind(sep, 0, target + 1), text.find(sep, target)
            candidates = [i + 1 for i in (before, after) if i >= 0]
            if not candidates:
                continue
            cut = min(candidates, key=lambda i: (abs(i - target), i))
        if text[:cut].strip() and text[cut:].strip():
            return cut
    raise DataError("the corpus holds a single document too short to split into train and val")


def _make_scratch_dir(parent: Path, name: str) -> Path:
    """A fresh hidden scratch directory (on the output's file system, so the final renames are atomic).

    Made with os.mkdir rather than tempfile.mkdtemp so that it gets the usual umask permissions, not 0700:
    it becomes the output directory itself when that does not exist yet.
    """
    for _ in range(100):
        tmp = parent / f".{name}.prepare-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(tmp)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a scratch directory in {parent}")  # pragma: no cover


def _existing_dataset_files(out: Path) -> list[str]:
    return [name for name in (*DATASET_FILES, TOKENIZER_FILE) if (out / name).exists()]


def _progress_bar(enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(desc="tokenizing", unit=" docs", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def prepare(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.01,
    seed: int = 1337,
    overwrite: bool = False,
    progress: bool = True,
    tokenizer: str = TOKENIZER_NAME,
) -> dict:
    """Tokenise a corpus into ``out_dir/{train.bin,val.bin,meta.json}`` (+ ``tokenizer.json`` for ``bpe:N``);
    returns the meta.json contents.

    ``inputs``: ``None`` or ``["builtin"]`` for the built-in corpus, else a list mixing ``"builtin"`` and paths
    of ``.txt`` files, ``.jsonl`` files (a string ``text`` field per line) and directories of such files.
    ``tokenizer``: ``"gpt2"`` or ``"bpe:N"`` (see the module docstring).
    Deterministic: the same inputs, seed, fraction and tokenizer give byte-identical files. Atomic: everything is
    written to a hidden scratch directory (inside ``out_dir`` when it exists, else beside it) and moved into place
    only when complete, so a failed or interrupted run leaves no partial files and any existing dataset
    untouched. An ``out_dir`` that already holds a dataset is refused unless ``overwrite`` is true; other
    files in ``out_dir`` are never touched.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not (
        math.isfinite(val_fraction) and 0.0 < val_fraction < 1.0
    ):
        raise DataError(f"val_fraction must be a number strictly between 0 and 1, got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an integer, got {seed!r}")
    val_fraction = float(val_fraction)
    bpe_size = parse_tokenizer_spec(tokenizer)
    sources = _resolve_inputs(inputs)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    if out.is_dir() and not overwrite:
        existing = _existing_dataset_files(out)
        if existing:
            raise DataError(
                f"{out}: already holds a dataset ({', '.join(existing)}); pass --force to replace it"
            )
    # Scratch space on the output's file system: inside out_dir when it exists, else beside it.
    parent = out if out.is_dir() else out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = _make_scratch_dir(parent, out.name)
    except OSError as e:
        raise DataError(f"{out}: cannot create the output directory ({e.strerror or e})") from None
    try:
        enc = gpt2_tokenizer() if bpe_size is None else _learn_bpe(sources, bpe_size, val_fraction, seed, progress)
        meta = _prepare_into(tmp, sources, enc, val_fraction=val_fraction, seed=seed, progress=progress)
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _val_mask(keys: Sequence[int], val_fraction: float) -> np.ndarray:
    """Which documents go to val: the ``max(1, round(n·val_fraction))`` (at most n - 1) smallest split keys."""
    n_docs = len(keys)
    n_val = min(n_docs - 1, max(1, round(n_docs * val_fraction)))
    order = sorted(range(n_docs), key=lambda i: (keys[i], i))
    is_val = np.zeros(n_docs, dtype=bool)
    is_val[order[:n_val]] = True
    return is_val


def _documents(sources: list[_Source]) -> Iterator[str]:
    for src in sources:
        yield from src.docs()


def _train_texts(sources: list[_Source], val_fraction: float, seed: int) -> tuple[Iterator[str], int]:
    """The train split's texts, decided exactly as :func:`_prepare_into` splits (a first pass over the corpus
    computes the split keys), and how many there are."""
    keys: list[int] = []
    first: str | None = None
    for doc in _documents(sources):
        keys.append(_split_key(seed, doc))
        first = doc if len(keys) == 1 else None
    if len(keys) == 1:
        return iter([first[:_single_document_cut(first, val_fraction)]]), 1
    is_val = _val_mask(keys, val_fraction)
    return (doc for doc, v in zip(_documents(sources), is_val.tolist()) if not v), int((~is_val).sum())


def _learn_bpe(sources: list[_Source], size: int, val_fraction: float, seed: int, progress: bool) -> Tokenizer:
    import time

    texts, n_docs = _train_texts(sources, val_fraction, seed)
    say = progress and sys.stderr is not None
    if say:
        print(f"learning bpe:{size} from the train split ({n_docs:,} documents)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    tok = train_bpe(texts, size, length=n_docs, progress=say and sys.stderr.isatty())
    if say:
        print(f"learnt bpe:{size} in {time.perf_counter() - t0:.1f}s (sha256 {tok.sha256[:12]}…)", file=sys.stderr,
              flush=True)
    return tok


def _prepare_into(tmp: Path, sources: list[_Source], enc: Tokenizer, *, val_fraction: float, seed: int,
                  progress: bool) -> dict:
    all_path = tmp / "all.tokens"
    starts: list[int] = []
    lengths: list[int] = []
    keys: list[int] = []
    first_text: list[str] = []  # kept only while there is a single document (see _single_document_cut)
    per_source: list[dict] = []
    enabled = bool(progress) and sys.stderr is not None and sys.stderr.isatty()
    bar = _progress_bar(enabled)
    position = 0
    try:
        with open(all_path, "wb") as fh:

            def flush(batch: list[str], counts: dict) -> None:
                nonlocal position
                for text, ids in zip(batch, enc.encode_ordinary_batch(batch)):
                    arr = np.empty(len(ids) + 1, dtype=DTYPE)
                    arr[:-1] = ids
                    arr[-1] = enc.eot_token
                    fh.write(arr.tobytes())
                    starts.append(position)
                    lengths.append(arr.size)
                    keys.append(_split_key(seed, text))
                    position += arr.size
                    counts["documents"] += 1
                    counts["tokens"] += int(arr.size)
                    if len(starts) == 1:
                        first_text.append(text)
                    elif first_text:
                        first_text.clear()
                if bar is not None:
                    bar.update(len(batch))
                    bar.set_postfix_str(f"{position:,} tokens", refresh=False)

            for src in sources:
                counts = {"name": src.name, "kind": src.kind, **src.info, "documents": 0, "tokens": 0}
                batch: list[str] = []
                chars = 0
                for doc in src.docs():
                    batch.append(doc)
                    chars += len(doc)
                    if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
                        flush(batch, counts)
                        batch, chars = [], 0
                if batch:
                    flush(batch, counts)
                per_source.append(counts)
            fh.flush()
    finally:
        if bar is not None:
            bar.close()

    n_docs = len(starts)
    if n_docs == 0:  # pragma: no cover - every source raises on empty input first
        raise DataError("the corpus holds no text")
    train_path, val_path = tmp / "train.bin", tmp / "val.bin"
    if n_docs == 1:
        text = first_text[0]
        cut = _single_document_cut(text, val_fraction)
        split = {"method": "single-document", "cut_at_character": cut}
        counts = {}
        for path, part in ((train_path, text[:cut]), (val_path, text[cut:])):
            ids = np.asarray(enc.encode_ordinary(part) + [enc.eot_token], dtype=DTYPE)
            _write_bytes(path, ids.tobytes())
            counts[path.stem] = (1, int(ids.size))
    else:
        is_val = _val_mask(keys, val_fraction)
        split = {"method": "document"}
        counts = _write_splits(all_path, np.asarray(starts), np.asarray(lengths), is_val, train_path, val_path)
    all_path.unlink()

    meta = {
        "format": "mom-tokens",
        "format_version": FORMAT_VERSION,
        "dtype": "uint16",
        **enc.describe(),
        **({"tokenizer_file": TOKENIZER_FILE} if enc.save(tmp) else {}),
        "split_seed": seed,
        "val_fraction": val_fraction,
        "split": split,
        "train_documents": counts["train"][0],
        "val_documents": counts["val"][0],
        "train_tokens": counts["train"][1],
        "val_tokens": counts["val"][1],
        "sources": per_source,
        **_measures(train_path, val_path, enc),
    }
    _write_bytes(tmp / "meta.json", (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return meta


def _measures(train_path: Path, val_path: Path, enc: Tokenizer) -> dict:
    """Bytes the splits stand for and the unigram yardstick of val (see the module docstring)."""
    lengths = enc.byte_lengths()
    counts = {}
    for name, path in (("train", train_path), ("val", val_path)):
        counts[name] = token_counts(np.memmap(path, dtype=DTYPE, mode="r"), enc.n_vocab)
    yard = unigram_yardstick(counts["train"], counts["val"], lengths, enc.n_vocab)
    return {"train_bytes": target_bytes(counts["train"], lengths), "val_bytes": yard.bytes,
            "unigram_loss": round(yard.loss, 6), "unigram_bpb": None if yard.bpb is None else round(yard.bpb, 6),
            "unigram_smoothing": "add-one over the vocabulary, train-split counts"}


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_splits(all_path: Path, starts, lengths, is_val, train_path: Path, val_path: Path) -> dict:
    """Copy each document's tokens from the scratch file to train.bin or val.bin, keeping corpus order."""
    total = int(starts[-1] + lengths[-1])
    src = np.memmap(all_path, dtype=DTYPE, mode="r", shape=(total,))
    # consecutive documents on the same side form one run
    change = np.flatnonzero(np.diff(is_val.astype(np.int8))) + 1
    run_first = np.concatenate(([0], change))
    run_last = np.concatenate((change, [len(is_val)])) - 1
    counts = {"train": [0, 0], "val": [0, 0]}
    with open(train_path, "wb") as ft, open(val_path, "wb") as fv:
        for a, b in zip(run_first.tolist(), run_last.tolist()):
            side = "val" if is_val[a] else "train"
            fh = fv if side == "val" else ft
            lo, hi = int(starts[a]), int(starts[b] + lengths[b])
            for i in range(lo, hi, _CHECK_CHUNK):
                fh.write(src[i : min(hi, i + _CHECK_CHUNK)].tobytes())
            counts[side][0] += b - a + 1
            counts[side][1] += hi - lo
        for fh in (ft, fv):
            fh.flush()
            os.fsync(fh.fileno())
    del src
    return {k: tuple(v) for k, v in counts.items()}


def _install(tmp: Path, out: Path) -> None:
    """Move the finished files from ``tmp`` into ``out`` (a new directory is renamed into place in one step)."""
    try:
        if not out.exists():
            os.rename(tmp, out)
            fsync_dir(out.parent if str(out.parent) else Path("."))
            return
        # Existing directory (empty, holding other files, or an old dataset being overwritten): replace our
        # files one by one, meta.json last (it names the tokenizer: a dataset caught half-replaced is refused by
        # load_tokenizer, never read with the wrong one); an old tokenizer.json that the new dataset does not
        # have goes. Other files in it are left alone.
        for name in (*(n for n in DATASET_FILES if n != "meta.json"), TOKENIZER_FILE, "meta.json"):
            if (tmp / name).exists():
                os.replace(tmp / name, out / name)
            elif name == TOKENIZER_FILE and (out / name).exists():
                os.unlink(out / name)
        fsync_dir(out)
    except OSError as e:
        raise DataError(f"{out}: cannot move the prepared files into place ({e.strerror or e})") from None


# ----------------------------------------------------------------------------------------------------------
# Loading


# ----------------------------------------------------------------------------------------------------------
# CLI
