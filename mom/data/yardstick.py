"""Measures that compare across tokenizers: bits per byte, and the unigram yardstick (what a model that knows only
token frequencies scores).

**Bits per byte.** A loss in nats per token depends on how many bytes a token covers, so models with different
tokenizers cannot be compared by it. Bits per byte can: ``bpb = Σ NLL(target tokens) / ln 2 / bytes(target
tokens)``, where the bytes of a token are the UTF-8 bytes it stands for (:meth:`mom.data.tokenizer.Tokenizer.
byte_lengths`) and ``<|endoftext|>`` stands for 0 bytes (it is scored, its NLL counts, but it adds no text).

**The unigram yardstick.** The cross-entropy of target tokens under the train split's token frequencies with
add-one (Laplace) smoothing over the vocabulary: ``p(v) = (count_train(v) + 1) / (N_train + V)``, so a token the
train split never holds still has a finite loss. A model whose validation loss is not clearly below it has learnt
nothing beyond token frequencies (its samples are gibberish)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)


_CHUNK = 1 << 24  # tokens per np.bincount call: counting a memmap never holds more than this in int64


def token_counts(tokens: np.ndarray, vocab: int = 0) -> np.ndarray:
    """(max(vocab, largest id + 1),) int64: how often each id occurs in ``tokens`` (a memmap is read in chunks)."""
    counts = np.zeros(vocab, dtype=np.int64)
    for i in range(0, len(tokens), _CHUNK):
        c = np.bincount(np.asarray(tokens[i:i + _CHUNK]), minlength=vocab)
        if len(c) > len(counts):
            counts = np.concatenate([counts, np.zeros(len(c) - len(counts), dtype=np.int64)])
        counts[:len(c)] += c
    return counts


def window_target_counts(tokens: np.ndarray, starts: np.ndarray, seq_len: int, vocab: int = 0) -> np.ndarray:
    """How often each id is a target of the windows ``tokens[s : s + seq_len + 1]`` (inputs ``s … s+T-1``, targets
    ``s+1 … s+T``) for ``s`` in ``starts``."""
    counts = np.zeros(vocab, dtype=np.int64)
    offsets = np.arange(1, seq_len + 1, dtype=np.int64)
    for i in range(0, len(starts), 4096):  # 4,096 windows at a time
        c = token_counts(np.asarray(tokens)[np.asarray(starts[i:i + 4096])[:, None] + offsets].ravel(), len(counts))
        counts = np.pad(counts, (0, len(c) - len(counts))) + c
    return counts


def bits_per_byte(nll_nats: float, n_bytes: int) -> float | None:
    """Bits per byte of a summed NLL (nats) over targets standing for ``n_bytes`` bytes; None when they stand for
    none (a split of end-of-text tokens only)."""
    return nll_nats / LN2 / n_bytes if n_bytes > 0 else None


def target_bytes(target_counts: np.ndarray, byte_lengths: np.ndarray) -> int:
    """UTF-8 bytes a set of targets (given as counts per id) stands for."""
    n = min(len(target_counts), len(byte_lengths))
    if target_counts[n:].any():
        raise ValueError(f"a target id ≥ {len(byte_lengths)} has no known bytes")
    return int(target_counts[:n] @ byte_lengths[:n])


@dataclass(frozen=True)
class Yardstick:
    """The unigram yardstick of a set of targets (see the module docstring)."""

    loss: float  # nats per target token
    bpb: float | None  # bits per byte of the same targets
    tokens: int  # targets scored
    bytes: int  # UTF-8 bytes they stand for
    vocab: int  # V of the add-one smoothing

    def to_dict(self) -> dict:
        return {"unigram_loss": self.loss, "unigram_bpb": self.bpb}


def unigram_yardstick(train_counts: np.ndarray, target_counts: np.ndarray, byte_lengths: np.ndarray,
                      vocab: int) -> Yardstick:
    """Cross-entropy of the targets (``target_counts[v]`` = how often id v is a target) under the add-one smoothed
    train frequencies over ``vocab`` ids (at least every id either side holds)."""
    V = max(vocab, len(train_counts), len(target_counts))
    train = np.zeros(V, dtype=np.int64)
    train[:len(train_counts)] = train_counts
    targets = np.zeros(V, dtype=np.int64)
    targets[:len(target_counts)] = target_counts
    n_targets = int(targets.sum())
    if n_targets == 0:
        raise ValueError("no targets to score")
    log_p = np.log(train + 1.0) - math.log(int(train.sum()) + V)
    nll = float(-(targets * log_p).sum())
    n_bytes = target_bytes(targets, byte_lengths)
    return Yardstick(nll / n_targets, bits_per_byte(nll, n_bytes), n_targets, n_bytes, V)
