"""``mom eval ppl`` reports bits per byte: exact on a model whose every prediction is uniform."""

import math

import numpy as np
import pytest
import torch

from mom.eval.perplexity import perplexity
from mom.model.model import MoM
from tests.conftest import tiny_config


def test_perplexity_bits_per_byte_by_hand():
    V = 97
    model = MoM(tiny_config(vocab_size=V, n_ctx=16)).eval()
    with torch.no_grad():
        model.wte.weight.zero_()  # tied head: every logit 0, every prediction uniform, NLL ln V per token
    tokens = np.array([5, 1, 2, 3, 0, 4, 7, 1, 2, 9, 8, 6, 5, 4, 3, 2, 1, 0, 3, 3, 7, 5], dtype=np.int64)
    byte_lengths = np.zeros(V, dtype=np.int64)
    byte_lengths[:10] = [0, 1, 2, 3, 1, 1, 4, 2, 1, 1]  # id 0 plays the end-of-text token: 0 bytes
    res = perplexity(model, tokens, stride=5, batch_size=2, byte_lengths=byte_lengths)
    n_bytes = int(byte_lengths[tokens[1:]].sum())  # every token but the first is scored, once
    assert res.scored == len(tokens) - 1 and res.bytes == n_bytes
    assert res.nll == pytest.approx(math.log(V), rel=1e-6)
    assert res.bpb == pytest.approx(res.scored * math.log(V) / math.log(2) / n_bytes, rel=1e-6)
    assert perplexity(model, tokens, stride=5).bpb is None  # no byte lengths given: no bits per byte
