"""Analytic parameter, active-parameter and FLOP counts of a config (nanoGPT / PaLM convention), peak device FLOP/s
for MFU, and the vanilla models a MoM is compared with.

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

from mom.config.model import MoMConfig


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
    if not cfg.has_router(half):
        return 0
    d, r, n1 = cfg.d_model, cfg.router_hidden, getattr(cfg, f"n_{half}") + 1
    return _router_map_params(cfg, d, r, n1) + _router_option_params(cfg, d, n1)


def _router_map_params(cfg: MoMConfig, d: int, r: int, n1: int) -> int:
    if cfg.router == "linear":
        return d * n1 + n1
    out = r * n1 + n1
    if cfg.router == "gru":
        return 3 * r * (d + r) + 6 * r + out
    return d * r + r + out


def _router_option_params(cfg: MoMConfig, d: int, n1: int) -> int:
    """The router options' own parameters: input norm (weight, and bias for LayerNorm), step embedding (H × d) and
    per-step logit bias (H × (N+1))."""
    norm = {"none": 0, "rmsnorm": d, "centered": d, "layernorm": 2 * d}[cfg.router_norm]
    embed = cfg.steps * d if cfg.router_step in ("embed", "both") else 0
    bias = cfg.steps * n1 if cfg.router_step in ("bias", "both") else 0
    return norm + embed + bias


def router_matmul_params(cfg: MoMConfig, half: str) -> int:
    if not cfg.has_router(half):
        return 0
    d, r, n1 = cfg.d_model, cfg.router_hidden, getattr(cfg, f"n_{half}") + 1
    if cfg.router == "linear":
        return d * n1
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
    routers = router_params(cfg, "attn") + router_params(cfg, "ffn")
    params += cfg.chunks * (cfg.n_attn * a_mod + cfg.n_ffn * f_mod + routers)

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
    (MoM_P and MoM_E against the GPT-2 of the same size); for a MoE (grouped FFN candidates), one GPT-2 layer per
    step. A vanilla config is its own counterpart."""
    if cfg.is_vanilla:
        return cfg
    layers, d_ff = cfg.gpt2_layers, cfg.d_ff
    if cfg.ffn_candidates == "grouped":
        # MoE: each step is one layer whose FFN became experts (split or copied), so the counterpart has one GPT-2
        # layer per step, with GPT-2's FFN (4·d) whatever the experts' width.
        layers, d_ff = cfg.depth, 4 * cfg.d_model
    return MoMConfig(name=f"gpt2-{layers}L", vocab_size=cfg.vocab_size, n_ctx=cfg.n_ctx,
                     d_model=cfg.d_model, n_head=cfg.n_head, d_ff=d_ff, layer_norm_eps=cfg.layer_norm_eps,
                     bottom=layers, chunks=0, top=0, init_std=cfg.init_std, dispatch=cfg.dispatch,
                     attention=cfg.attention)


def vanilla_with_layers(cfg: MoMConfig, layers: int) -> MoMConfig:
    return MoMConfig(name=f"vanilla-{layers}L", vocab_size=cfg.vocab_size, n_ctx=cfg.n_ctx, d_model=cfg.d_model,
                     n_head=cfg.n_head, d_ff=cfg.d_ff, bottom=layers, top=0, chunks=0)


def active_layers(cfg: MoMConfig) -> int:
    """Vanilla layers with the same active matmul FLOPs per token as ``cfg`` (routers excluded), rounded."""

    c = count(cfg)
    routers = cfg.chunks * cfg.steps * (router_matmul_params(cfg, "attn") + router_matmul_params(cfg, "ffn"))
    per_layer = 4 * cfg.d_model ** 2 + 2 * cfg.d_model * cfg.d_ff
    return max(1, round((c.matmul_params_active - routers - cfg.vocab_size * cfg.d_model) / per_layer))
