"""Dispatch strategies: apply routed modules to the tokens that chose them.

A *route* for one half of one assembly step is a pair of tensors over the T flattened tokens:

    idx_TK  long  module index of each of the token's K picks; N (one past the last module) means SKIP
    w_TK    float the weight of each pick (0 for SKIP picks)

A dispatcher computes ``y_t = Σ_k w_tk · f_{idx_tk}(x_t)`` for a per-module function f given by the module
pool in two forms: ``single(x_tD, m)`` (module m on some tokens, plain PyTorch) and
``grouped(xs_AD, mod_A, offs_N, real_A1)`` (every assignment at once, rows sorted by module, group ends in
``offs``, SKIP rows marked).

* :class:`LoopDispatcher` — the reference: for each module, find its tokens with ``nonzero`` and run
  ``single``. Obviously correct; syncs with the host and cannot be compiled with ``fullgraph=True``.
* :class:`GroupedDispatcher` — the default: sort the T·K assignments by module once per route (a *plan*, reused
  by every dispatch of that route and by autograd), gather, run ``grouped`` (grouped GEMMs, :mod:`mom.model.ops`),
  un-sort with the inverse permutation and sum the K weighted picks. Static shapes, no host syncs, and no atomic
  scatter-adds (forward or backward): compiles with ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from mom.model.ops import argsort_small, combine_picks, compute_dtype, counting_sort, gather_rows, skip_rows_unspecified

# ---------------------------------------------------------------------------------------------- dispatchers
SingleFn = Callable[[Tensor, int], Tensor]  # (x_tD, module) -> y_tO


GroupedFn = Callable[[Tensor, Tensor, Tensor | None, Tensor], Tensor]  # (xs_AD, mod_A, offs_N, real_A1) -> ys_AO


@dataclass
class LoopPlan:
    tokens: list[Tensor]  # per module: token indices that picked it
    slots: list[Tensor]  # per module: which of the K picks it was


@dataclass
class GroupedPlan:
    token_A: Tensor  # token of each assignment, sorted by module
    slot_A: Tensor  # flat index t·K + k of each sorted assignment
    inv_A: Tensor  # the inverse permutation: sorted position of slot t·K + k
    mod_A: Tensor  # module of each sorted assignment (N = SKIP, sorted last)
    real_A1: Tensor  # (A, 1) bool: the assignment is a real module, not SKIP
    offs_N: Tensor | None  # int32 cumulative group ends over the N real modules; None: unsorted, gathered weights
    sizes: list[int] | None = None  # host copy of the N group sizes and the SKIP count: run the groups one by one


@dataclass
class HostPlan:
    """A handful of assignments without gradients on the CPU (decoding a token or a few): the picks read on the
    host and grouped by module there, so that a dispatch is just the picked modules' calls."""

    # Per picked module (SKIP left out): (module, flat slots t·K + k, and with several tokens the tokens and slots as
    # index tensors, made once for every dispatch of the route).
    picks: list[tuple[int, list[int], Tensor | None, Tensor | None]]


class LoopDispatcher:
    """Reference dispatcher: one ``nonzero`` + gather + module + ``index_add`` per module."""

    name = "loop"

    def plan(self, idx_TK: Tensor, n: int) -> LoopPlan:
        tokens, slots = [], []
        for m in range(n):
            t, k = (idx_TK == m).nonzero(as_tuple=True)
            tokens.append(t)
            slots.append(k)
        return LoopPlan(tokens, slots)

    def run(self, plan: LoopPlan, x_TD: Tensor, w_TK: Tensor, single: SingleFn, grouped: GroupedFn,
            out_dim: int) -> Tensor:
        y_TO = x_TD.new_zeros(x_TD.shape[0], out_dim)
        grad = torch.is_grad_enabled()
        for m, (t, k) in enumerate(zip(plan.tokens, plan.slots)):
            # A module no token picked runs on 0 rows, so that it gets a (zero) gradient like the others.
            if not (grad or t.numel()):
                continue
            y_TO = y_TO.index_add(0, t, single(x_TD[t], m) * w_TK[t, k].unsqueeze(-1).to(y_TO.dtype))
        return y_TO


def groups_one_by_one(x: Tensor) -> bool:
    """Whether the grouped dispatcher runs each module's rows through its single form (CPU, eager) rather than the
    static-shape grouped ops (CUDA, or under ``torch.compile``). A host read of the group sizes costs nothing on
    the CPU, and module by module each group's LayerNorm, matmuls and GELU run on a few hundred contiguous rows
    that stay in cache, with the module's own γ and β and no SKIP rows; the static path runs every elementwise op
    over all A rows (docs/log.md). A module-level function so tests can take the static path on the CPU."""
    return not x.is_cuda and not torch.compiler.is_compiling()


class GroupedDispatcher:
    """Fast dispatcher: sort assignments by module once, run the modules on their sorted rows, un-sort and
    weighted sum over the K picks. Only gathers (forward and backward), no atomic scatter-adds. On CUDA and under
    ``torch.compile``: grouped GEMMs on static shapes, no host syncs; on the CPU in eager mode: each module's
    single form on its slice of the sorted rows (see :func:`groups_one_by_one`)."""

    name = "grouped"
    # Below this many assignments (decoding a token or a few), sorting and grouped GEMMs cost more than
    # gathering each assignment's weight matrix and running one batched matmul (static path only).
    gather_below = 16

    def plan(self, idx_TK: Tensor, n: int) -> GroupedPlan | HostPlan:
        T, K = idx_TK.shape
        flat_A = idx_TK.reshape(-1)
        one_by_one = groups_one_by_one(idx_TK)
        if one_by_one and flat_A.numel() <= self.gather_below and not torch.is_grad_enabled():
            # Decoding on the CPU: a sort, gathers and an un-sort for two or a few picks cost more than the picked
            # modules themselves (~12 small ops per dispatch, a fifth of an eager tiny-mom decode step).
            by_module: dict[int, tuple[list[int], list[int]]] = {}
            for a, mod in enumerate(flat_A.tolist()):
                if mod < n:
                    tokens, slots = by_module.setdefault(mod, ([], []))
                    tokens.append(a // K)
                    slots.append(a)
            # In order of first slot: for one token, the order of its K picks, as the combine sums them.
            groups = sorted(by_module.items(), key=lambda g: g[1][1][0])
            if T == 1:
                return HostPlan([(m, s, None, None) for m, (_, s) in groups])
            dev = idx_TK.device
            return HostPlan([(m, s, torch.tensor(t, device=dev), torch.tensor(s, device=dev)) for m, (t, s) in groups])
        if flat_A.numel() <= self.gather_below and not one_by_one:
            slot_A = torch.arange(flat_A.numel(), device=flat_A.device)
            return GroupedPlan(token_A=slot_A // K, slot_A=slot_A, inv_A=slot_A, mod_A=flat_A,
                               real_A1=(flat_A < n).unsqueeze(-1), offs_N=None)
        # SKIP (= n) sorts last. On the CPU path with few assignments (decoding) one stable sort costs 9 µs where
        # the counting sort's ~15 small ops cost 26 µs; from a few thousand on, the counting sort is faster.
        sort = argsort_small if one_by_one and flat_A.numel() <= 2048 else counting_sort
        order_A, inv_A, counts = sort(flat_A, n + 1)
        mod_A = flat_A[order_A]
        offs_N = torch.cumsum(counts[:n], 0).to(torch.int32)
        return GroupedPlan(token_A=order_A // K, slot_A=order_A, inv_A=inv_A, mod_A=mod_A,
                           real_A1=(mod_A < n).unsqueeze(-1), offs_N=offs_N,
                           sizes=counts.tolist() if one_by_one else None)

    def run(self, plan: GroupedPlan | HostPlan, x_TD: Tensor, w_TK: Tensor, single: SingleFn, grouped: GroupedFn,
            out_dim: int) -> Tensor:
        if isinstance(plan, HostPlan):
            return self._run_on_host(plan, x_TD, w_TK, single, out_dim)
        if plan.sizes is not None:
            return self._run_one_by_one(plan, x_TD, w_TK, single, out_dim)
        keep = plan.real_A1 if skip_rows_unspecified(x_TD) else None
        xs_AD = gather_rows(x_TD, plan.token_A, plan.inv_A, w_TK.shape[1], keep)  # each token read K times
        ys_AO = grouped(xs_AD, plan.mod_A, plan.offs_N, plan.real_A1)
        return combine_picks(ys_AO, w_TK, plan)  # back to token order, K picks summed with their weights

    @staticmethod
    def _run_one_by_one(plan: GroupedPlan, x_TD: Tensor, w_TK: Tensor, single: SingleFn, out_dim: int) -> Tensor:
        xs_AD = gather_rows(x_TD, plan.token_A, plan.inv_A, w_TK.shape[1])
        # One split, not a slice per module: each slice's backward would zero-fill a gradient of all A rows.
        parts = xs_AD.split(plan.sizes)
        # With gradients, empty groups run too (on 0 rows): every module then gets a gradient, zero if unused, as
        # on the static path, so the optimiser treats modules alike on every device, even when a step's picks were
        # all SKIP. Without (decoding), they are left out: a decode step picks K of N modules, and each empty call
        # still costs a LayerNorm's and the matmuls' per-operator overhead (282 → 147 matmul calls per tiny-mom
        # token, docs/log.md).
        grad = torch.is_grad_enabled()
        ys = [single(part, m) for m, part in enumerate(parts[:-1]) if grad or part.shape[0]]
        dtype = ys[0].dtype if ys else compute_dtype(x_TD)
        ys.append(xs_AD.new_zeros(plan.sizes[-1], out_dim, dtype=dtype))  # the SKIP rows
        return combine_picks(torch.cat(ys), w_TK, plan)

    @staticmethod
    def _run_on_host(plan: HostPlan, x_TD: Tensor, w_TK: Tensor, single: SingleFn, out_dim: int) -> Tensor:
        T = x_TD.shape[0]
        w_A = w_TK.reshape(-1)
        y_TO = None
        for m, slots, t_R, s_R in plan.picks:
            if t_R is None:  # one token (batch-1 decoding): no row gathers
                y = single(x_TD, m)
                for slot in slots:  # one slot per module from the routers; a hand-made route may repeat a module
                    w = w_A[slot].to(y.dtype)
                    y_TO = y * w if y_TO is None else torch.addcmul(y_TO, y, w)  # as the combine sums the K picks
                continue
            y = single(x_TD.index_select(0, t_R), m)
            y = y * w_A.index_select(0, s_R).to(y.dtype).unsqueeze(-1)
            y_TO = (y.new_zeros(T, out_dim) if y_TO is None else y_TO).index_add_(0, t_R, y)
        if y_TO is None:  # every pick was SKIP
            y_TO = x_TD.new_zeros(T, out_dim, dtype=compute_dtype(x_TD))
        return y_TO


DISPATCHERS = {"loop": LoopDispatcher, "grouped": GroupedDispatcher}


def make_dispatcher(name: str):
    return DISPATCHERS[name]()
