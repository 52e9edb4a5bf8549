"""Configuration of a Mixture-of-Modules model (Gong et al., EMNLP 2024) for Hugging Face transformers.

Self-contained: this file imports only the standard library and transformers, because an export directory carries
a copy of it (``AutoConfig.from_pretrained(DIR, trust_remote_code=True)``). It holds every field of mom's
``MoMConfig`` under the same name and meaning; see ``modeling_mom.py`` for the model.

:data:`SUPPORTED_VALUES` lists every MoMConfig field with the values the modeling file implements. A field missing
from it or a value outside it is refused with a ``ValueError`` naming the field, when an export is written
(:meth:`MoMHFConfig.from_mom`) and when a config is loaded, so that a MoMConfig option added later cannot be
exported with a meaning this implementation does not have. Adding an option: implement it in ``modeling_mom.py``,
then add the field (with the default that means "off") to :class:`MoMHFConfig` and its values to the table.

Two fields are stored under another name (:data:`HF_NAMES`): transformers reads ``temperature`` and ``top_k`` in a
model config as the sampling defaults of ``generate``.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

#: The field accepts every value mom's MoMConfig accepts (a shape, a count, or a training-only setting).
ANY = None

#: Every MoMConfig field and the values ``modeling_mom.py`` implements (``ANY``: all of them).
SUPPORTED_VALUES: dict[str, tuple[Any, ...] | None] = {
    # identity and shapes
    "name": ANY,
    "vocab_size": ANY,
    "n_ctx": ANY,
    "d_model": ANY,
    "n_head": ANY,
    "d_ff": ANY,
    "layer_norm_eps": ANY,
    # layout
    "bottom": ANY,
    "chunks": ANY,
    "top": ANY,
    "n_attn": ANY,
    "n_ffn": ANY,
    "steps": ANY,
    "anchor": ANY,
    # routing
    "router": ("gru", "mlp", "fixed", "linear"),
    "router_hidden": ANY,
    "temperature": ANY,
    "top_k": ANY,
    "attn_top_k": ANY,
    "ffn_top_k": ANY,
    "skip": ANY,
    "selection": ("token", "expert"),  # expert choice always with the causal threshold rule
    "capacity": ANY,  # expert choice decodes with the learned thresholds, not with the capacity
    "attn_candidates": ("all", "diagonal", "grouped"),
    "ffn_candidates": ("all", "diagonal", "grouped"),
    "route_unit": ("half", "block"),
    "qkv_combine": ("weighted", "sum"),
    # decomposition only: which GPT-2 layers a pool was initialised from
    "chunk_layers": ANY,
    "route_weights": ("auto", "renorm", "probs"),
    "router_step": ("none", "bias", "embed", "both"),
    "router_norm": ("none", "layernorm", "rmsnorm", "centered"),
    "router_center_momentum": ANY,  # training only (how the running mean moves), saved so training resumes alike
    # training only: auxiliary losses and initialisation do not change the function a trained model computes
    "balance_coef": ANY,
    "balance_scope": ANY,
    "balance_skip": ANY,
    "z_coef": ANY,
    "balance": ANY,
    "init_std": ANY,
    "router_init": ANY,
    "router_init_bias": ANY,
    # implementation choices of mom with equal outputs (the dispatch kernels; packing or masking all-SKIP keys)
    "dispatch": ANY,
    "key_mask": ANY,
    "attention": ANY,  # sdpa or the eager softmax(QKᵀ/√d)V: equal outputs to rounding
}

#: MoMConfig fields stored under another name in the Hugging Face config (all others keep theirs).
HF_NAMES = {"temperature": "router_temperature", "top_k": "router_top_k"}

HALVES = ("attn", "ffn")


class MoMHFConfig(PretrainedConfig):
    """Every MoMConfig field with MoMConfig's default (under its own name but for :data:`HF_NAMES`; ``d_ff`` as
    resolved, never 0), plus the Hugging Face token ids, head tying and cache switch.

    Layout: ``bottom`` vanilla layers → ``chunks`` × (module pool of ``n_attn`` attention and ``n_ffn`` FFN modules
    assembled for ``steps`` steps by two routers; then a vanilla anchor layer if ``anchor``) → ``top`` vanilla
    layers → ln_f → head tied to the token embedding."""

    model_type = "mom"
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "n_head", "max_position_embeddings": "n_ctx",
                     "intermediate_size": "d_ff"}

    name: str = "custom"
    vocab_size: int = 50257
    n_ctx: int = 1024
    d_model: int = 768
    n_head: int = 12
    d_ff: int = 3072
    layer_norm_eps: float = 1e-5
    bottom: int = 12
    chunks: int = 0
    top: int = 0
    n_attn: int = 0
    n_ffn: int = 0
    steps: int = 1
    anchor: bool = False
    router: str = "gru"
    router_hidden: int = 256
    router_temperature: float = 0.2  # MoMConfig.temperature
    router_top_k: int = 1  # MoMConfig.top_k
    attn_top_k: int | None = None
    ffn_top_k: int | None = None
    skip: bool = True
    selection: str = "token"
    capacity: float = 0.5
    attn_candidates: str = "all"
    ffn_candidates: str = "all"
    route_unit: str = "half"
    qkv_combine: str = "weighted"
    balance: str = "ours"
    chunk_layers: int = 0
    attention: str = "sdpa"
    route_weights: str = "renorm"  # (MoMConfig's default is "auto"; an export always writes the field)
    router_step: str = "none"
    router_norm: str = "none"
    router_center_momentum: float = 0.1
    router_init: str = "random"
    router_init_bias: float = 4.0
    balance_coef: float = 0.01
    balance_scope: str = "step"
    balance_skip: str = "exclude"
    z_coef: float = 0.0
    dispatch: str = "grouped"
    key_mask: str = "mask"
    init_std: float = 0.02
    # Hugging Face
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True
    use_cache: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        check_supported(self.mom_fields())

    @classmethod
    def from_mom(cls, fields: dict[str, Any], **hf_fields: Any) -> "MoMHFConfig":
        """The config of a mom model from its ``MoMConfig.to_dict()``; ``hf_fields``: token ids and the like.
        Raises ``ValueError`` naming a field this file does not know or a value it does not implement."""
        check_supported(fields)
        return cls(**{HF_NAMES.get(k, k): v for k, v in fields.items()}, **hf_fields)

    def mom_fields(self) -> dict[str, Any]:
        """The MoMConfig fields under their MoMConfig names (``MoMConfig.from_dict`` takes them back)."""
        return {f: getattr(self, HF_NAMES.get(f, f)) for f in SUPPORTED_VALUES}

    # ------------------------------------------------------------------ derived quantities (as MoMConfig's)
    def k(self, half: str) -> int:
        """Modules a token picks per step for ``half`` ("attn" or "ffn"), token choice."""
        override = getattr(self, f"{half}_top_k")
        return self.router_top_k if override is None else override

    def renormalises(self, half: str) -> bool:
        """Whether a token's K kept weights are renormalised to sum to 1 (``route_weights``)."""
        return self.route_weights == "renorm" or (self.route_weights == "auto" and self.k(half) >= 2)

    def layer_map_choices(self, half: str, step: int) -> list[int]:
        """The choices step ``step`` prefers under ``router_init='layer_map'`` (index N = SKIP), as MoMConfig's: module
        h at step h (H ≥ N or diagonal candidates; SKIP after the last module), or with H < N the h-th of H contiguous
        groups of modules; only choices the step allows."""
        n, mode = self.n_modules(half), getattr(self, f"{half}_candidates")
        if mode == "diagonal" or self.steps >= n:
            mine = [step] if step < n else []
        else:
            mine = [m for m in range(n) if m * self.steps // n == step]
        mine = [m for m in mine if m in self.candidates(half, step)]
        if mine:
            return mine
        return [n] if step >= n and self.skip else []

    def layer_map_bias(self, half: str) -> list[list[float]]:
        """(H, N+1) a router's initial per-step logit bias: ``router_init_bias · τ`` on the layer map's choices with
        ``router_init='layer_map'``, else zeros."""
        rows = [[0.0] * (self.n_modules(half) + 1) for _ in range(self.steps)]
        if self.router_init == "layer_map":
            for h, row in enumerate(rows):
                for c in self.layer_map_choices(half, h):
                    row[c] = self.router_init_bias * self.router_temperature
        return rows

    def n_modules(self, half: str) -> int:
        return getattr(self, f"n_{half}")

    def candidates(self, half: str, step: int) -> list[int]:
        """Modules step ``step`` may choose for ``half`` (SKIP, index N, not included)."""
        n, mode = self.n_modules(half), getattr(self, f"{half}_candidates")
        if mode == "all":
            return list(range(n))
        if mode == "diagonal":
            return [step]
        group = n // self.steps
        return list(range(step * group, (step + 1) * group))

    def is_static(self, half: str) -> bool:
        """Every token takes the same single module at each step with weight 1."""
        if self.router == "fixed":
            return True
        if half == "ffn" and self.route_unit == "block":
            return self.is_static("attn")
        return self.selection == "token" and not self.skip and len(self.candidates(half, 0)) == 1

    def has_router(self, half: str) -> bool:
        """The half has its own router: it is not static, and not the FFN half of a block-routed step (which
        takes the attention router's route)."""
        return not self.is_static(half) and not (half == "ffn" and self.route_unit == "block")

    def static_module(self, half: str, step: int) -> int:
        """The module every token takes at ``step`` when :meth:`is_static`."""
        return step % self.n_modules(half) if self.router == "fixed" else self.candidates(half, step)[0]

    @property
    def depth(self) -> int:
        """Attention+FFN applications on a token's longest path."""
        return self.bottom + self.chunks * (self.steps + int(self.anchor)) + self.top

    def attention_cores(self) -> list[str]:
        """Names of the attention cores in forward order (one KV-cache layer each): every vanilla layer and every
        (chunk, step), named as mom's KV cache names them."""
        names = [f"bottom.{i}" for i in range(self.bottom)]
        for c in range(self.chunks):
            names += [f"chunks.{c}.step{h}" for h in range(self.steps)]
            if self.anchor:
                names.append(f"chunks.{c}.anchor")
        return names + [f"top.{i}" for i in range(self.top)]


def check_supported(fields: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first field of ``fields`` that :data:`SUPPORTED_VALUES` does not list, or
    whose value it does not allow."""
    for name, value in fields.items():
        if name not in SUPPORTED_VALUES:
            raise ValueError(f"MoMConfig field {name!r} is unknown to the Hugging Face modeling file: implement it "
                             "in modeling_mom.py and list it in SUPPORTED_VALUES before exporting such a model")
        allowed = SUPPORTED_VALUES[name]
        if allowed is not ANY and value not in allowed:
            raise ValueError(f"{name}={value!r} is not implemented by the Hugging Face modeling file "
                             f"(it implements {', '.join(repr(v) for v in allowed)})")
