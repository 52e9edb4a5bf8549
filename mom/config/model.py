"""Model configuration: one typed dataclass, validated on construction, with named presets.

Every architecture `mom` knows — vanilla GPT-2, MoM_P / MoM_E, layer-skip, Mixture-of-Depths, parameter sharing,
MoE — is a value of :class:`MoMConfig`; none has its own code path. The layout is

    wte + wpe → `bottom` vanilla layers
              → `chunks` × (assembled block: pool of `n_attn` attention + `n_ffn` FFN modules, two routers,
                            run for `steps` (H) assembly steps; then a vanilla anchor layer if `anchor`)
              → `top` vanilla layers → ln_f → tied LM head

so the depth (attention+FFN applications on the longest path) is ``bottom + chunks·(steps + anchor) + top``.

Routing vocabulary used throughout the package:

* ``router``: ``gru`` (the paper's recurrent router, state carried over the H steps of a block), ``mlp``
  (d → r → ReLU → N+1, no recurrence), ``linear`` (d → N+1: Mixture-of-Depths' score r = wᵀx per candidate, which
  ranks and weights tokens raw; expert choice only) or ``fixed`` (step h uses module h mod N with weight 1, no SKIP).
* ``route_unit``: ``half`` — the attention and the FFN half of a step are routed separately; ``block`` — one route
  per step for both (Mixture-of-Depths as published: a picked token gets x + w·(block(x) − x)).
* ``selection``: ``token`` — every token picks its top-K among the candidates (+SKIP); ``expert`` — every
  candidate module picks the ``capacity`` fraction of a sequence's tokens with the highest router probability
  (Mixture-of-Depths when the candidate set is {module h}).
* ``attn_candidates`` / ``ffn_candidates``: which modules step h may choose: ``all``; ``diagonal`` (only module
  h: layer-skip, MoD); ``grouped`` (the h-th of H equal groups: MoE, where each step owns its experts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from mom.config.base import JsonConfig, check_types, field_types, is_instance, resolve_spec, suggest
from mom.errors import ConfigError
from mom.fileio import write_json_atomic  # noqa: F401  (re-exported: configs are written with it)

RouterKind = Literal["gru", "mlp", "fixed", "linear"]
Selection = Literal["token", "expert"]
Candidates = Literal["all", "diagonal", "grouped"]
Dispatch = Literal["grouped", "loop"]
KeyMask = Literal["mask", "pack"]
BalanceScope = Literal["step", "pooled"]
BalanceSkip = Literal["exclude", "include"]
RouteUnit = Literal["half", "block"]
QkvCombine = Literal["weighted", "sum"]
Balance = Literal["ours", "official"]
AttentionImpl = Literal["sdpa", "eager"]
RouteWeights = Literal["auto", "renorm", "probs"]
RouterStep = Literal["none", "bias", "embed", "both"]
RouterNorm = Literal["none", "layernorm", "rmsnorm", "centered"]
RouterInit = Literal["random", "layer_map", "auto"]

# Version 2 added ``route_weights``, whose default changes what a K = 1 half computes: a version-1 file (written
# before it existed) is read with the rule it was trained under, ``renorm`` (see MoMConfig._upgrade).
CONFIG_FORMAT_VERSION = 2
# The two halves of an assembly step, in order; field names carry them (n_attn, ffn_top_k, router_attn, …).
HALVES = ("attn", "ffn")


@dataclass
class MoMConfig(JsonConfig):
    """Architecture of a Mixture-of-Modules model (and of a vanilla GPT-2: ``chunks = 0``)."""

    _FORMAT_VERSION: ClassVar[int] = CONFIG_FORMAT_VERSION
    _READS_VERSIONS: ClassVar[tuple[int, ...]] = (1, CONFIG_FORMAT_VERSION)
    _LABEL: ClassVar[str] = ""
    _KIND: ClassVar[str] = "model"

    name: str = "custom"
    # --- shapes (GPT-2 names in comments) ---
    vocab_size: int = 50257
    n_ctx: int = 1024  # n_positions
    d_model: int = 768  # n_embd
    n_head: int = 12
    d_ff: int = 0  # FFN inner width; 0 means 4·d_model (GPT-2)
    layer_norm_eps: float = 1e-5
    # --- layout ---
    bottom: int = 12  # vanilla layers before the first assembled block
    chunks: int = 0  # assembled blocks, each optionally followed by an anchor layer
    top: int = 0  # vanilla layers after the last block
    n_attn: int = 0  # attention modules in each block's pool (N_A)
    n_ffn: int = 0  # FFN modules in each block's pool (N_F)
    steps: int = 1  # assembly steps per block (H)
    anchor: bool = False  # a vanilla layer after every block
    # --- routing ---
    router: RouterKind = "gru"
    router_hidden: int = 256  # r
    temperature: float = 0.2  # τ in softmax(W h / τ)
    top_k: int = 1  # K, for both routers unless overridden below
    attn_top_k: int | None = None
    ffn_top_k: int | None = None
    skip: bool = True  # SKIP is a candidate at every step
    selection: Selection = "token"
    capacity: float = 0.5  # expert selection: fraction of a sequence's tokens each module takes
    attn_candidates: Candidates = "all"
    ffn_candidates: Candidates = "all"
    # --- baselines as published and the official code's choices (docs/deviations.md) ---
    # What one routing decision covers: each half of a step (attention, FFN) routed on its own, or the whole `block`
    # (Mixture-of-Depths as published: one route per step for attention and FFN together, x + w·(block(x) − x)).
    route_unit: RouteUnit = "half"
    # How a token's picked attention modules combine their q, k, v: renormalised router weights, or the official
    # code's plain `sum` (its default weighted_qkv=False).
    qkv_combine: QkvCombine = "weighted"
    # Balance loss: `ours` (balance_scope, balance_skip) or the `official` code's (routers.official_balance).
    balance: Balance = "ours"
    # GPT-2 layers each chunk's pool is decomposed from; 0 means max(n_attn, n_ffn). Larger: smaller pools than layers
    # (the official pruning ablation trains phase 2 with them); pool module i ← chunk layer ⌊i·chunk_layers/N⌋.
    chunk_layers: int = 0
    # Attention implementation: `sdpa` (scaled_dot_product_attention) or `eager`, the plain softmax(QKᵀ/√d)V that
    # keeps the T×T scores for backward like the official code (for measuring its training memory).
    attention: AttentionImpl = "sdpa"
    # Routers that learn to assemble (issue #18; docs/training.md "Routers"). Kept token-choice weights: `auto` =
    # the router probability when a half picks K = 1 (Switch Transformer's rule; renormalised, that one weight is
    # always 1 and the LM loss gives the router no gradient) and renormalised over the K picks when K ≥ 2;
    # `renorm` = always renormalised (the paper's code); `probs` = always the raw probabilities.
    route_weights: RouteWeights = "auto"
    # The step index reaching the router: a learned per-step logit bias (H × (N+1)), a learned step embedding added
    # to the router's input (H × D), or both; zero-initialised. `none`: the paper's plain router.
    router_step: RouterStep = "none"
    # The router's input normalised by its own LayerNorm / RMSNorm (one per router); `none`: the raw residual stream;
    # `centered`: minus a running mean over tokens (per step, updated in training, a buffer), then RMSNorm — what all
    # tokens share removed, so early in training from scratch a router still sees token-specific input
    # (mom.model.routers.centering_mean; docs/log.md 2026-12-03 second session).
    router_norm: RouterNorm = "none"
    # `centered` only: how far the running mean moves toward each training batch's mean (1 = the previous batch's
    # mean; smaller = slower to follow the residual stream as training moves it).
    router_center_momentum: float = 0.1
    # `layer_map`: the per-step bias starts so that step h prefers the module(s) the GPT-2 layer map gave it (the
    # decomposed phase-1 network; see MoMConfig.layer_map_choices), by `router_init_bias` in scaled logits
    # (logit / τ): a preferred choice starts e^router_init_bias times as probable as another. Needs router_step
    # bias or both. Lead 4: tiny-mom decomposed from the demo's phase 1 starts +0.003 nats above it (random routers:
    # +0.11) with routers keeping 0.16 of a random router's LM gradient (docs/log.md).
    # `auto`: `layer_map` when the model is decomposed from a vanilla GPT-2 (phase 2: mom.convert.gpt2.decompose sets
    # the bias), zero-initialised otherwise (from scratch a layer-map preference is not a function to preserve, and
    # measured it invites collapse; docs/results-routers.md). Without a step bias `auto` is `random`.
    router_init: RouterInit = "random"
    router_init_bias: float = 4.0
    # --- auxiliary losses ---
    balance_coef: float = 0.01  # Switch-style N·Σ f_i P_i
    balance_scope: BalanceScope = "step"  # per step, or pooled over a block's steps
    balance_skip: BalanceSkip = "exclude"  # SKIP outside the balance, or balanced like a module
    z_coef: float = 0.0  # router z-loss: mean(logsumexp(logits)²)
    # --- implementation ---
    dispatch: Dispatch = "grouped"  # fast sort+grouped-GEMM dispatcher, or the plain `loop` reference
    # How attention hides all-SKIP tokens as keys: a boolean mask for SDPA, or `pack`: each sequence's valid tokens
    # moved to its front, then plain causal SDPA (training and scoring; decoding with a KV cache uses the mask)
    key_mask: KeyMask = "mask"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if is_instance(self.d_ff, int) and self.d_ff == 0 and is_instance(self.d_model, int):
            self.d_ff = 4 * self.d_model  # (a d_model of the wrong type is left for validate() to name)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first problem found."""
        check_types(self)
        for f in field_types(type(self)):
            # Every integer field is a size or a count: past 2**31 no model can be built from it (torch takes
            # sizes as int64, and products of two sizes must fit too), so say so here instead of inside torch.
            v = getattr(self, f)
            if isinstance(v, int) and not isinstance(v, bool) and v >= 2**31:
                raise ConfigError(f"{f} must be < 2**31, got {v}")
        # The name becomes a directory (runs/<name>) and appears in logs: printable text, no path tricks.
        if not self.name or not self.name.isprintable() or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"name must be printable text without '/', got {self.name!r}")
        for f in ("vocab_size", "n_ctx", "d_model", "n_head", "d_ff", "router_hidden"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{f} must be ≥ 1, got {getattr(self, f)}")
        for f in ("bottom", "top", "chunks"):
            if getattr(self, f) < 0:
                raise ConfigError(f"{f} (a layer count) must be ≥ 0, got {getattr(self, f)}")
        if self.d_model % self.n_head:
            raise ConfigError(f"n_head ({self.n_head}) must divide d_model ({self.d_model})")
        if self.depth == 0:
            raise ConfigError("the model has no layers: set bottom/top > 0 or chunks > 0")
        # The bounds below keep a random model's forward finite in float32 (below them: NaN outputs or losses).
        if not self.temperature >= 1e-6:  # router logits / τ overflow, and the z-loss squares them
            raise ConfigError(f"temperature must be ≥ 1e-6, got {self.temperature}")
        if self.layer_norm_eps <= 0 or not 0 < self.init_std <= 1:  # GPT-2's init_std is 0.02
            raise ConfigError(f"layer_norm_eps must be > 0 and init_std in (0, 1], got {self.layer_norm_eps} and "
                              f"{self.init_std}")
        if not 0 < self.router_center_momentum <= 1:
            raise ConfigError(f"router_center_momentum must be in (0, 1], got {self.router_center_momentum}")
        if not 0 < self.router_init_bias <= 50:  # past e^50 the preferred choice's softmax is saturated in float32
            raise ConfigError(f"router_init_bias must be in (0, 50], got {self.router_init_bias}")
        for f in ("balance_coef", "z_coef"):
            if not 0 <= getattr(self, f) <= 1e6:
                raise ConfigError(f"{f} must be a number in [0, 1e6], got {getattr(self, f)}")
        # Each weight must be a tensor torch can describe (its fp32 byte size an int64): a pool stacks its
        # modules' matrices, the GRU router's is (d + r) × 3r.
        pool = max(self.n_attn, self.n_ffn) if self.chunks else 1
        largest = max(max(self.vocab_size, self.n_ctx, pool * max(3 * self.d_model, self.d_ff)) * self.d_model,
                      3 * self.router_hidden * (self.d_model + self.router_hidden) if self.chunks else 0)
        if largest >= 2**60:
            raise ConfigError(f"the largest weight would hold {largest:.3g} numbers, more than a tensor can: "
                              "reduce d_model, d_ff, vocab_size, n_ctx, router_hidden or the modules per pool")
        if self.chunk_layers < 0:
            raise ConfigError(f"chunk_layers must be ≥ 0, got {self.chunk_layers}")
        if self.chunks == 0:
            return  # routing fields are inert without assembled blocks
        if self.steps < 1:
            raise ConfigError(f"steps (H) must be ≥ 1 when chunks > 0, got {self.steps}")
        for half in ("attn", "ffn"):
            n = getattr(self, f"n_{half}")
            if n < 1:
                raise ConfigError(f"n_{half} must be ≥ 1 when chunks > 0, got {n}")
            mode = getattr(self, f"{half}_candidates")
            if mode == "diagonal" and n < self.steps:
                raise ConfigError(
                    f"{half}_candidates='diagonal' gives step h module h, so n_{half} ({n}) must be ≥ steps "
                    f"({self.steps})"
                )
            if mode == "grouped" and n % self.steps:
                raise ConfigError(
                    f"{half}_candidates='grouped' splits the pool evenly over steps: steps ({self.steps}) must "
                    f"divide n_{half} ({n})"
                )
            k = self.k(half)
            if k < 1:
                raise ConfigError(f"{half} top_k must be ≥ 1, got {k}")
            if self.selection == "token" and k > self.n_choices(half):
                raise ConfigError(
                    f"{half} top_k ({k}) exceeds the choices at a step ({self.n_candidates(half)} modules"
                    f"{' + SKIP' if self.skip else ''})"
                )
        if self.router == "fixed":
            if self.skip:
                raise ConfigError("router='fixed' uses module h at step h and cannot choose SKIP: set skip=false")
            if self.selection != "token" or self.k("attn") != 1 or self.k("ffn") != 1:
                raise ConfigError("router='fixed' requires selection='token' and top_k=1")
            if (self.router_step, self.router_norm) != ("none", "none") or self.router_init == "layer_map":
                raise ConfigError("router='fixed' has no learned router: router_step, router_norm and router_init "
                                  "need router 'gru' or 'mlp'")
        if self.router_init == "layer_map" and self.router_step not in ("bias", "both"):
            raise ConfigError("router_init='layer_map' sets the per-step logit bias: it needs router_step 'bias' or "
                              f"'both', got {self.router_step!r}")
        if self.selection == "expert":
            if not 0 < self.capacity <= 1:
                raise ConfigError(f"capacity must be in (0, 1], got {self.capacity}")
            if not self.skip:
                raise ConfigError("selection='expert' leaves unpicked tokens on the residual stream: it needs "
                                  "skip=true")
        self._validate_baseline_switches()

    def _validate_baseline_switches(self) -> None:
        """The fields of the baselines-and-official-code block (chunks > 0)."""
        if self.chunk_layers and self.chunk_layers < self.modules_per_chunk:
            raise ConfigError(f"chunk_layers ({self.chunk_layers}) must be 0 or ≥ the larger pool "
                              f"(max(n_attn, n_ffn) = {self.modules_per_chunk}): a pool module comes from one layer")
        if self.router == "linear" and self.selection != "expert":
            raise ConfigError("router='linear' is Mixture-of-Depths' score r = wᵀx, which ranks and weights tokens "
                              "raw: it needs selection='expert'")
        if self.route_unit == "block":
            if self.router == "fixed":
                raise ConfigError("route_unit='block' shares one learned route between a step's halves; "
                                  "router='fixed' has none")
            if (self.n_attn, self.attn_candidates, self.k("attn")) != (self.n_ffn, self.ffn_candidates, self.k("ffn")):
                raise ConfigError("route_unit='block' routes a step's attention and FFN together: n_attn, "
                                  "candidates and top_k must be equal for both halves")
        if self.balance == "official" and (self.balance_scope, self.balance_skip) != ("step", "exclude"):
            raise ConfigError("balance='official' pools over the whole model with SKIP included: leave balance_scope "
                              "and balance_skip at their defaults")

    # ------------------------------------------------------------------ derived quantities
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def depth(self) -> int:
        """Attention+FFN applications on a token's longest path."""
        return self.bottom + self.chunks * (self.steps + int(self.anchor)) + self.top

    @property
    def n_vanilla_layers(self) -> int:
        return self.bottom + self.chunks * int(self.anchor) + self.top

    @property
    def is_vanilla(self) -> bool:
        return self.chunks == 0

    @property
    def modules_per_chunk(self) -> int:
        """GPT-2 layers a chunk's pool takes when decomposing (attention and FFN halves of the same layers)."""
        return max(self.n_attn, self.n_ffn)

    @property
    def layers_per_chunk(self) -> int:
        """GPT-2 layers a chunk's pool is decomposed from: ``chunk_layers``, or the larger pool when 0."""
        return self.chunk_layers or self.modules_per_chunk

    @property
    def gpt2_layers(self) -> int:
        """Number of vanilla GPT-2 layers this layout decomposes (the layer map of the brief)."""
        return self.bottom + self.chunks * (self.layers_per_chunk + int(self.anchor)) + self.top

    def k(self, half: str) -> int:
        """Modules picked per token per step for ``half`` in {"attn", "ffn"}."""
        override = getattr(self, f"{half}_top_k")
        return self.top_k if override is None else override

    def n_candidates(self, half: str) -> int:
        """Number of real modules a step may choose from (SKIP excluded)."""
        n, mode = getattr(self, f"n_{half}"), getattr(self, f"{half}_candidates")
        return {"all": n, "diagonal": 1, "grouped": n // max(self.steps, 1)}[mode]

    def n_choices(self, half: str) -> int:
        return self.n_candidates(half) + int(self.skip)

    def candidates(self, half: str, step: int) -> list[int]:
        """Module indices step ``step`` may choose for ``half`` (SKIP, index N, not included)."""
        n, mode = getattr(self, f"n_{half}"), getattr(self, f"{half}_candidates")
        if mode == "all":
            return list(range(n))
        if mode == "diagonal":
            return [step]
        g = n // self.steps
        return list(range(step * g, (step + 1) * g))

    def renormalises(self, half: str) -> bool:
        """Whether a token-choice route of ``half`` renormalises its K kept weights to sum to 1 (``route_weights``)."""
        return self.route_weights == "renorm" or (self.route_weights == "auto" and self.k(half) >= 2)

    def layer_map_choices(self, half: str, step: int) -> list[int]:
        """The choices step ``step`` prefers under ``router_init='layer_map'`` (index N = SKIP; [] = no preference).

        The layer map (:mod:`mom.convert.gpt2`) puts GPT-2 layers 0 … N-1 of a chunk into modules 0 … N-1, so the
        decomposed phase-1 network runs them in order. With H ≥ N (MoM_P), or ``diagonal`` candidates, step h
        prefers module h; the steps after the last module prefer SKIP (without SKIP: no preference). With H < N
        (MoM_E, MoE), the modules are split in order into H contiguous groups (module m to step ⌊m·H/N⌋) and step h
        prefers its group equally: with K ≥ the group's size the whole group runs (a weighted sum of what were
        consecutive layers), with fewer picks the router chooses among it; a ``grouped`` (MoE) step's group is its
        own experts, so it prefers none of them over another. With smaller pools than layers (``chunk_layers``) and
        H ≥ L_c, step h prefers the module decomposed from chunk layer h, or SKIP where that layer's half was dropped.
        Only choices the step allows are preferred."""
        n, mode = getattr(self, f"n_{half}"), getattr(self, f"{half}_candidates")
        lc = self.layers_per_chunk
        if mode == "all" and lc > n and self.steps >= lc:
            mine = [m for m in range(n) if m * lc // n == step]
            return mine or ([n] if self.skip else [])
        if mode == "diagonal" or self.steps >= n:
            mine = [step] if step < n else []
        else:
            mine = [m for m in range(n) if m * self.steps // n == step]
        allowed = set(self.candidates(half, step))
        mine = [m for m in mine if m in allowed]
        if mine:
            return mine
        return [n] if step >= n and self.skip else []

    def is_static(self, half: str) -> bool:
        """True when every token takes the same single module at each step with weight 1 (no router needed)."""
        if self.router == "fixed":
            return True
        if half == "ffn" and self.route_unit == "block":
            return self.is_static("attn")  # the FFN half takes the attention half's route (see has_router)
        return self.selection == "token" and not self.skip and self.n_candidates(half) == 1

    def has_router(self, half: str) -> bool:
        """Whether ``half`` has its own router: not when static, nor the FFN half of a block-routed step (it follows
        the attention router's decision)."""
        return not self.is_static(half) and not (half == "ffn" and self.route_unit == "block")
    @classmethod
    def _upgrade(cls, d: dict[str, Any], version: int) -> dict[str, Any]:
        if version < 2 and isinstance(d, dict):
            d = {"route_weights": "renorm", **d}  # the rule version-1 models were trained under
        return d

    def _adjust_replaced(self, d: dict[str, Any], changes: dict[str, Any]) -> None:
        if "d_model" in changes and "d_ff" not in changes:
            d["d_ff"] = 0  # keep GPT-2's 4·d unless the user sets d_ff too


# ---------------------------------------------------------------------------------------------- presets
# GPT-2 shapes (Radford et al. 2019). Layer counts 12 / 24 / 36.
_SCALES = {
    "S": dict(d_model=768, n_head=12, layers=12, tag="small"),
    "M": dict(d_model=1024, n_head=16, layers=24, tag="medium"),
    "L": dict(d_model=1280, n_head=20, layers=36, tag="large"),
}
_TINY = dict(vocab_size=50257, n_ctx=256, d_model=128, n_head=4)
TINY_LAYERS = 6


def _vanilla(name: str, layers: int, **shape: Any) -> MoMConfig:
    return MoMConfig(name=name, bottom=layers, top=0, chunks=0, **shape)


# What the paper reports for its presets against the GPT-2 of the same size (arXiv 2407.06677, abstract and §5):
# MoM_P-large is "over 38%" deeper; MoM_E-large is "over 60%" shallower with 16% fewer forward TFLOPs and 42% less
# forward memory. `mom configs` prints these beside our counts.
PAPER_FIGURES = {
    "mom-p-large": "paper: depth > +38%",
    "mom-e-large": "paper: depth > −60%, fwd TFLOPs −16%, memory −42%",
}


def _mom_p(name: str, layers: int, **shape: Any) -> MoMConfig:
    """MoM_P (performance): deepest graph at equal parameters.

    The paper's MoM_P-large, 36 layers as 1 bottom layer + 7 chunks of (4 modules + anchor), each chunk assembled
    for H = 6 steps with top-2 routing: depth 1 + 7·(6+1) = 50, +38.9% ("over 38%"). At every scale: one bottom
    layer, then as many such 5-layer chunks as the layers allow, the rest as top layers. +38.9% needs 5c + 1 layers:
    small is 1 + 2·5 + 1 (depth 16) and medium 1 + 4·5 + 3 (depth 32), both +33.3%; tiny (6 layers) 1 + 1·5 (depth
    8, +33.3%). Same parameter count as the GPT-2 plus the routers.
    """
    chunks = (layers - 1) // 5
    return MoMConfig(name=name, bottom=1, top=layers - 1 - 5 * chunks, chunks=chunks, n_attn=4, n_ffn=4, steps=6,
                     anchor=True, top_k=2, **shape)


def _mom_p_h33(name: str, layers: int, **shape: Any) -> MoMConfig:
    """The earlier MoM_P layout, +33% depth at every scale: L/12 bottom and top layers and L/6 chunks of (4 modules
    + anchor), H = 6, top-2 (36 layers → 3 + 6·7 + 3 = 48)."""
    edge = layers // 12
    return MoMConfig(name=name, bottom=edge, top=edge, chunks=layers // 6, n_attn=4, n_ffn=4, steps=6,
                     anchor=True, top_k=2, **shape)


def _mom_e(name: str, layers: int, top_k: int = 3, **shape: Any) -> MoMConfig:
    """MoM_E (efficiency): minimum depth, more modules per step.

    One big chunk holding all but max(1, L/12) bottom layers and an anchor as modules, assembled for H = max(1, L/4)
    steps with top-3 routing. At large (36 layers): 3 bottom + (32 modules, H = 9, K = 3) + anchor, depth 13:
    −63.9% depth and −15.8% forward FLOPs against GPT-2-large, the paper's "over 60%" and 16% (its efficient
    example is K3H1S: top-3). Small: 1 + (10, H = 3) + anchor, depth 5 (−58%); medium 2 + (21, H = 6) + anchor,
    depth 9 (−62.5%); tiny (6 layers) 1 + (4, H = 1) + anchor, depth 3 (−50%). ``top_k=2``: the earlier layout.
    """
    edge = max(1, layers // 12)
    n = layers - edge - 1
    return MoMConfig(name=name, bottom=edge, top=0, chunks=1, n_attn=n, n_ffn=n, steps=max(1, layers // 4),
                     anchor=True, top_k=top_k, **shape)


def _tiny_special(name: str, **fields: Any) -> MoMConfig:
    base = dict(_TINY, bottom=0, top=0, chunks=1, steps=TINY_LAYERS, anchor=False)
    base.update(fields)
    return MoMConfig(name=name, **base)


def _mod(name: str, capacity: float) -> MoMConfig:
    """Mixture-of-Depths as published (Raposo et al. 2024), tiny scale: one linear router per block (the rows of a
    d → N+1 linear map: step h reads score r_h = w_hᵀx) scores each token once; the block (attention and FFN
    together) takes the ``capacity`` fraction of each sequence with the highest r_h and adds r·(block(x) − x) to
    them; the others ride the residual stream. Generation uses the causal threshold rule. Every block is routed
    (the paper's best interleaves routed and full blocks; a layout cannot express that)."""
    n = TINY_LAYERS
    return _tiny_special(name, n_attn=n, n_ffn=n, attn_candidates="diagonal", ffn_candidates="diagonal", skip=True,
                         selection="expert", capacity=capacity, router="linear", route_unit="block")


# The router options of every MoM preset (mom-p-*, mom-e-*, tiny-mom*, grid points), chosen by the router
# experiment of issue #18 (docs/results-routers.md): the step index reaches the router, its input is centred
# (from scratch the fewest collapse episodes — none on 3 seeds over 300 steps — at 0.05–0.10 nats; level in
# phase 2), and phase 2 starts from the layer map. The paper's plain GRU router is one override away:
# --model.routers paper (= --model.router_step none --model.router_norm none --model.router_init random).
MOM_ROUTER_DEFAULTS: dict[str, Any] = dict(router_step="both", router_norm="centered", router_init="auto")
# One override for either set: `--model.routers paper` (the paper's plain GRU router) or `--model.routers mom`.
MoMConfig._BUNDLES = {"routers": {"paper": dict(router_step="none", router_norm="none", router_init="random"),
                                  "mom": MOM_ROUTER_DEFAULTS}}


def _with_router_defaults(make: Any) -> Any:
    return lambda: make().replace(**MOM_ROUTER_DEFAULTS)


def _build_presets() -> dict[str, Any]:
    p = _layout_presets()
    for name in p:
        if name.startswith(("mom-", "tiny-mom")):
            p[name] = _with_router_defaults(p[name])
    return p


def _layout_presets() -> dict[str, Any]:
    p: dict[str, Any] = {}
    for s, sc in _SCALES.items():
        shape = dict(d_model=sc["d_model"], n_head=sc["n_head"])
        vname = "gpt2" if s == "S" else f"gpt2-{sc['tag']}"
        tag, L = sc["tag"], sc["layers"]
        p[vname] = lambda vname=vname, L=L, shape=shape: _vanilla(vname, L, **shape)
        p[f"mom-p-{tag}"] = lambda tag=tag, L=L, shape=shape: _mom_p(f"mom-p-{tag}", L, **shape)
        p[f"mom-e-{tag}"] = lambda tag=tag, L=L, shape=shape: _mom_e(f"mom-e-{tag}", L, **shape)
    # The earlier layouts, under names that say what they are: MoM_E with top-2 (−36% FLOPs at large, not the
    # paper's −16%) and the +33% MoM_P at large (medium's had other edges, small's is today's).
    for sc in _SCALES.values():
        shape = dict(d_model=sc["d_model"], n_head=sc["n_head"])
        tag, L = sc["tag"], sc["layers"]
        p[f"mom-e-{tag}-k2"] = lambda tag=tag, L=L, shape=shape: _mom_e(f"mom-e-{tag}-k2", L, top_k=2, **shape)
    p["mom-p-large-h33"] = lambda: _mom_p_h33("mom-p-large-h33", 36, d_model=1280, n_head=20)
    # GPT-2 small with the vocabulary padded to 50,304 = 786 · 64 (nanoGPT's choice): tensor-core-friendly head and
    # embedding shapes for training from scratch (ids ≥ 50,257 never occur). The H100 throughput baseline.
    p["gpt2-padded"] = lambda: _vanilla("gpt2-padded", 12, d_model=768, n_head=12, vocab_size=50304)
    n = TINY_LAYERS
    p["tiny"] = lambda: _vanilla("tiny", n, **_TINY)
    # tiny MoM_P: 6 layers → 1 bottom + (4 modules, H=6, top-2) + anchor: depth 8 (+33%) at equal parameters.
    p["tiny-mom"] = lambda: _mom_p("tiny-mom", n, **_TINY)
    # tiny MoM_E: 6 layers → 1 bottom + (4 modules, H=1, top-3) + anchor: depth 3 (−50%).
    p["tiny-mom-e"] = lambda: _mom_e("tiny-mom-e", n, **_TINY)
    # the earlier tiny MoM_E: 1 bottom + (4 modules, H=2, top-2) + anchor: depth 4 (−33%), as many FLOPs as `tiny`.
    p["tiny-mom-e-k2"] = lambda: MoMConfig(name="tiny-mom-e-k2", bottom=1, top=0, chunks=1, n_attn=4, n_ffn=4,
                                           steps=2, anchor=True, top_k=2, **_TINY)
    # Special cases at tiny scale, matched to `tiny` (6 layers) in depth.
    p["layerskip"] = lambda: _tiny_special("layerskip", n_attn=n, n_ffn=n, attn_candidates="diagonal",
                                           ffn_candidates="diagonal", skip=True, top_k=1)
    p["mod"] = lambda: _mod("mod", 0.125)  # Raposo et al.'s best capacity
    p["mod-50"] = lambda: _mod("mod-50", 0.5)
    # The earlier MoD-like layout: separate attention/FFN decisions by a GRU, softmax(·/τ) weights, 50% capacity.
    p["mod-gru-halves"] = lambda: _tiny_special("mod-gru-halves", n_attn=n, n_ffn=n, attn_candidates="diagonal",
                                                ffn_candidates="diagonal", skip=True, selection="expert", capacity=0.5)
    p["universal"] = lambda: _tiny_special("universal", n_attn=1, n_ffn=1, router="fixed", skip=False, top_k=1)
    # MoE with the parameters of `tiny` (up to the router and the experts' own LayerNorms and biases): each step's
    # FFN is 4 experts a quarter as wide (d_ff = d), top-2 of them per token (half the dense FFN's active FLOPs).
    p["moe"] = lambda: _tiny_special("moe", n_attn=n, n_ffn=4 * n, d_ff=_TINY["d_model"], attn_candidates="diagonal",
                                     ffn_candidates="grouped", skip=False, router="mlp", attn_top_k=1, ffn_top_k=2)
    # The earlier MoE: 4 full-width experts per step (+30% parameters against `tiny`), upcycled as exact copies.
    p["moe-full-experts"] = lambda: _tiny_special("moe-full-experts", n_attn=n, n_ffn=4 * n,
                                                  attn_candidates="diagonal", ffn_candidates="grouped", skip=False,
                                                  router="mlp", attn_top_k=1, ffn_top_k=2)
    return p


PRESETS: dict[str, Any] = _build_presets()
_GRID = re.compile(r"^K(\d+)H(\d+)([SML])$")


def preset_names() -> list[str]:
    return list(PRESETS)


def preset(name: str) -> MoMConfig:
    """A named preset, or a grid point ``K{K}H{H}{S|M|L}`` (the MoM_P layout of that scale with K and H set)."""
    if name in PRESETS:
        return PRESETS[name]()
    m = _GRID.match(name)
    if m:
        k, h, s = int(m.group(1)), int(m.group(2)), m.group(3)
        base = PRESETS[f"mom-p-{_SCALES[s]['tag']}"]()
        return base.replace(name=name, top_k=k, steps=h)
    raise ConfigError(f"unknown preset '{name}'{suggest(name, set(PRESETS))}; "
                      f"presets: {', '.join(PRESETS)}, or a grid point like K3H1S")


def resolve_config(spec: str) -> MoMConfig:
    """A preset name or a path to a JSON config (a file, or a directory holding config.json)."""
    return resolve_spec(spec, MoMConfig, "config.json", preset)
