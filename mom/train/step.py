"""One optimiser step: the learning rate of the step, its micro-batches (gradient accumulation, no gradient
reduction but on the last), the global gradient norm, and an update applied only when the loss and the norm are
finite — a poisoned update is never applied, and the parameters that went bad are named."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from mom.config.train import TrainConfig
from mom.train.batches import Batches
from mom.train.distributed import Runtime, autocast, full_tensor, no_grad_sync
from mom.train.monitor import Window, describe_fault, nonfinite_gradients
from mom.train.optim import lr_at, set_lr


@dataclass
class StepResult:
    lr: float
    applied: bool
    routes: list | None  # the first micro-batch's routes, when asked for
    fault: str | None = None  # what was non-finite, when the update was skipped


class Stepper:
    """Runs optimiser steps of ``model`` (``fwd``: the same model compiled and/or wrapped by DDP/FSDP)."""

    def __init__(self, model: nn.Module, fwd: nn.Module, optimizer: torch.optim.Optimizer, batches: Batches,
                 tcfg: TrainConfig, rt: Runtime, window: Window, horizons: list[list[int]] | None = None):
        self.model, self.fwd, self.optimizer, self.batches = model, fwd, optimizer, batches
        self.tcfg, self.rt, self.window = tcfg, rt, window
        self.horizons = horizons or []  # the run's changes of max_steps (see lr_at)
        self.max_norm = tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf")

    def run(self, step: int, want_routes: bool) -> StepResult:
        """Take the step that turns ``step`` completed steps into ``step + 1``."""
        lr = lr_at(self.tcfg, step, self.horizons)
        set_lr(self.optimizer, lr)
        routes = self._accumulate(step, want_routes)
        applied, fault = self._update()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(lr, applied, routes, fault)

    def _accumulate(self, step: int, want_routes: bool) -> list | None:
        rt, routes = self.rt, None
        for micro in range(rt.accum):
            x_BT, y_BT = self.batches.micro_batch(step, micro)
            sync = micro == rt.accum - 1 or not rt.dist.enabled
            with contextlib.nullcontext() if sync else no_grad_sync(self.fwd, rt.fsdp):
                with autocast(rt.device, rt.amp):
                    # A compiled forward is specialised on return_routes, so it always returns them (tensors the
                    # step computes anyway): one graph instead of one for logging steps and one for others.
                    res = self.fwd(x_BT, y_BT, return_routes=self.tcfg.compile or (want_routes and micro == 0))
                ((res.loss + res.aux_loss) / rt.accum).backward()
            self.window.add_micro(res, rt.accum)
            if want_routes and micro == 0:
                routes = res.routes
        return routes

    def _update(self) -> tuple[bool, str | None]:
        # The norm first, clipping after the check: clipping by a NaN norm would smear NaN over every gradient and
        # hide which parameters went bad. (clip_grad_norm_ is exactly these two calls.)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        norm_t = full_tensor(grad_norm)  # (FSDP: a DTensor; the check and the log want the number)
        finite_t = torch.isfinite(norm_t) & torch.isfinite(self.window.pending_loss())
        if self.rt.dist.enabled:  # every process must take the same decision (losses differ across processes)
            finite_t = finite_t.to(torch.int32)
            torch.distributed.all_reduce(finite_t, op=torch.distributed.ReduceOp.MIN)
        # One host sync per step (the training loop, not the routing path): a poisoned update is never applied.
        if bool(finite_t):
            torch.nn.utils.clip_grads_with_norm_(params, self.max_norm, grad_norm)
            self.optimizer.step()
            self.window.add_step(norm_t)
            return True, None
        fault = describe_fault(float(self.window.pending_loss()), float(norm_t), nonfinite_gradients(self.model))
        self.window.drop_step()
        return False, fault
