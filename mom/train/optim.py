"""The optimiser: AdamW with weight decay on matrices only (decided by what a parameter is), fused where PyTorch has
it, the routers' learning-rate multiplier, and the warm-up + cosine learning rate as a pure function of the step."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from mom.config.train import TrainConfig
from mom.model.modules import StackedLinear
from mom.model.routers import Router


# ================================================================================================ schedule
def lr_at(tcfg: TrainConfig, step: int, horizons: Sequence[Sequence[int]] = ()) -> float:
    """Learning rate of the update that takes the model from ``step`` to ``step + 1`` completed steps.

    Linear warm-up over ``warmup`` updates (lr·(step+1)/warmup), then a cosine from ``lr`` at the end of the
    warm-up to ``min_lr`` at ``max_steps`` (or a constant ``lr`` with ``schedule='constant'``). A pure function
    of the step: there is no scheduler object to save, and resuming reproduces it exactly.

    ``horizons``: the run's changes of ``max_steps`` on ``--resume`` (extending or shortening it), as
    ``[step, max_steps before]`` pairs in order; the checkpoint keeps them. From such a step on, the cosine is
    re-stretched: it starts from the learning rate the previous schedule had there and reaches ``min_lr`` at the new
    ``max_steps`` (so the rate is continuous; a finished run that is extended continues at ``min_lr``). A change
    during the warm-up keeps the warm-up and decays from ``lr`` over the new horizon. The warm-up length is the
    original run's (``warmup_steps``, or 5% of the first ``max_steps``)."""
    first_max = horizons[0][1] if horizons else tcfg.max_steps
    warm = round(0.05 * first_max) if tcfg.warmup_steps is None else tcfg.warmup_steps
    if step < warm:
        return tcfg.lr * (step + 1) / warm
    if tcfg.schedule == "constant":
        return tcfg.lr
    start, top, end = warm, tcfg.lr, first_max
    ends = [h[1] for h in horizons[1:]] + [tcfg.max_steps]
    for (changed_at, _), new_end in zip(horizons, ends):
        if changed_at > step:
            break
        if changed_at > start:
            top, start = _cosine(tcfg, start, top, end, changed_at), changed_at
        end = new_end
    return _cosine(tcfg, start, top, end, step)


def _cosine(tcfg: TrainConfig, start: int, top: float, end: int, step: int) -> float:
    """The cosine from ``top`` at ``start`` to ``min_lr`` at ``end``, at ``step``."""
    if end <= start:
        return top
    progress = min(1.0, (step - start) / (end - start))
    return tcfg.final_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (top - tcfg.final_lr)


# ================================================================================================ optimiser
def decay_split(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the parameters that get weight decay, and of those that do not.

    Decided by what a parameter *is*, not by its number of dimensions: our module pools stack weights along a
    leading module axis, so a pool's LayerNorm gains are 2-D (N, D) and its linear weights 3-D. Decayed: the
    ``weight`` of linear maps (``nn.Linear``, stacked linears, the GRU router's ``weight_ih``/``weight_hh``) and
    of embeddings (``wte``, which is also the tied LM head, and ``wpe``, as nanoGPT/GPT-2 do). Not decayed:
    LayerNorm gains and shifts, and every bias."""
    decay, no_decay = [], []
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            is_matrix = (isinstance(module, (nn.Linear, StackedLinear, nn.Embedding)) and pname == "weight") or (
                isinstance(module, nn.RNNCellBase) and pname.startswith("weight_"))
            (decay if is_matrix else no_decay).append(full)
    return decay, no_decay


def router_params(model: nn.Module) -> set[str]:
    """Names of the parameters of the learned routers (:class:`mom.model.routers.Router`: the GRU or MLP, its input
    norm, step embedding and step bias), which ``router_lr_mult`` scales."""
    out = set()
    for mname, module in model.named_modules():
        if isinstance(module, Router):
            out.update(f"{mname}.{pname}" if mname else pname for pname, _ in module.named_parameters())
    return out


def fused_adamw(device: torch.device | str) -> bool:
    """Whether to ask for PyTorch's fused AdamW: one kernel over all parameters instead of a chain of foreach ops.
    On the 2-core CPU box it updates 82M parameters in 51 ms against 234 ms (docs/log.md); CUDA has it too."""
    return torch.device(device).type in ("cpu", "cuda")


def adamw(model: nn.Module, lr: float, weight_decay: float, device: torch.device | str,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          router_lr_mult: float = 1.0) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW with the two decay groups of :func:`decay_split`, each split again into the routers' parameters and the
    rest when ``router_lr_mult`` ≠ 1 (every group carries its ``lr_mult``: its learning rate is the schedule's times
    that, see :func:`set_lr`); returns the optimiser and the parameter names in its order."""
    params = dict(model.named_parameters())
    decay, no_decay = decay_split(model)
    assert sorted(decay + no_decay) == sorted(params), "every parameter is in exactly one decay group"
    routers = router_params(model) if router_lr_mult != 1.0 else set()
    groups, names = [], []
    for members, wd in ((decay, weight_decay), (no_decay, 0.0)):
        parts = [(1.0, [n for n in members if n not in routers])]  # (the two plain groups always exist)
        if any(n in routers for n in members):
            parts.append((router_lr_mult, [n for n in members if n in routers]))
        for mult, part in parts:
            groups.append({"params": [params[n] for n in part], "weight_decay": wd, "lr_mult": mult, "lr": lr * mult})
            names += part
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused_adamw(device))
    return opt, names


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group the schedule's ``lr`` times its ``lr_mult``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def make_optimizer(model: nn.Module, tcfg: TrainConfig, device: torch.device) -> tuple[torch.optim.AdamW, list[str]]:
    """The training run's AdamW (the paper's betas and epsilon by default, see :class:`TrainConfig`)."""
    return adamw(model, tcfg.lr, tcfg.weight_decay, device, (tcfg.beta1, tcfg.beta2), tcfg.eps, tcfg.router_lr_mult)
