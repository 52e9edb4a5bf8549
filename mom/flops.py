"""Analytic parameter and FLOP counts (nanoGPT / PaLM convention).

Conventions, stated once:

* A matmul with a (m × n) weight costs 2·m·n FLOPs per token forward (multiply + add); the backward costs twice
  the forward, so training = 3 × forward = 6·N_active per token (Kaplan et al.; PaLM appendix B).
* Attention scores and the weighted sum of values cost 2·2·D·T per token for each attention core, with T the
  sequence length counted in full (not halved for causality), as nanoGPT's ``estimate_mfu`` and PaLM do.
* LayerNorms, biases, GELU, softmax and embedding lookups are not counted (they are < 1% at GPT-2 scale).
* *Active* parameters are those a token's forward pass touches. For token choice we count K modules per router
  per step, i.e. the upper bound where no pick is SKIP (pass measured ``modules_per_step`` for the real figure);
  for expert choice each of the step's candidate modules takes a ``capacity`` fraction of the tokens.
* An assembled step runs one attention core, whatever K is: the picked modules' q, k, v are combined first.
* The tied LM head counts as a V × D matmul; ``wpe`` and the input embedding lookup are parameters but not FLOPs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from mom.config import MoMConfig


@dataclass
class Counts:
    params: int  # all parameters (tied head counted once)
    active_params: float  # parameters touched per token (embedding rows: wte + wpe rows, head matmul)
    matmul_params_active: float  # weights of the matmuls a token runs through (routers and LM head included)
    attention_cores: int  # attention score/value computations per token
    depth: int
    forward_flops_per_token: float
    train_flops_per_token: float
    seq_len: int

    def as_dict(self) -> dict:
        return asdict(self)


def attn_module_params(cfg: MoMConfig) -> int:
    d = cfg.d_model
    return 2 * d + (3 * d * d + 3 * d) + (d * d + d)


def ffn_module_params(cfg: MoMConfig) -> int:
    d, f = cfg.d_model, cfg.d_ff
    return 2 * d + (d * f + f) + (f * d + d)


def router_params(cfg: MoMConfig, half: str) -> int:
    if cfg.is_static(half):
        return 0
    d, r, n1 = cfg.d_model, cfg.router_hidden, getattr(cfg, f"n_{half}") + 1
    out = r * n1 + n1
    if cfg.router == "gru":
        return 3 * r * (d + r) + 6 * r + out
    return d * r + r + out


def router_matmul_params(cfg: MoMConfig, half: str) -> int:
    if cfg.is_static(half):
        return 0
    d, r, n1 = cfg.d_model, cfg.router_hidden, getattr(cfg, f"n_{half}") + 1
    return (3 * r * (d + r) if cfg.router == "gru" else d * r) + r * n1


def modules_per_step(cfg: MoMConfig, half: str) -> float:
    """Modules a token runs through per step and half (upper bound: no SKIP picks)."""
    if cfg.is_static(half):
        return 1.0
    if cfg.selection == "expert":
        return cfg.n_candidates(half) * cfg.capacity
    return float(cfg.k(half))


def count(cfg: MoMConfig, seq_len: int | None = None, usage: dict[str, float] | None = None) -> Counts:
    """Counts for ``cfg``. ``usage`` may give measured mean modules per step: {"attn": a, "ffn": f}."""
    d, V, T = cfg.d_model, cfg.vocab_size, seq_len or cfg.n_ctx
    a_mod, f_mod = attn_module_params(cfg), ffn_module_params(cfg)
    a_mm, f_mm = 4 * d * d, 2 * d * cfg.d_ff  # matmul weights of one module

    layer = a_mod + f_mod
    params = V * d + cfg.n_ctx * d + 2 * d + cfg.n_vanilla_layers * layer
    params += cfg.chunks * (cfg.n_attn * a_mod + cfg.n_ffn * f_mod + router_params(cfg, "attn") + router_params(cfg, "ffn"))

    use = {h: (usage or {}).get(h, modules_per_step(cfg, h)) for h in ("attn", "ffn")}
    per_chunk_active = cfg.steps * (use["attn"] * a_mod + use["ffn"] * f_mod
                                    + router_params(cfg, "attn") + router_params(cfg, "ffn"))
    per_chunk_matmul = cfg.steps * (use["attn"] * a_mm + use["ffn"] * f_mm
                                    + router_matmul_params(cfg, "attn") + router_matmul_params(cfg, "ffn"))
    active = V * d + cfg.n_ctx * d + 2 * d + cfg.n_vanilla_layers * layer + cfg.chunks * per_chunk_active
    matmul = V * d + cfg.n_vanilla_layers * (a_mm + f_mm) + cfg.chunks * per_chunk_matmul
    cores = cfg.n_vanilla_layers + cfg.chunks * cfg.steps
    fwd = 2 * matmul + 4 * d * T * cores
    return Counts(params=params, active_params=active, matmul_params_active=matmul, attention_cores=cores,
                  depth=cfg.depth, forward_flops_per_token=fwd, train_flops_per_token=3 * fwd, seq_len=T)


# Dense bf16 tensor-core peak FLOP/s by device name (no sparsity). The SXM figures: a PCIe H100 peaks at 756.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
PEAK_FLOPS_SOURCE = ("NVIDIA data sheets: H100 SXM 989 TFLOP/s dense BF16 (1979 with sparsity), H200 the same, "
                     "A100 312")


def peak_flops(device) -> float | None:
    """The bf16 peak of a CUDA device named in :data:`PEAK_FLOPS`; None elsewhere (CPUs have no such table)."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


# ================================================================================================ vanilla counterpart
def vanilla_counterpart(cfg: MoMConfig) -> MoMConfig:
    """The vanilla GPT-2 a MoM config is compared with: same width, vocabulary and context, and as many layers as
    the MoM decomposes (``cfg.gpt2_layers``), i.e. equal parameters up to the routers — the paper's comparison
    (MoM_P and MoM_E against the GPT-2 of the same size). A vanilla config is its own counterpart."""
    if cfg.is_vanilla:
        return cfg
    return MoMConfig(name=f"gpt2-{cfg.gpt2_layers}L", vocab_size=cfg.vocab_size, n_ctx=cfg.n_ctx,
                     d_model=cfg.d_model, n_head=cfg.n_head, d_ff=cfg.d_ff, layer_norm_eps=cfg.layer_norm_eps,
                     bottom=cfg.gpt2_layers, chunks=0, top=0, init_std=cfg.init_std, dispatch=cfg.dispatch)


# ================================================================================================ measured usage
def usage_from_routes(routes) -> dict[str, float]:
    """Mean real (non-SKIP) modules a token runs per assembly step, per half, over ``routes``.

    ``routes`` is an iterable of :class:`mom.model.RouteRecord` (of one forward or of many). Every (chunk, step)
    sees the same tokens in a forward, so the plain mean over records and tokens is exactly the per-step figure
    :func:`count` multiplies by ``chunks · steps``. Halves with no record (no assembled block) are left out, so
    :func:`count` falls back to its own value for them."""
    picks = {"attn": 0.0, "ffn": 0.0}
    slots = {"attn": 0, "ffn": 0}
    for r in routes:
        picks[r.half] += float((r.idx_BTK < r.n_modules).sum())
        slots[r.half] += r.idx_BTK.shape[0] * r.idx_BTK.shape[1]
    return {h: picks[h] / slots[h] for h in picks if slots[h]}


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

    * The grouped-GEMM custom ops of :mod:`mom.dispatch` (``mom::grouped_mm``, and where defined
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

    import mom.dispatch  # noqa: F401  (defines the custom ops)

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


# ================================================================================================ CLI
ROWS = (("params", "parameters"), ("active_params", "active parameters / token"),
        ("forward_flops_per_token", "forward FLOPs / token"), ("train_flops_per_token", "training FLOPs / token"),
        ("depth", "depth (layers)"), ("attention_cores", "attention cores"))


def _si(v: float) -> str:
    """A count with an SI prefix, 4 significant digits (12.35M, 1.105G)."""
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.4g}{unit}"
    return f"{v:g}"


def add_flops_arguments(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a preset or JSON config: analytic counts (token choice: no SKIP assumed)")
    src.add_argument("--ckpt", metavar="DIR", help="a mom model directory (or a training run): counts with the "
                                                   "module usage and SKIP rate measured on data")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length T of the attention term and of the "
                                                             "measuring windows (default: n_ctx)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="with --ckpt: dataset whose val split is measured (default: data/builtin if prepared)")
    p.add_argument("--windows", type=int, default=8, help="with --ckpt: validation windows measured (default 8)")
    p.add_argument("--batch-size", type=int, default=4, help="with --ckpt: windows per forward (default 4)")
    p.add_argument("--device", default="auto", help="with --ckpt: cpu, cuda (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def cli_flops(args, overrides) -> int:
    from mom.analysis import check_positive, iter_batches, load_model, pick_device, resolve_data_dir, val_windows
    from mom.config import resolve_config
    from mom.errors import MomError

    for name in ("seq_len", "windows", "batch_size"):
        check_positive("--" + name.replace("_", "-"), getattr(args, name))
    if args.config is not None:
        if args.data:
            raise MomError("--data needs --ckpt (a config has random weights: its routing means nothing)")
        model, cfg = None, resolve_config(args.config)
        if overrides.get("model"):
            cfg = cfg.replace(**overrides["model"])
    else:
        device = pick_device(args.device)
        model = load_model(args.ckpt, device, **overrides.get("model", {}))
        cfg = model.config
    T = args.seq_len or cfg.n_ctx
    if T > cfg.n_ctx:
        raise MomError(f"--seq-len {T} exceeds the model's context length {cfg.n_ctx}")
    measured = usage = source = None
    if model is not None and not cfg.is_vanilla:  # a checkpoint's routers decide: measure what they pick
        data = resolve_data_dir(args.data)
        windows = val_windows(data, cfg.vocab_size, T, args.windows)
        measured = measure_flops(model, iter_batches(windows, args.batch_size, device))
        usage = measured.usage
        source = f"{windows.shape[0]} validation windows × {T} tokens of {data}"
    base_cfg = vanilla_counterpart(cfg)
    mine, base = count(cfg, T, usage), count(base_cfg, T)
    ratios = {key: getattr(mine, key) / getattr(base, key) for key, _ in ROWS}
    result = {"config": cfg.name, "vanilla_config": base_cfg.name, "seq_len": T, "model": mine.as_dict(),
              "vanilla": base.as_dict(), "ratios": ratios, "usage": usage, "measured_on": source,
              "usage_upper_bound": {h: modules_per_step(cfg, h) for h in ("attn", "ffn")} if cfg.chunks else None}
    if measured is not None:
        result["flop_counter_forward_per_token"] = measured.forward_per_token
    if args.json:
        import json

        print(json.dumps(result, indent=2))
        return 0
    what = f"{cfg.name}{' (' + str(args.ckpt) + ')' if args.ckpt else ''}, T = {T}"
    if cfg.is_vanilla:
        print(f"FLOPs of {what} (a vanilla model: its own counterpart)")
        print(f"{'':<28} {cfg.name[:16]:>16}")
        for key, label in ROWS:
            print(f"{label:<28} {_si(getattr(mine, key)):>16}")
    else:
        print(f"FLOPs of {what}; vanilla counterpart {base_cfg.name}: {cfg.gpt2_layers} GPT-2 layers of the same "
              "width (equal parameters up to the routers)")
        print(f"{'':<28} {cfg.name[:16]:>16} {base_cfg.name[:16]:>16} {'ratio':>7}")
        for key, label in ROWS:
            a, b = getattr(mine, key), getattr(base, key)
            print(f"{label:<28} {_si(a):>16} {_si(b):>16} {ratios[key]:7.3f}")
    if cfg.chunks and usage is None:
        print("routing: analytic upper bound — every pick is a real module "
              f"({', '.join(f'{h} {modules_per_step(cfg, h):g}' for h in ('attn', 'ffn'))} modules per step); "
              "measure a checkpoint (--ckpt) for the real usage")
    elif usage is not None:
        parts = [f"{h} {usage[h]:.3f} of {modules_per_step(cfg, h):g}" for h in ("attn", "ffn") if h in usage]
        print(f"routing measured on {source}: real modules per step {', '.join(parts)}")
        print(f"FlopCounterMode on the same passes: {_si(measured.forward_per_token)} forward FLOPs / token "
              f"(analytic / measured = {mine.forward_flops_per_token / measured.forward_per_token:.4f})")
    print("Conventions: 2 FLOPs per matmul weight per token (routers and tied LM head included), attention "
          "4·d·T per core with T in full; training = 3 × forward; LayerNorm/GELU/softmax not counted.")
    return 0
