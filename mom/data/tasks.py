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

The offline proxies of both (``rt-polarity``, ``bible-para``, ``news-xsum``) are built in :mod:`mom.data.proxies`;
the specs and pinned sizes of every task are here.

The sizes these recipes produce are pinned in :data:`PROXY_SIZES` and checked by the tests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mom.data.corpus import jsonl_rows
from mom.errors import DataError

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
    ranked = sorted(rows, key=lambda r: sha_key("mom/xsum-split/" + r.document))
    n_test = max(1, round(len(rows) * XSUM_SINGLE_FILE_TEST_FRACTION))
    test_docs = {r.document for r in ranked[:n_test]}
    if len(rows) < 2:
        raise DataError(f"{p}: a single file needs at least 2 rows to split into train and test")
    return SummaryData([r for r in rows if r.document not in test_docs], [r for r in rows if r.document in test_docs],
                       str(p), skipped)


# ============================================================================================== helpers
def sha_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_WS = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """One line of text: every whitespace run (tabs, newlines) becomes one space (TSV-safe)."""
    return _WS.sub(" ", text).strip()


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
