"""Training batches as a pure function of (seed, step, micro-step, rank), validation windows, the validation
loss, and what sets it on a scale that compares across tokenizers (bits per byte, the unigram yardstick)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mom.data.prepare import prepare
from mom.data.tokens import DEFAULT_DATA_DIR
from mom.data.yardstick import Yardstick, bits_per_byte, token_counts, unigram_yardstick, window_target_counts
from mom.errors import DataError
from mom.train.distributed import Dist, autocast


# ================================================================================================ data
def resolve_data(spec: str | None, dist: Dist, *, progress: bool = True) -> Path:
    """The dataset directory; without ``--data`` the built-in corpus, prepared into ``data/builtin`` once."""
    if spec is not None:
        path = Path(spec)
        if not path.exists():
            raise DataError(f"{path}: no such data directory (prepare one with: mom prepare --out {path})")
        if not path.is_dir():
            raise DataError(f"{path}: --data expects a directory holding train.bin and val.bin (nanoGPT layout)")
        return path
    path = DEFAULT_DATA_DIR
    if not (path / "train.bin").is_file():
        if dist.is_main:

            print(f"preparing the built-in corpus into {path} (once)", flush=True)
            prepare(["builtin"], path, progress=progress)
        dist.barrier()
    return path


class Batches:
    """Training micro-batches as a pure function of ``(seed, step, micro-step, rank)``; validation windows.

    Step s draws the offsets of its ``rows_per_step`` sequences (over all processes and accumulation steps)
    from ``np.random.default_rng([seed, s])``. Micro-step a of rank r takes rows ``(a·world + r)·B …`` of them,
    so one process accumulating W micro-batches sees exactly the rows W processes see in one micro-step each,
    and resuming needs nothing but the step number."""
    def __init__(self, train: np.ndarray, val: np.ndarray, seq_len: int, batch_size: int, accum: int, seed: int,
                 dist: Dist, device: torch.device):
        self.train, self.val, self.T, self.B, self.accum = train, val, seq_len, batch_size, accum
        self.seed, self.dist, self.device = seed, dist, device
        self.rows_per_step = batch_size * accum * dist.world
        for split, arr in (("train", train), ("val", val)):
            if len(arr) < seq_len + 1:
                raise DataError(f"the {split} split holds {len(arr):,} tokens, fewer than seq_len + 1 = {seq_len + 1}")
        self._step, self._offsets = -1, np.empty(0, dtype=np.int64)

    def offsets(self, step: int) -> np.ndarray:
        if step != self._step:
            rng = np.random.default_rng([self.seed, step])
            self._offsets = rng.integers(0, len(self.train) - self.T, size=self.rows_per_step, dtype=np.int64)
            self._step = step
        return self._offsets

    def micro_batch(self, step: int, micro: int) -> tuple[Tensor, Tensor]:
        first = (micro * self.dist.world + self.dist.rank) * self.B
        rows = self.offsets(step)[first:first + self.B]
        return self._gather(self.train, rows)

    def _gather(self, tokens: np.ndarray, starts: np.ndarray) -> tuple[Tensor, Tensor]:
        win_BT1 = np.stack([tokens[o:o + self.T + 1] for o in starts.tolist()]).astype(np.int64)
        win = torch.from_numpy(win_BT1)
        if self.device.type == "cuda":
            win = win.pin_memory().to(self.device, non_blocking=True)
        return win[:, :-1], win[:, 1:]

    def val_windows(self, max_tokens: int) -> np.ndarray:
        """Start offsets of consecutive validation windows (T inputs + 1 target each) from the split's start."""
        starts = np.arange(0, len(self.val) - self.T, self.T, dtype=np.int64)
        if max_tokens:
            starts = starts[:max(1, max_tokens // self.T)]
        return starts


@dataclass(frozen=True)
class ValScale:
    """The validation windows' targets (``tokens``, standing for ``bytes`` UTF-8 bytes) and their unigram yardstick:
    what turns a validation loss (mean nats per target) into bits per byte and sets it beside a model that knows
    only the train split's token frequencies (:mod:`mom.data.yardstick`)."""

    tokens: int
    bytes: int
    unigram: Yardstick

    def bpb(self, loss: float) -> float | None:
        return bits_per_byte(loss * self.tokens, self.bytes)

    def to_dict(self) -> dict:
        return {"unigram_loss": self.unigram.loss, "unigram_bpb": self.unigram.bpb, "val_targets": self.tokens,
                "val_target_bytes": self.bytes}


def val_scale(batches: Batches, max_tokens: int, byte_lengths: np.ndarray, vocab: int) -> ValScale:
    """:class:`ValScale` of exactly the windows :func:`evaluate` scores (train-split counts by ``np.bincount``)."""
    targets = window_target_counts(batches.val, batches.val_windows(max_tokens), batches.T, vocab)
    yard = unigram_yardstick(token_counts(batches.train, vocab), targets, byte_lengths, vocab)
    return ValScale(yard.tokens, yard.bytes, yard)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, max_tokens: int, amp: torch.dtype | None,
             lockstep: bool = False) -> float:
    """Mean LM cross-entropy over the validation windows (split over processes; aux losses excluded).

    ``lockstep`` (FSDP: every forward all-gathers, so all processes must run the same number): a process whose
    share ran out runs a zero-weight forward on window 0 while the others finish."""
    was_training = model.training
    model.eval()
    starts = batches.val_windows(max_tokens)
    mine = starts[batches.dist.rank::batches.dist.world]
    most = len(starts[0::batches.dist.world]) if lockstep else len(mine)  # rank 0 holds the most windows
    acc_dtype = torch.float32 if batches.device.type == "mps" else torch.float64  # MPS has no float64
    total = torch.zeros(2, dtype=acc_dtype, device=batches.device)  # (sum of window losses, windows)
    for i in range(0, most, batches.B):
        rows = mine[i:i + batches.B]
        weight = 1.0 if len(rows) else 0.0
        x_BT, y_BT = batches._gather(batches.val, rows if len(rows) else starts[:1])
        with autocast(batches.device, amp):
            loss = model(x_BT, y_BT).loss
        total[0] += loss.to(acc_dtype) * x_BT.shape[0] * weight
        total[1] += x_BT.shape[0] * weight
    batches.dist.sum_(total)
    if lockstep:  # FSDP2 keeps the root's parameters gathered after a forward with no backward: shard them again
        model.reshard()
    model.train(was_training)
    return (total[0] / total[1]).item()
