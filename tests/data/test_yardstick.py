"""Bits per byte and the unigram yardstick, on examples worked by hand."""

import math

import numpy as np
import pytest

from mom.data.yardstick import bits_per_byte, token_counts, unigram_yardstick, window_target_counts


def test_unigram_yardstick_by_hand():
    # V = 4; train counts (3, 1, 0, 0), N = 4: add-one gives p = (4, 2, 1, 1) / 8
    train = token_counts(np.array([0, 0, 1, 0], dtype=np.uint16), 4)
    assert train.tolist() == [3, 1, 0, 0]
    # targets 0, 1, 2 (2 unseen in train: finite) → NLL = ln 2 + ln 4 + ln 8 = 6 ln 2; bytes 1 + 2 + 0 = 3
    targets = token_counts(np.array([0, 1, 2]), 4)
    y = unigram_yardstick(train, targets, np.array([1, 2, 0, 3]), vocab=4)
    assert y.loss == pytest.approx(2 * math.log(2)) and y.tokens == 3 and y.bytes == 3 and y.vocab == 4
    assert y.bpb == pytest.approx(2.0)  # 6 ln 2 nats / ln 2 / 3 bytes
    # a larger vocabulary spreads the smoothing wider: p(0) = 4 / 10
    assert unigram_yardstick(train, targets, np.array([1, 2, 0, 3, 1, 1]), vocab=6).loss == pytest.approx(
        -(math.log(4 / 10) + math.log(2 / 10) + math.log(1 / 10)) / 3)


def test_bits_per_byte_by_hand():
    assert bits_per_byte(8 * math.log(2), 4) == pytest.approx(2.0)
    assert bits_per_byte(1.0, 0) is None  # targets that stand for no text (end of text only)


def test_window_targets_are_the_tokens_after_each_window_start():
    tokens = np.arange(10, dtype=np.uint16)
    # windows of T = 3 at 0 and 5: targets 1, 2, 3 and 6, 7, 8
    counts = window_target_counts(tokens, np.array([0, 5]), 3, vocab=4)
    assert np.flatnonzero(counts).tolist() == [1, 2, 3, 6, 7, 8] and counts.sum() == 6


def test_counts_grow_past_the_vocabulary_and_chunk(monkeypatch):
    import mom.data.yardstick as ys

    monkeypatch.setattr(ys, "_CHUNK", 3)
    counts = token_counts(np.array([0, 5, 5, 1, 7, 0, 0], dtype=np.uint16), 2)
    assert counts.tolist() == [3, 1, 0, 0, 0, 2, 0, 1]
