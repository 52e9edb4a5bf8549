"""The module pool: N_A attention modules and N_F FFN modules, stored stacked along a leading module axis.

A :class:`ModulePool` has exactly the parameter names of an HF GPT-2 block, with one extra leading dimension
that indexes the module::

    ln_1.weight (N_A, D)   attn.c_attn.weight (N_A, D, 3D)   attn.c_proj.weight (N_A, D, D)
    ln_2.weight (N_F, D)   mlp.c_fc.weight    (N_F, D, F)    mlp.c_proj.weight  (N_F, F, D)

so GPT-2 layer l maps onto module m by indexing (``pool.attn.c_attn.weight[m] = h[l].attn.c_attn.weight``;
HF's ``Conv1D`` stores weights as (in, out), as we do). A vanilla layer is a pool with one module of each kind.
Stacking is what lets the grouped dispatcher run all modules in one grouped GEMM.

Each half of the pool has the two forms the dispatchers need (see :mod:`mom.model.dispatch`): the single forms of
:class:`ModuleSlices` (module m on some tokens; ``pool.slices()``, one per forward pass) and the pool's
``*_grouped`` methods (all assignments at once, sorted by module).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mom.model.ops import (
    bias_outside_gemm,
    compute_dtype,
    gather_module_rows,
    grouped_linear,
    grouped_mm,
    skip_rows_unspecified,
)


class StackedLinear(nn.Module):
    """N independent linear maps ``x @ weight[m] + bias[m]`` (HF Conv1D layout: weight is (in, out))."""

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(n, d_out))

    def grouped(self, xs_AD: Tensor, mod_A: Tensor, offs_N: Tensor | None, real_A1: Tensor,
                ln: "StackedLayerNorm | None" = None) -> Tensor:
        """All assignments at once (see :func:`routed_linear`); ``ln``: the module's pre-norm, applied first."""
        if ln is not None:
            xs_AD = ln.gathered(xs_AD, mod_A)
        return routed_linear(xs_AD, self.weight, self.bias, mod_A, offs_N, real_A1)


def routed_linear(xs_AD: Tensor, w_NDO: Tensor, b_NO: Tensor, mod_A: Tensor, offs_N: Tensor | None,
                  real_A1: Tensor) -> Tensor:
    """``xs[a] @ w[mod[a]] + b[mod[a]]``, and 0 for SKIP rows (module N, ``real_A1`` False).

    Rows sorted by module with group ends ``offs_N``: one grouped GEMM. With the native CUDA kernel the bias rides
    in the GEMM as one more weight row (:func:`_bias_as_weight_row`) and the SKIP mask is applied out here, where
    the compiler fuses it into the next elementwise op or gather; the CPU op adds the bias per group inside the
    GEMM (``addmm``) and zeroes the SKIP rows itself, which is cheaper in eager mode. ``offs_N=None``: rows in any
    order, each multiplied by its own gathered weight matrix (cheaper for a handful of tokens, e.g. decoding)."""
    dtype = compute_dtype(xs_AD)
    xs_AD, w_NDO, b_NO = xs_AD.to(dtype), w_NDO.to(dtype), b_NO.to(dtype)
    if offs_N is None:
        mod_A = mod_A.clamp(max=w_NDO.shape[0] - 1)
        y = torch.bmm(xs_AD.unsqueeze(1), w_NDO.index_select(0, mod_A)).squeeze(1)
        return y + b_NO.index_select(0, mod_A)
    if bias_outside_gemm(xs_AD, w_NDO):
        xs_AE, w_NEO = _bias_as_weight_row(xs_AD, w_NDO, b_NO)
        return torch.where(real_A1, grouped_mm(xs_AE, w_NEO, offs_N), 0)  # SKIP rows: unspecified → 0
    return grouped_linear(xs_AD, w_NDO, b_NO, offs_N)


def _bias_as_weight_row(xs_AD: Tensor, w_NDO: Tensor, b_NO: Tensor) -> tuple[Tensor, Tensor]:
    """``[xs | 1 | 0…]`` and ``[w ; b ; 0…]``: the bias as one more input row of each module's weights, against a
    column of ones, so the grouped GEMM adds it and its weight gradient holds the bias gradient (the sum of each
    group's output-gradient rows) in that row. A per-module bias gradient would otherwise be one more pass over
    the (A, O) output gradient: a one-hot GEMM (such GEMMs took 1.2 ms of a K2H2S step on an H100, about two thirds
    of it bias gradients by bytes read; docs/log.md). The zero padding
    keeps the rows 16-byte aligned for the kernel; the compiler writes the extra columns in the kernel that makes
    ``xs`` and folds the weight concatenation into the cast to bf16 that happens anyway. The GEMMs grow by
    8 / D (1% at D = 768)."""
    A, D = xs_AD.shape
    pad = 8 - D % 8  # ≥ 1: the ones column, then zeros up to a multiple of 8
    xs_AE = torch.cat([xs_AD, xs_AD.new_ones(A, 1), xs_AD.new_zeros(A, pad - 1)], 1)
    w_NEO = torch.cat([w_NDO, b_NO.unsqueeze(1), w_NDO.new_zeros(w_NDO.shape[0], pad - 1, w_NDO.shape[2])], 1)
    return xs_AE, w_NEO


class StackedLayerNorm(nn.Module):
    """N LayerNorms over the last dimension."""

    def __init__(self, n: int, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, d))
        self.bias = nn.Parameter(torch.zeros(n, d))
        self.eps = eps

    def gathered(self, xs_AD: Tensor, mod_A: Tensor) -> Tensor:
        """Each row normalised with its own module's γ, β, gathered per row (:func:`gather_module_rows`, whose
        backward sums per module as a one-hot GEMM, not with atomics). Measured alternative, rejected: folding γ, β
        into the next linear's weights costs N·D·O per call, more than the per-row gather until a pool sees ~N·O
        tokens (docs/log.md)."""
        xn = F.layer_norm(xs_AD, xs_AD.shape[-1:], eps=self.eps)
        mask = skip_rows_unspecified(xs_AD)  # the SKIP rows' gradient comes from the grouped op's input gradient
        gamma_AD, beta_AD = (gather_module_rows(p, mod_A, mask) for p in (self.weight, self.bias))
        return torch.addcmul(beta_AD, xn, gamma_AD)


# GPT-2's names of the tensors of one block half. A pool stacks each along a leading module axis, so module m of a
# pool is GPT-2 layer l's half by indexing: pool.<name>[m] = h.<l>.<name>.
HALF_TENSORS = {
    "attn": ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
             "attn.c_proj.bias"),
    "ffn": ("ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"),
}
HALF_MATRICES = {"attn": ("attn.c_attn.weight", "attn.c_proj.weight"), "ffn": ("mlp.c_fc.weight", "mlp.c_proj.weight")}


class _Container(nn.Module):
    """A plain namespace module, so parameter names read ``attn.c_attn.weight`` like GPT-2's."""


class ModulePool(nn.Module):
    """N_A attention modules and N_F FFN modules (pre-norm halves of GPT-2 blocks), stacked."""

    def __init__(self, n_attn: int, n_ffn: int, d_model: int, d_ff: int, n_head: int, eps: float):
        super().__init__()
        self.n_attn, self.n_ffn, self.n_head = n_attn, n_ffn, n_head
        self.ln_1 = StackedLayerNorm(n_attn, d_model, eps)
        self.attn = _Container()
        self.attn.c_attn = StackedLinear(n_attn, d_model, 3 * d_model)
        self.attn.c_proj = StackedLinear(n_attn, d_model, d_model)
        self.ln_2 = StackedLayerNorm(n_ffn, d_model, eps)
        self.mlp = _Container()
        self.mlp.c_fc = StackedLinear(n_ffn, d_model, d_ff)
        self.mlp.c_proj = StackedLinear(n_ffn, d_ff, d_model)

    def slices(self) -> "ModuleSlices":
        """The single-module forms, for one forward pass (see :class:`ModuleSlices`)."""
        return ModuleSlices(self)

    # --- grouped forms. Attention half: qkv projection (before the shared attention) and output projection
    def qkv_grouped(self, xs: Tensor, mod: Tensor, offs: Tensor, real: Tensor) -> Tensor:
        return self.attn.c_attn.grouped(xs, mod, offs, real, ln=self.ln_1)

    def proj_grouped(self, os: Tensor, mod: Tensor, offs: Tensor, real: Tensor) -> Tensor:
        return self.attn.c_proj.grouped(os, mod, offs, real)

    # --- FFN half
    def ffn_grouped(self, xs: Tensor, mod: Tensor, offs: Tensor, real: Tensor) -> Tensor:
        h = F.gelu(self.mlp.c_fc.grouped(xs, mod, offs, real, ln=self.ln_2), approximate="tanh")
        return self.mlp.c_proj.grouped(h, mod, offs, real)

    # --- init (GPT-2 / nanoGPT): N(0, std); residual projections scaled by 1/sqrt(2·depth)
    @torch.no_grad()
    def reset_parameters(self, std: float, depth: int) -> None:
        for lin in (self.attn.c_attn, self.mlp.c_fc):
            nn.init.normal_(lin.weight, 0.0, std)
            nn.init.zeros_(lin.bias)
        for lin in (self.attn.c_proj, self.mlp.c_proj):
            nn.init.normal_(lin.weight, 0.0, std / math.sqrt(2 * depth))
            nn.init.zeros_(lin.bias)
        for ln in (self.ln_1, self.ln_2):
            nn.init.ones_(ln.weight)
            nn.init.zeros_(ln.bias)


_NAME_PATHS: dict[str, tuple[list[str], str]] = {}


def _parameter(module: nn.Module, name: str) -> Tensor:
    """``module.get_parameter(name)`` through the submodule dicts directly: the same lookup, always current, at
    ~1 µs instead of ~10 (its checks and ``Module.__getattr__`` were 5% of an eager tiny-mom decode step)."""
    path = _NAME_PATHS.get(name)
    if path is None:
        *mods, attr = name.split(".")
        path = _NAME_PATHS[name] = (mods, attr)
    for m in path[0]:
        module = module._modules[m]
    return module._parameters[path[1]]


class ModuleSlices:
    """A pool's modules one at a time: the single forms ``qkv``, ``proj``, ``ffn`` (module m on some tokens) that
    the loop dispatcher, the CPU grouped path and static routes use, for one forward pass.

    Each stacked parameter is unbound into its N slices once, on first use, and the slices are shared by every
    dispatch of the pass. Indexing ``weight[m]`` at each use would be simpler, but each use would then get, in
    backward, a zero-filled gradient the size of the whole stack (``SelectBackward``), added into the
    parameter's gradient: N full-size fills and adds per dispatch of a loop over N modules. On the 2-core CPU
    the loop reference took 1.43× the time that way at 8 modules (docs/log.md), a handicap a loop over separate
    modules (the paper's code) does not have. Make a fresh one per forward pass (the slices belong to its graph)."""

    def __init__(self, pool: ModulePool):
        self.pool = pool
        self._slices: dict[str, tuple[Tensor, ...]] = {}

    def _module(self, m: int, *names: str) -> list[Tensor]:
        out = []
        for name in names:
            parts = self._slices.get(name)
            if parts is None:  # first use in this pass
                p = _parameter(self.pool, name)
                # A one-module pool (a vanilla layer) takes a view: its gradient is the parameter's, where unbind's
                # backward would copy it into a stack of one.
                parts = self._slices[name] = (p.squeeze(0),) if p.shape[0] == 1 else p.unbind(0)
            out.append(parts[m])
        return out

    def _linear(self, x: Tensor, m: int, prefix: str) -> Tensor:
        w, b = self._module(m, f"{prefix}.weight", f"{prefix}.bias")
        return F.linear(x, w.t(), b)

    def _layer_norm(self, x: Tensor, m: int, prefix: str) -> Tensor:
        w, b = self._module(m, f"{prefix}.weight", f"{prefix}.bias")
        return F.layer_norm(x, x.shape[-1:], w, b, getattr(self.pool, prefix).eps)

    def qkv(self, x: Tensor, m: int) -> Tensor:
        return self._linear(self._layer_norm(x, m, "ln_1"), m, "attn.c_attn")

    def proj(self, o: Tensor, m: int) -> Tensor:
        return self._linear(o, m, "attn.c_proj")

    def ffn(self, x: Tensor, m: int) -> Tensor:
        h = F.gelu(self._linear(self._layer_norm(x, m, "ln_2"), m, "mlp.c_fc"), approximate="tanh")
        return self._linear(h, m, "mlp.c_proj")


# ---------------------------------------------------------------------------------------------- packed key mask
# A boolean mask takes SDPA off its causal path: on an H100 the masked attention of a K2H2S step took 1.8× the plain
# causal one (docs/benchmarks.md), likely because the kernel then computes all T × T scores rather than the causal
# triangle. Packing gets the key mask from plain causal attention.
