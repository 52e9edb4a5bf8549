"""Perplexity (``mom eval ppl``).

Sliding windows of the model's context n_ctx, advanced by ``stride`` (default n_ctx/2, at most n_ctx - 1),
the method of HF's "perplexity of fixed-length models" guide, with exact counting: every token after the
first is scored once, by the first window that holds it and the token before it, so it sees between
``n_ctx - stride`` and ``n_ctx - 1`` tokens of left context (all of them near the start).
ppl = exp(total NLL / scored tokens). Routing is causal (``causal_routing=True``): a token's probability
never depends on later tokens, which matters only for expert-choice (MoD) models, whose training-time
selection looks at the whole sequence. Bits per byte: the summed NLL over the UTF-8 bytes the scored tokens stand
for (see :mod:`mom.data.yardstick`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mom.data.tokenizer import Tokenizer, check_data_tokenizer
from mom.data.tokens import load_tokens
from mom.data.yardstick import bits_per_byte
from mom.errors import DataError, MomError
from mom.eval.finetune import Log, forward_at, quiet, text_tokenizer


# ============================================================================================== perplexity
@dataclass
class PerplexityResult:
    tokens: int  # tokens read
    scored: int  # tokens scored (all but the first)
    nll: float  # mean negative log-likelihood, nats per scored token
    ppl: float
    n_ctx: int
    stride: int
    windows: int
    bytes: int | None = None  # UTF-8 bytes the scored tokens stand for (with byte_lengths)
    bpb: float | None = None  # bits per byte: Σ NLL / ln 2 / bytes


def check_stride(stride: int, n_ctx: int) -> None:
    if n_ctx < 2:
        raise MomError(f"perplexity needs n_ctx ≥ 2, the model has {n_ctx}")
    if not 1 <= stride < n_ctx:
        raise MomError(f"--stride must be in [1, n_ctx - 1 = {n_ctx - 1}], got {stride}")


def sliding_windows(n_tokens: int, n_ctx: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_target) of each window: tokens [begin, end) are the input; targets first_target ..
    end-1 are scored there (the tokens no earlier window reached). HF's loop, with token 0 never a target.

    ``stride`` is at most n_ctx - 1: a window's first token has no left context inside the window, so
    consecutive windows must share at least one token for every token to be scored (HF's loop with
    stride = n_ctx silently skips each window's first token)."""
    check_stride(stride, n_ctx)
    out = []
    prev_end = 1  # token 0 has no left context: it is never scored
    for begin in range(0, n_tokens, stride):
        end = min(begin + n_ctx, n_tokens)
        if end > prev_end:
            out.append((begin, end, prev_end))
        prev_end = max(prev_end, end)
        if end == n_tokens:
            break
    return out


@torch.no_grad()
def perplexity(model, tokens: np.ndarray | Sequence[int], *, stride: int | None = None, batch_size: int = 8,
               causal_routing: bool = True, log: Log = quiet,
               byte_lengths: np.ndarray | None = None) -> PerplexityResult:
    """Sliding-window perplexity of ``tokens`` (see the module docstring); with ``byte_lengths`` (the bytes each
    token id stands for, :meth:`mom.data.tokenizer.Tokenizer.byte_lengths`) also bits per byte."""
    n_ctx = model.config.n_ctx
    # ``is None``, not ``or``: a stride of 0 is a mistake to report, not a request for the default
    stride = max(1, n_ctx // 2) if stride is None else stride
    check_stride(stride, n_ctx)
    if batch_size < 1:
        raise MomError(f"--batch-size must be ≥ 1, got {batch_size}")
    model.eval()
    toks = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    if toks.numel() < 2:
        raise DataError(f"perplexity needs at least 2 tokens, got {toks.numel()}")
    if int(toks.max()) >= model.config.vocab_size:
        raise DataError(f"token id {int(toks.max())} is outside the model's vocabulary ({model.config.vocab_size})")
    device = next(model.parameters()).device
    windows = sliding_windows(toks.numel(), n_ctx, stride)
    by_len: dict[int, list[tuple[int, int, int]]] = {}
    for w in windows:
        by_len.setdefault(w[1] - w[0], []).append(w)
    total_nll, scored, done = 0.0, 0, 0
    for group in by_len.values():
        for i in range(0, len(group), batch_size):
            batch = group[i:i + batch_size]
            idx_BT = torch.stack([toks[b:e] for b, e, _ in batch]).to(device)
            # position j predicts token begin + j + 1; window targets are first_target .. end-1
            b_N = torch.cat([torch.full((e - f,), r) for r, (b, e, f) in enumerate(batch)]).to(device)
            t_N = torch.cat([torch.arange(f - 1 - b, e - 1 - b) for b, e, f in batch]).to(device)
            y_N = idx_BT[b_N, t_N + 1]
            _, logits_NV, _ = forward_at(model, idx_BT, b_N, t_N, causal_routing=causal_routing)
            total_nll += F.cross_entropy(logits_NV.float(), y_N, reduction="sum").item()
            scored += y_N.numel()
            done += len(batch)
            if done == len(windows) or (done // batch_size) % 50 == 0:
                log(f"  windows {done}/{len(windows)}: nll {total_nll / scored:.4f}")
    nll = total_nll / scored
    n_bytes = bpb = None
    if byte_lengths is not None:
        n_bytes = int(np.asarray(byte_lengths)[toks[1:].numpy()].sum())  # every token but the first is scored once
        bpb = bits_per_byte(total_nll, n_bytes)
    return PerplexityResult(int(toks.numel()), scored, nll, math.exp(nll), n_ctx, stride, len(windows), n_bytes, bpb)


def read_eval_tokens(data: str | os.PathLike, split: str, model) -> tuple[np.ndarray, str, Tokenizer]:
    """Tokens to score and the tokenizer that made them: a prepared dataset directory or ``.bin`` file
    (``load_tokens``; its tokenizer must be the model's when the dataset names one), or a UTF-8 text file (any
    other suffix), tokenised whole with the model's tokenizer."""
    p = Path(data)
    if not p.exists():
        raise DataError(f"{p}: no such dataset directory or text file")
    if p.is_dir() or p.suffix == ".bin":
        tok = check_data_tokenizer(p, getattr(model, "tokenizer", None))  # (set by mom.runs.load_model)
        return np.asarray(load_tokens(p, split, vocab_size=model.config.vocab_size)), f"{p} ({split})", tok
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text (byte offset {e.start}); pass a prepared dataset directory or a "
                        ".txt file") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    tok = text_tokenizer(model)
    ids = tok.encode_ordinary(text.replace("\r\n", "\n"))
    return np.asarray(ids, dtype=np.int64), str(p), tok
