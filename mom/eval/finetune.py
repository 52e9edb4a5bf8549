"""What the fine-tuning evaluations share: the training loop (AdamW with decay on matrices only, linear warm-up
then linear decay, clipping), right-padded batches, the text tokenizer, seeds, and reading the final hidden state
at chosen positions.

The heads read the final hidden state with ``MoM.forward(rows=(b_N, t_N))`` (:func:`forward_at`): only the
(row, position) pairs that are scored go through ``ln_f`` and the LM head, which also shrinks the (B, T, V)
LM-head matmul to the positions needed — on CPU that matmul dominates a small model's forward.

Metrics are fractions in [0, 1] in the JSON output (ROUGE too); the text output prints them ×100, as GLUE and
XSUM tables do.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mom.data.tokenizer import Tokenizer, gpt2_tokenizer
from mom.errors import MomError
from mom.train.optim import adamw

Log = Callable[[str], None]


def quiet(_: str) -> None:
    pass


def forward_at(model, idx_BT: Tensor, b_N: Tensor, t_N: Tensor, **kw) -> tuple[Tensor, Tensor, Tensor]:
    """Run the model on ``idx_BT`` and return, for the N (row, position) pairs, the final hidden state
    ``hidden_ND`` (after ``ln_f``) and the LM logits ``logits_NV``, plus the aux loss of the whole forward."""
    out = model(idx_BT, rows=(b_N, t_N), **kw)
    return out.hidden[0], out.logits[0], out.aux_loss


def text_tokenizer(model) -> Tokenizer:
    """The tokenizer that reads text for ``model``: the one it was loaded with (``model.tokenizer``, set by
    :func:`mom.runs.load_model` from its directory), else GPT-2; refused when the model's vocabulary is smaller."""
    tok = getattr(model, "tokenizer", None) or gpt2_tokenizer()
    if model.config.vocab_size < tok.n_vocab:
        raise MomError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than its tokenizer's "
                       f"({tok.name}, {tok.n_vocab}): text cannot be tokenised for it")
    return tok


# ============================================================================================== fine-tuning
@dataclass
class TrainParams:
    """Fine-tuning hyper-parameters shared by classification and summarisation (the usual GPT-2/BERT recipe)."""
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 16
    weight_decay: float = 0.01
    warmup: float = 0.06  # fraction of the updates spent warming up linearly
    grad_clip: float = 1.0
    eval_batch_size: int = 64
    max_train: int | None = None  # first N training examples only (quick runs)
    max_eval: int | None = None  # first N evaluation examples of each split

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise MomError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        for name in ("max_train", "max_eval"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise MomError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        # written so that NaN fails every check (a NaN compares false with everything)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MomError(f"--lr must be a positive number, got {self.lr:g}")
        if not 0 <= self.warmup < 1:
            raise MomError(f"--warmup must be a fraction of the updates in [0, 1), got {self.warmup:g}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise MomError(f"--weight-decay must be a finite number ≥ 0, got {self.weight_decay:g}")
        if not (self.grad_clip > 0 and math.isfinite(self.grad_clip)):
            raise MomError(f"grad_clip must be a positive number, got {self.grad_clip:g}")


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` updates, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def train_loop(module: nn.Module, n_examples: int, batch_loss: Callable[[list[int]], Tensor], p: TrainParams,
                seed: int, log: Log, what: str) -> dict[str, float]:
    """Shuffled mini-batches for ``p.epochs`` epochs; returns the loss at the start and the end of training
    (mean of the first and of the last ~10% of updates) and the number of updates."""
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(n_examples / p.batch_size)
    total = steps_per_epoch * p.epochs
    warmup = round(p.warmup * total)
    opt, _ = adamw(module, p.lr, p.weight_decay, next(module.parameters()).device)  # torch's AdamW defaults
    module.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for epoch in range(p.epochs):
        order = torch.randperm(n_examples, generator=gen).tolist()
        for i in range(0, n_examples, p.batch_size):
            step = len(losses)
            for g in opt.param_groups:
                g["lr"] = p.lr * _lr_factor(step, total, warmup)
            loss = batch_loss(order[i:i + p.batch_size])
            if not torch.isfinite(loss):
                raise MomError(f"{what}: the training loss became {loss.item()} at update {step} (lower --lr?)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), p.grad_clip)
            opt.step()
            losses.append(loss.item())
        recent = losses[-steps_per_epoch:]
        log(f"{what}: epoch {epoch + 1}/{p.epochs} loss {sum(recent) / len(recent):.4f} "
            f"({len(losses)} updates, {time.perf_counter() - t0:.0f}s)")
    k = max(1, len(losses) // 10)
    return {"train_loss_first": float(np.mean(losses[:k])), "train_loss_last": float(np.mean(losses[-k:])),
            "updates": len(losses), "train_seconds": time.perf_counter() - t0}


def pad_right(rows: Sequence[Sequence[int]], device, pad: int) -> tuple[Tensor, Tensor]:
    """(B, T) right-padded ids (pads are ``pad``, the tokenizer's end-of-text id; causal attention keeps them away
    from real tokens) and lengths."""
    T = max(len(r) for r in rows)
    idx_BT = torch.full((len(rows), T), pad, dtype=torch.long)
    for b, r in enumerate(rows):
        idx_BT[b, :len(r)] = torch.as_tensor(r, dtype=torch.long)
    return idx_BT.to(device), torch.as_tensor([len(r) for r in rows], device=device)


def parse_seeds(spec: str | Sequence[int]) -> list[int]:
    if not isinstance(spec, str):
        return list(spec)
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise MomError(f"--seeds must be comma-separated integers (e.g. 0,1,2), got {spec!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise MomError(f"--seeds must list distinct integers, got {spec!r}")
    return seeds
