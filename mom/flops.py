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
