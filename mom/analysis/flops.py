"""Measured FLOPs: ``FlopCounterMode`` formulas for mom's custom ops (the rows they really compute), and the FLOPs
and module usage of a model measured on data, to set beside the analytic counts of :mod:`mom.model.flops`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mom.analysis.routes import usage_from_routes


# ================================================================================================ FlopCounterMode
def _rows_computed(x, offs) -> int:
    """Rows of a grouped GEMM that belong to a module (the rest are SKIP assignments, left at zero).

    FlopCounterMode runs eagerly, so ``offs`` holds real group ends and the exact count can be read from it.
    Under fake or meta tensors (tracing) it cannot: then all rows are counted, an upper bound."""
    from torch._subclasses.fake_tensor import is_fake

    if is_fake(offs) or offs.device.type == "meta" or offs.numel() == 0:
        return int(x.shape[0])
    return int(offs[-1])


def register_flop_formulas() -> None:
    """Teach ``torch.utils.flop_counter.FlopCounterMode`` the ops it cannot see into (idempotent).

    * The grouped-GEMM custom ops of :mod:`mom.model.ops` (``mom::grouped_mm``, and where defined
      ``mom::grouped_linear``, its input gradient ``mom::grouped_mm_t`` and weight gradient
      ``mom::grouped_mm_wgrad``): a custom op is opaque to the counter (its inner matmuls run with the mode
      disabled), so without a formula routed modules would cost nothing. Each is a product of an (A, D) by a
      (D, O) matrix per group; formula 2·rows·D·O with rows = offs[-1], the assignments that picked a real module
      (rows past it are SKIP assignments, left at zero) — the same count as a loop of matmuls over the groups.
    * ``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward: the CPU attention kernel, which
      torch counts on CUDA (flash/efficient/cudnn kernels) but not on CPU. Same formulas as torch's for those
      kernels: 2 batched matmuls over the full T×T scores forward (our convention), 5 backward (the scores are
      recomputed).
    """
    import torch
    from torch.utils import flop_counter as fc


    def add(namespace, name: str, formula, get_raw: bool = False) -> None:
        target = getattr(namespace, name, None)
        if target is not None and target not in fc.flop_registry:
            fc.register_flop_formula(target, get_raw=get_raw)(formula)

    # x: (A, D) or dy: (A, O); w: (N, D, O); the group ends `offs` are the last tensor argument.
    def x_w(x, w, *rest, out_val=None, **kwargs) -> int:  # grouped_mm(x, w, offs), grouped_linear(x, w, b, offs)
        return 2 * _rows_computed(x, rest[-1]) * w.shape[1] * w.shape[2]

    def dy_w(dy, w, offs, *args, out_val=None, **kwargs) -> int:  # grouped_mm_t(dy, w, offs)
        return 2 * _rows_computed(dy, offs) * w.shape[1] * w.shape[2]

    def x_dy(x, dy, offs, n, *args, out_val=None, **kwargs) -> int:  # grouped_mm_wgrad(x, dy, offs, n)
        return 2 * _rows_computed(x, offs) * x.shape[1] * dy.shape[1]

    def sdpa_cpu(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(q_shape, k_shape, v_shape)

    def sdpa_cpu_backward(grad_out_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out_shape, q_shape, k_shape, v_shape)

    add(torch.ops.mom, "grouped_mm", x_w, get_raw=True)
    add(torch.ops.mom, "grouped_linear", x_w, get_raw=True)
    add(torch.ops.mom, "grouped_mm_t", dy_w, get_raw=True)
    add(torch.ops.mom, "grouped_mm_wgrad", x_dy, get_raw=True)
    add(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", sdpa_cpu)
    add(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", sdpa_cpu_backward)


@dataclass
class MeasuredFlops:
    """FLOPs counted by ``FlopCounterMode`` on real forward (and backward) passes, with the routing they used."""
    forward: int  # total forward FLOPs over all tokens
    backward: int  # total backward FLOPs (0 unless measured with ``train=True``)
    tokens: int
    usage: dict[str, float]  # measured modules per step, per half, of the same passes (see usage_from_routes)
    by_op: dict[str, int]  # forward FLOPs per operator

    @property
    def forward_per_token(self) -> float:
        return self.forward / self.tokens

    @property
    def train_per_token(self) -> float:
        return (self.forward + self.backward) / self.tokens


def measure_flops(model, batches, *, train: bool = False) -> MeasuredFlops:
    """Run ``model`` on each (B, T) token batch of ``batches`` under ``FlopCounterMode`` and return the counted
    FLOPs together with the module usage of those very passes, so that ``count(cfg, T, usage)`` can be compared
    with them like for like. The model runs in the mode it is in (use eval mode to count inference: in training
    mode expert choice also updates its decode thresholds). With ``train=True`` each forward is followed by
    ``loss.backward()`` (gradients are left in the parameters; callers own the model)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    register_flop_formulas()
    forward = backward = tokens = 0
    by_op: dict[str, int] = {}
    routes = []
    for idx_BT in batches:
        with torch.set_grad_enabled(train), FlopCounterMode(display=False) as fwd_counter:
            out = model(idx_BT, idx_BT if train else None, return_routes=True)
        forward += fwd_counter.get_total_flops()
        for op, n in fwd_counter.get_flop_counts()["Global"].items():
            by_op[str(op)] = by_op.get(str(op), 0) + n
        if train:
            with FlopCounterMode(display=False) as bwd_counter:
                out.loss.backward()
            backward += bwd_counter.get_total_flops()
        routes += [r for r in out.routes]
        tokens += idx_BT.numel()
    if tokens == 0:
        raise ValueError("measure_flops needs at least one batch")
    return MeasuredFlops(forward=forward, backward=backward, tokens=tokens, usage=usage_from_routes(routes),
                         by_op=by_op)
