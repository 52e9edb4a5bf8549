"""The operations under the grouped dispatcher (:mod:`mom.model.dispatch`): grouped GEMMs and per-group sums as custom
ops with their own autograd, atomic-free row gathers, ``combine_picks`` (un-sort and sum a token's K weighted
picks) and the counting sort that makes a plan.

The grouped GEMM is the custom op ``mom::grouped_mm``: ``torch._grouped_mm`` on CUDA in bf16 when the
16-byte alignment rules hold, otherwise a loop of ``mm`` over the groups (on CPU that loop runs as fast as
one dense matmul, while ``torch._grouped_mm`` is ~2× slower there, and its compile-time meta kernel only
accepts bf16). Wrapping it in a custom op keeps it one opaque node for the compiler. The SKIP rows sort last,
past the last group; the native kernel leaves them unwritten, so callers mask them (``real_A1``) where the mask
fuses into work they do anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from mom.model.dispatch import GroupedPlan

# ---------------------------------------------------------------------------------------------- grouped GEMM


def _use_native_grouped_mm(a: Tensor, b: Tensor) -> bool:
    return (
        a.is_cuda
        and a.dtype == torch.bfloat16
        and b.dtype == torch.bfloat16
        and hasattr(torch, "_grouped_mm")
        and a.stride(-1) == 1
        and (a.stride(-2) * 2) % 16 == 0
        and all((s * 2) % 16 == 0 for s in b.stride()[1:] if s != 1)
    )


def bias_outside_gemm(x: Tensor, w: Tensor) -> bool:
    """Whether :func:`mom.model.modules.routed_linear` uses :func:`grouped_mm` and adds bias and SKIP mask itself (the
    native CUDA kernel; a module-level function so tests can take that path on the CPU)."""
    return _use_native_grouped_mm(x, w)


def skip_rows_unspecified(x: Tensor) -> bool:
    """Whether the grouped ops fed from ``x`` may leave the SKIP rows of their outputs and input gradients
    unspecified (the native CUDA kernel, see :func:`bias_outside_gemm`), so that the gathers around them must mask
    those rows in their backward. Conservative: any CUDA tensor (whether the native kernel runs also depends on
    the weights and autocast). The same holds for the weight gradients of empty groups. On the CPU the ops write
    zeros there, and a mask would be a wasted pass over (A, D) per gather. A module-level function so tests can
    take the masked path on the CPU (where the ops then write NaN there, see ``RAW_TAIL_FILL``)."""
    return x.is_cuda


def _zero_tail(y: Tensor, offs: Tensor) -> Tensor:
    """Zero the rows past the last group (the SKIP assignments), without reading ``offs`` on the host."""
    rows = torch.arange(y.shape[0], device=y.device)
    return y.masked_fill((rows >= offs[-1].to(rows.dtype)).unsqueeze(-1), 0)


def _groups(offs: Tensor):
    """(group, start, end) of the non-empty groups; reads ``offs`` on the host (the loop fallback only)."""
    start = 0
    for g, end in enumerate(offs.tolist()):
        if end > start:
            yield g, start, end
        start = end


# What the fallback writes into the rows past the last group where the op leaves them unspecified (the tests set
# NaN, to prove that no caller reads them).
RAW_TAIL_FILL = 0.0


def _loop_linear(x: Tensor, w: Tensor, b: Tensor | None, offs: Tensor, transpose_w: bool = False,
                 tail: float = 0.0) -> Tensor:
    y = torch.empty(x.shape[0], w.shape[-2] if transpose_w else w.shape[-1], dtype=x.dtype, device=x.device)
    for g, start, end in _groups(offs):
        wg = w[g].t() if transpose_w else w[g]
        if b is None:
            torch.mm(x[start:end], wg, out=y[start:end])
        else:
            torch.addmm(b[g], x[start:end], wg, out=y[start:end])
    y[int(offs[-1]):] = tail  # SKIP rows
    return y


@torch.library.custom_op("mom::grouped_mm", mutates_args=())
def grouped_mm(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """``y[r] = x[r] @ w[g]`` for rows r of group g (rows offs[g-1]:offs[g]); rows past offs[-1] are unspecified.

    x: (A, D), w: (N, D, O), offs: (N,) int32 cumulative group ends. Returns (A, O). The backward leaves the
    input-gradient rows past offs[-1] unspecified too, and ignores those rows of the output gradient. Callers mask
    the tail themselves (see :func:`mom.model.modules.routed_linear`): outside this opaque op the compiler fuses the
    mask into the next elementwise op instead of spending a pass over (A, O) on it.
    """
    if _use_native_grouped_mm(x, w):
        return torch._grouped_mm(x, w, offs=offs)
    return _loop_linear(x, w, None, offs, tail=RAW_TAIL_FILL)


@grouped_mm.register_fake
def _(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], w.shape[-1])


@torch.library.custom_op("mom::grouped_mm_t", mutates_args=())
def grouped_mm_t(dy: Tensor, w: Tensor, offs: Tensor, zero_tail: bool) -> Tensor:
    """``dy[r] @ w[g].T``: the input gradient of a grouped linear, without materialising ``w.T``. Returns (A, D);
    rows past offs[-1] are 0 with ``zero_tail``, else unspecified."""
    if _use_native_grouped_mm(dy, w):
        dx = torch._grouped_mm(dy, w.transpose(1, 2), offs=offs)
        return _zero_tail(dx, offs) if zero_tail else dx
    return _loop_linear(dy, w, None, offs, transpose_w=True, tail=0.0 if zero_tail else RAW_TAIL_FILL)


@grouped_mm_t.register_fake
def _(dy: Tensor, w: Tensor, offs: Tensor, zero_tail: bool) -> Tensor:
    return dy.new_empty(dy.shape[0], w.shape[-2])


@torch.library.custom_op("mom::grouped_mm_wgrad", mutates_args=())
def grouped_mm_wgrad(x: Tensor, dy: Tensor, offs: Tensor, n: int) -> Tensor:
    """Per-group ``x_g.T @ dy_g``: the weight gradient of a grouped linear. Returns (n, D, O). The gradient of a
    group no row belongs to is unspecified where :func:`skip_rows_unspecified` says so (callers mask it, see
    :func:`_input_and_weight_grads`), else 0."""
    if _use_native_grouped_mm(x, dy):
        return torch._grouped_mm(x.t(), dy, offs=offs)  # (D, A) column-major × (A, O), groups along A
    # Uninitialised, then only the empty groups filled: a zero-fill of all N·D·O entries that the matmuls then
    # overwrite cost ~12 ms per call on the 2-core CPU at 8 × 768 × 3072.
    dw = x.new_empty(n, x.shape[1], dy.shape[1])
    empty = set(range(n))
    for g, start, end in _groups(offs):
        torch.mm(x[start:end].t(), dy[start:end], out=dw[g])
        empty.discard(g)
    for g in empty:
        dw[g].fill_(RAW_TAIL_FILL if skip_rows_unspecified(x) else 0.0)
    return dw


@grouped_mm_wgrad.register_fake
def _(x: Tensor, dy: Tensor, offs: Tensor, n: int) -> Tensor:
    return x.new_empty(n, x.shape[1], dy.shape[1])


def group_onehot(offs: Tensor, rows: int, dtype: torch.dtype) -> Tensor:
    """(N, rows) membership matrix of the sorted row groups ending at ``offs``; rows past ``offs[-1]`` are in none."""
    row_A = torch.arange(rows, device=offs.device, dtype=offs.dtype)
    start_N = torch.cat([offs.new_zeros(1), offs[:-1]])
    return ((row_A >= start_N.unsqueeze(1)) & (row_A < offs.unsqueeze(1))).to(dtype)


def group_sums_onehot(dy: Tensor, offs: Tensor) -> Tensor:
    """:func:`group_sums` without host reads: SKIP rows masked (a NaN there would spread through the GEMM), then one
    (N, A) one-hot GEMM. The CUDA branch; a plain function so tests can run it on the CPU."""
    rows = torch.arange(dy.shape[0], device=dy.device)
    dy = torch.where((rows < offs[-1].to(rows.dtype)).unsqueeze(-1), dy, 0)
    return group_onehot(offs, dy.shape[0], dy.dtype) @ dy


@torch.library.custom_op("mom::group_sums", mutates_args=())
def group_sums(dy: Tensor, offs: Tensor) -> Tensor:
    """Per-group row sums of ``dy`` (the bias gradient of a grouped linear); rows past offs[-1] are ignored,
    whatever they hold. Returns (N, O).

    On CUDA one (N, A) one-hot GEMM, no host reads: a segment sum by ``index_add_`` would have every row of a group
    hit the same output row with atomics (0.7 ms per call at 32K rows on an H100). On the CPU a sum per group,
    which reads only the group rows (no masking pass over the SKIP rows)."""
    if dy.is_cuda:
        return group_sums_onehot(dy, offs)
    out = dy.new_zeros(offs.shape[0], dy.shape[1])
    for g, start, end in _groups(offs):
        torch.sum(dy[start:end], 0, out=out[g])
    return out


@group_sums.register_fake
def _(dy: Tensor, offs: Tensor) -> Tensor:
    return dy.new_empty(offs.shape[0], dy.shape[1])


@torch.library.custom_op("mom::grouped_linear", mutates_args=())
def grouped_linear(x: Tensor, w: Tensor, b: Tensor, offs: Tensor) -> Tensor:
    """``y[r] = x[r] @ w[g] + b[g]`` for rows of group g; rows past offs[-1] (SKIP) are 0. b: (N, O)."""
    if _use_native_grouped_mm(x, w):
        rows = torch.arange(x.shape[0], device=x.device, dtype=offs.dtype)
        group = torch.searchsorted(offs, rows, right=True).clamp(max=w.shape[0] - 1)
        return _zero_tail(torch._grouped_mm(x, w, offs=offs) + b[group], offs)
    return _loop_linear(x, w, b, offs)


@grouped_linear.register_fake
def _(x: Tensor, w: Tensor, b: Tensor, offs: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], w.shape[-1])


def _setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], inputs[1], inputs[-1])


def _input_and_weight_grads(ctx, dy: Tensor, zero_tail: bool):
    """dx, dw of a grouped linear. None of the three ops reads the SKIP rows of ``dy``: the input gradient's are
    written as zeros (``zero_tail``) or left unspecified, and the weight gradient sums over group rows only."""
    x, w, offs = ctx.saved_tensors
    dy = dy.contiguous()
    dx = grouped_mm_t(dy, w, offs, zero_tail) if ctx.needs_input_grad[0] else None
    dw = grouped_mm_wgrad(x, dy, offs, w.shape[0]) if ctx.needs_input_grad[1] else None
    if dw is not None and skip_rows_unspecified(x):
        # A group no row picked has an empty reduction, and the native kernel need not write zeros there (on
        # Blackwell it does not: pytorch/pytorch#172439). Masked out here rather than inside the opaque op, the
        # compiler fuses the mask into the cast that accumulates the gradient: no pass of its own over (N, D, O).
        sizes = torch.diff(offs, prepend=offs.new_zeros(1))
        dw = torch.where((sizes > 0).view(-1, 1, 1), dw, 0)
    return dy, offs, dx, dw


def _grouped_mm_backward(ctx, dy: Tensor):
    _, _, dx, dw = _input_and_weight_grads(ctx, dy, zero_tail=False)
    return dx, dw, None


def _grouped_linear_backward(ctx, dy: Tensor):
    # grouped_linear promises zero SKIP rows both ways, and ignores whatever its caller sends back there.
    dy, offs, dx, dw = _input_and_weight_grads(ctx, dy, zero_tail=True)
    db = group_sums(dy, offs) if ctx.needs_input_grad[2] else None
    return dx, dw, db, None


torch.library.register_autograd("mom::grouped_mm", _grouped_mm_backward, setup_context=_setup)
torch.library.register_autograd("mom::grouped_linear", _grouped_linear_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------- row gathers
# The autograd Functions below save their context in ``forward(ctx, ...)``, not in a separate ``setup_context``:
# with one, every ``apply`` binds its arguments through ``inspect.signature`` (~75 µs), which was 18% of an eager
# tiny-mom decode step (docs/log.md).
class _GatherRows(torch.autograd.Function):
    """``x[idx]`` where every row of ``x`` is read exactly ``fan`` times, by the output rows ``inv.view(-1, fan)``.

    The backward is then ``fan`` gathers summed rather than ``index_add``'s scatter: no atomics and no zero-filled
    buffer (on an H100 the scatter-adds of a K2H2S step took a quarter of its time). ``keep``: (rows, 1) bool over
    the output rows; the gradient of the others is taken as 0 whatever it holds (the SKIP rows, whose gradient a
    grouped op may leave unspecified: pass it only then, see :func:`skip_rows_unspecified`)."""

    @staticmethod
    def forward(ctx, x: Tensor, idx: Tensor, inv: Tensor, fan: int, keep: Tensor | None) -> Tensor:
        ctx.save_for_backward(inv, keep)
        ctx.fan = fan
        return x.index_select(0, idx)

    @staticmethod
    def backward(ctx, g: Tensor):
        inv, keep = ctx.saved_tensors
        dx = None
        for k in range(ctx.fan):
            rows = inv[k::ctx.fan]  # the output row of pick k of every input row
            gk = g.index_select(0, rows)
            if keep is not None:
                gk = torch.where(keep.index_select(0, rows), gk, 0)
            dx = gk if dx is None else dx.add_(gk)
        return dx, None, None, None, None


def _needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd would record an op on ``tensors``; when not (decoding), the Functions below are skipped for
    their plain forward: ``apply`` costs ~30 µs of Python per call, a tenth of an eager tiny-mom decode step."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def gather_rows(x: Tensor, idx: Tensor, inv: Tensor, fan: int, keep: Tensor | None = None) -> Tensor:
    if not _needs_grad(x):
        return x.index_select(0, idx)
    return _GatherRows.apply(x, idx, inv, fan, keep)


def _module_rows(p: Tensor, mod: Tensor) -> Tensor:
    return p.index_select(0, mod.clamp(max=p.shape[0] - 1))  # SKIP (mod == N) reads row N-1: masked by callers


class _GatherModuleRows(torch.autograd.Function):
    """``p[mod]``: per-assignment rows of a per-module parameter (N, D); ``mod == N`` (SKIP) reads row N-1.

    The backward sums the gradient rows of each module as one (N, A) one-hot GEMM: ``index_add`` would make all A
    rows of a group add into one row with atomics (0.3 ms per call on an H100 at 32K rows). The one-hot has no
    entry for SKIP rows, but a NaN there would still spread through the GEMM, so with ``mask_skip`` (their gradient
    is unspecified, see :func:`skip_rows_unspecified`) they are zeroed first."""

    @staticmethod
    def forward(ctx, p: Tensor, mod: Tensor, mask_skip: bool) -> Tensor:
        ctx.save_for_backward(mod)
        ctx.n, ctx.mask_skip = p.shape[0], mask_skip
        return _module_rows(p, mod)

    @staticmethod
    def backward(ctx, g: Tensor):
        (mod,) = ctx.saved_tensors
        if ctx.mask_skip:
            g = torch.where((mod < ctx.n).unsqueeze(-1), g, 0)
        onehot_NA = (mod.unsqueeze(0) == torch.arange(ctx.n, device=g.device).unsqueeze(1)).to(g.dtype)
        return onehot_NA @ g, None, None


def gather_module_rows(p: Tensor, mod: Tensor, mask_skip: bool = True) -> Tensor:
    if not _needs_grad(p):
        return _module_rows(p, mod)
    return _GatherModuleRows.apply(p, mod, mask_skip)


class _CombinePicks(torch.autograd.Function):
    """``y_t = Σ_k w_tk · ys[inv[t·K + k]]``: un-sort the module outputs back to their tokens and sum each token's
    K weighted picks, without materialising the (T, K, O) products. The backward works in sorted order: row a
    (token t, pick k) gets ``w_tk · g_t``, and the pick's weight gets ``<g_t, ys_a>``. Against gather, multiply
    and sum as separate autograd ops, at T = 4096, K = 2, O = 2304 on the 2-core CPU: forward 63 → 41 ms,
    backward 70 → 56 ms (docs/log.md). The SKIP rows of ``ys`` must be 0 (the grouped ops' callers make them so),
    and SKIP picks have weight 0."""

    @staticmethod
    def forward(ctx, ys_AO: Tensor, w_TK: Tensor, inv_A: Tensor, token_A: Tensor, slot_A: Tensor) -> Tensor:
        ctx.save_for_backward(ys_AO, w_TK, inv_A, token_A, slot_A)
        return _combine_picks_forward(ys_AO, w_TK, inv_A)

    @staticmethod
    def backward(ctx, g_TO: Tensor):
        ys_AO, w_TK, inv_A, token_A, slot_A = ctx.saved_tensors
        g_AO = g_TO.index_select(0, token_A)  # each row's token gradient, in sorted order
        dw_TK = None
        if ctx.needs_input_grad[1]:
            dw_A = torch.linalg.vecdot(g_AO, ys_AO)
            dw_TK = dw_A.index_select(0, inv_A).view(w_TK.shape).to(w_TK.dtype)
        dys_AO = g_AO * w_TK.reshape(-1).index_select(0, slot_A).to(g_AO.dtype).unsqueeze(-1)
        return dys_AO, dw_TK, None, None, None


def _combine_picks_forward(ys_AO: Tensor, w_TK: Tensor, inv_A: Tensor) -> Tensor:
    K = w_TK.shape[1]
    wy_TK = w_TK.to(ys_AO.dtype)  # the weights in the outputs' dtype (bf16 under autocast)
    y_TO = ys_AO.index_select(0, inv_A[0::K]) * wy_TK[:, :1]
    for k in range(1, K):
        y_TO = torch.addcmul(y_TO, ys_AO.index_select(0, inv_A[k::K]), wy_TK[:, k:k + 1])
    return y_TO


def combine_picks(ys_AO: Tensor, w_TK: Tensor, plan: "GroupedPlan") -> Tensor:
    if not _needs_grad(ys_AO, w_TK):
        return _combine_picks_forward(ys_AO, w_TK, plan.inv_A)
    return _CombinePicks.apply(ys_AO, w_TK, plan.inv_A, plan.token_A, plan.slot_A)


def counting_sort(keys_A: Tensor, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """A stable sort of A integer keys in [0, m), for few distinct keys (modules + SKIP): returns ``order`` (the
    sorted position's source index, as ``argsort(stable=True)``), its inverse ``inv`` (each key's sorted position)
    and the (m,) key counts.

    Ranks come from a running count per key value, one (m, A) scan: a handful of fused kernels and no atomics, where
    a radix sort of the keys took 8 kernels per call on an H100 (64 per K2H2S step, docs/benchmarks.md) and the
    counts by ``scatter_add`` had every key hit one of m counters with atomics."""
    hit_NA = keys_A.unsqueeze(0) == torch.arange(m, device=keys_A.device).unsqueeze(1)
    seen_NA = hit_NA.to(torch.int32).cumsum(1, dtype=torch.int32)  # keys of each value up to and including a
    counts_N = seen_NA[:, -1] if keys_A.numel() else seen_NA.new_zeros(m)
    start_N = torch.cumsum(counts_N, 0, dtype=torch.int32) - counts_N  # where each value's block begins
    inv_A = (start_N.unsqueeze(1) + seen_NA - 1).gather(0, keys_A.unsqueeze(0)).squeeze(0).long()
    order_A = torch.empty_like(inv_A).scatter_(0, inv_A, torch.arange(keys_A.numel(), device=keys_A.device))
    return order_A, inv_A, counts_N.long()


def argsort_small(keys_A: Tensor, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`counting_sort`'s results from one stable sort and a ``bincount`` (fewer ops: cheaper for small A on
    the CPU, where the ops' overhead dominates)."""
    order_A = torch.sort(keys_A, stable=True).indices
    inv_A = torch.empty_like(order_A).scatter_(0, order_A, torch.arange(keys_A.numel(), device=keys_A.device))
    return order_A, inv_A, torch.bincount(keys_A, minlength=m)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype matmuls on ``x`` produce: autocast's where it is on, else ``x``'s."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype
