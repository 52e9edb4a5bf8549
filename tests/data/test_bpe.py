"""``mom prepare --tokenizer bpe:N``: a byte-level BPE learnt from the train split (HF tokenizers), stored as
tokenizer.json, deterministic, round-tripping; the one tokenizer interface; the bad --tokenizer inputs."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mom.cli.main import main
from mom.data.prepare import prepare
from mom.data.tokenizer import (
    MAX_VOCAB,
    CorpusBPE,
    GPT2Tokenizer,
    gpt2_tokenizer,
    load_tokenizer,
    parse_tokenizer_spec,
)
from mom.errors import DataError
from tests.conftest import marker, write_text_corpus

N = 600  # the test corpus has pairs for ~650 tokens


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_text_corpus(tmp_path_factory.mktemp("corpus") / "docs")


@pytest.fixture(scope="module")
def bpe_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "bpe"
    prepare([corpus], out, val_fraction=0.2, progress=False, tokenizer=f"bpe:{N}")
    return out


def _docs(path, tok):
    """A token file decoded back into its documents (each ends with the end-of-text id)."""
    ids = np.fromfile(path, dtype=np.uint16).tolist()
    assert ids[-1] == tok.eot_token
    docs, cur = [], []
    for i in ids:
        if i == tok.eot_token:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    return docs


def test_bpe_dataset_layout_and_meta(bpe_dir, corpus):
    meta = json.loads((bpe_dir / "meta.json").read_text())
    data = (bpe_dir / "tokenizer.json").read_bytes()
    assert meta["tokenizer"] == f"bpe:{N}" and meta["vocab_size"] == N and meta["tokenizer_file"] == "tokenizer.json"
    assert meta["tokenizer_sha256"] == hashlib.sha256(data).hexdigest()
    tok = load_tokenizer(bpe_dir)
    assert isinstance(tok, CorpusBPE) and tok.n_vocab == N and tok.sha256 == meta["tokenizer_sha256"]
    assert meta["eot_token"] == tok.eot_token == 0 and tok.decode([tok.eot_token]) == "<|endoftext|>"
    for split in ("train", "val"):
        ids = np.fromfile(bpe_dir / f"{split}.bin", dtype=np.uint16)
        assert len(ids) == meta[f"{split}_tokens"] and int(ids.max()) < N
        # the bytes meta.json records are exactly the UTF-8 bytes of the documents (end of text: 0 bytes)
        text = "".join(_docs(bpe_dir / f"{split}.bin", tok))
        assert meta[f"{split}_bytes"] == len(text.encode("utf-8")) == int(tok.byte_lengths()[ids].sum())


def test_bpe_round_trips_every_document(bpe_dir, corpus):
    tok = load_tokenizer(bpe_dir)
    docs = _docs(bpe_dir / "train.bin", tok) + _docs(bpe_dir / "val.bin", tok)
    originals = [p.read_text(encoding="utf-8") for p in sorted(corpus.iterdir())]
    assert sorted(docs) == sorted(originals)
    for text in ["Hello <|endoftext|> wörld 🚀\n\ttabs", "日本語", "", " leading and trailing "]:
        ids = tok.encode_ordinary(text)
        assert tok.eot_token not in ids  # "<|endoftext|>" written in text is text
        assert tok.decode(ids) == text
        assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_bpe_is_learnt_from_the_train_split_only(bpe_dir, corpus):
    tok = load_tokenizer(bpe_dir)
    val_text = "".join(_docs(bpe_dir / "val.bin", tok))
    in_val = [i for i in range(10) if marker(i) in val_text]
    assert len(in_val) == 2  # 20% of 10 documents
    for i in range(10):
        # a train document's marker (" " + 4 characters, 40 times there) became one token; no byte pair of a val
        # document's character (3 UTF-8 bytes, the middle one its own) was ever merged
        if i in in_val:
            assert len(tok.encode_ordinary(marker(i))) == 3, i
        else:
            assert len(tok.encode_ordinary(" " + marker(i) * 4)) == 1, i


def test_bpe_prepare_is_deterministic_across_processes_and_threads(bpe_dir, corpus, tmp_path):
    again = tmp_path / "again"
    prepare([corpus], again, val_fraction=0.2, progress=False, tokenizer=f"bpe:{N}")
    code = ("import sys; from mom.data.prepare import prepare; "
            f"prepare([sys.argv[1]], sys.argv[2], val_fraction=0.2, progress=False, tokenizer='bpe:{N}')")
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "PYTHONHASHSEED": "123"}
    r = subprocess.run([sys.executable, "-c", code, str(corpus), str(tmp_path / "one-thread")], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for other in (again, tmp_path / "one-thread"):
        for name in ("tokenizer.json", "train.bin", "val.bin", "meta.json"):
            assert (other / name).read_bytes() == (bpe_dir / name).read_bytes(), (other, name)


def test_gpt2_dataset_unchanged_and_overwriting_a_bpe_dataset_drops_its_tokenizer(bpe_dir, corpus, tmp_path):
    out = tmp_path / "d"
    prepare([corpus], out, val_fraction=0.2, progress=False, tokenizer=f"bpe:{N}")
    meta = prepare([corpus], out, val_fraction=0.2, progress=False, overwrite=True)
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257 and "tokenizer_file" not in meta
    assert not (out / "tokenizer.json").exists()
    assert isinstance(load_tokenizer(out), GPT2Tokenizer)
    enc = gpt2_tokenizer()
    assert meta["train_bytes"] == int(enc.byte_lengths()[np.fromfile(out / "train.bin", dtype=np.uint16)].sum())


def test_a_dataset_whose_tokenizer_does_not_match_meta_is_refused(bpe_dir, corpus, tmp_path):
    out = tmp_path / "d"
    prepare([corpus], out, val_fraction=0.2, progress=False, tokenizer="bpe:500")
    (out / "tokenizer.json").write_bytes((bpe_dir / "tokenizer.json").read_bytes())
    with pytest.raises(DataError, match="is not the one meta.json names"):
        load_tokenizer(out)
    (out / "tokenizer.json").unlink()
    with pytest.raises(DataError, match="meta.json names the tokenizer 'bpe:500' but tokenizer.json is missing"):
        load_tokenizer(out)


def test_tokenizer_spec():
    assert parse_tokenizer_spec("gpt2") is None
    assert parse_tokenizer_spec("bpe:257") == 257 and parse_tokenizer_spec(f"bpe:{MAX_VOCAB}") == 65536


@pytest.mark.parametrize("spec, message", [
    ("bpe:0", "tokenizer 'bpe:0': a byte-level BPE needs at least 257 tokens (256 bytes + <|endoftext|>)"),
    ("bpe:70000", "tokenizer 'bpe:70000': at most 65,536 tokens (ids are stored as uint16)"),
    ("bpe:abc", "tokenizer 'bpe:abc': N must be a whole number of tokens, e.g. bpe:4096"),
    ("sentencepiece", "unknown tokenizer 'sentencepiece': use 'gpt2'"),
    ("bpe:8000", "the train split is too small to learn 8,000 tokens: it has pairs seen twice or more for only"),
])
def test_bad_tokenizer_is_one_line_and_writes_nothing(spec, message, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prepare", "--corpus", str(corpus), "--out", str(out), "--tokenizer", spec]) == 2
    err = capsys.readouterr().err.splitlines()  # (bpe:N says first that it is learning)
    assert err[-1].startswith("mom: error: ") and message in err[-1], err
    assert sum(line.startswith("mom: error") for line in err) == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name != "out"]


def test_bad_tokenizer_leaves_an_existing_dataset_untouched(bpe_dir, corpus, tmp_path, capsys):
    out = tmp_path / "d"
    prepare([corpus], out, val_fraction=0.2, progress=False, tokenizer=f"bpe:{N}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["prepare", "--corpus", str(corpus), "--out", str(out), "--force", "--tokenizer", "bpe:9000"]) == 2
    assert "too small to learn 9,000 tokens" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_both_tokenizers_share_one_interface(bpe_dir):
    text = "Rivers of the north — année 1921, naïve 🚀\n"
    for tok in (gpt2_tokenizer(), load_tokenizer(bpe_dir)):
        ids = tok.encode_ordinary(text)
        assert tok.encode_ordinary_batch([text, "x"]) == [ids, tok.encode_ordinary("x")]
        assert tok.decode(ids) == text
        lengths = tok.byte_lengths()
        assert len(lengths) == tok.n_vocab and lengths[tok.eot_token] == 0
        assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
        assert len(tok.byte_lengths(tok.n_vocab + 3)) == tok.n_vocab + 3  # a padded model vocabulary
        assert tok.describe() == {"tokenizer": tok.name, "tokenizer_sha256": tok.sha256, "vocab_size": tok.n_vocab,
                                  "eot_token": tok.eot_token}
    assert gpt2_tokenizer().encode_ordinary("Hello world") == [15496, 995]


def test_the_byte_alphabet_is_hf_byte_levels():
    from tokenizers import pre_tokenizers

    import mom.data.tokenizer as tk

    table = tk._byte_decoder()
    assert sorted(table.values()) == list(range(256))
    assert set(table) == set(pre_tokenizers.ByteLevel.alphabet())


def test_a_tokenizer_json_that_is_not_a_byte_level_bpe_is_refused(tmp_path):
    from tokenizers import Tokenizer, models

    (tmp_path / "tokenizer.json").write_text(Tokenizer(models.WordLevel({"日本": 0, "<|endoftext|>": 1})).to_str())
    with pytest.raises(DataError, match="token '日本' is not byte-level"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text(Tokenizer(models.WordLevel({"hello": 0})).to_str())
    with pytest.raises(DataError, match="has no <|endoftext|> token"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="not a readable tokenizer"):
        load_tokenizer(tmp_path)
