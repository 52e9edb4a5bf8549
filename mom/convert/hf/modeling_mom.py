"""Mixture-of-Modules (Gong et al., EMNLP 2024) as a Hugging Face causal language model.

A self-contained reference implementation of the function a trained ``mom`` model computes: it imports only the
standard library, torch and transformers, because an export directory carries a copy of it
(``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``). Parameter names are mom's, so the
export's ``model.safetensors`` holds mom's own tensors. Written for clarity, not speed: the routed modules run in a
Python loop over modules.

How a batch flows (B sequences of T tokens, width D; x_TD is the residual stream flattened to B·T tokens)::

    input_ids → wte + wpe → bottom vanilla layers
      → for each chunk, for step h in 0..H-1:
            attention half: router R_A picks modules (or SKIP) per token → each picked module's LN + QKV projection,
                            combined with the pick weights renormalised over the real picks → one causal attention
                            in which a token whose picks were all SKIP is no key (it still attends to itself) →
                            each picked module's c_proj, weighted by its pick weight → added to x
            FFN half:       router R_F picks → Σ_k w_k · FFN_k(LN_k(x)) → added to x
        then the chunk's anchor layer (vanilla), if any
      → top vanilla layers → ln_f → logits = x · wteᵀ

A vanilla layer is a pool of one module on the static route "every token takes module 0 with weight 1".

A router reads the residual stream x_t, through its own LayerNorm or RMSNorm (``router_norm``; ``centered``: minus
a running mean over tokens, a buffer, then RMSNorm) and plus a learned
step embedding (``router_step`` embed/both) where configured, and adds a learned per-step bias to its logits
(``router_step`` bias/both). A token's K picks are weighted by their router probabilities, renormalised over the K
picks where ``route_weights`` says so (``renorm``; ``auto``: when K ≥ 2).

Routing is always causal, as in mom with ``causal_routing=True``: token choice is causal by itself, and expert
choice (Mixture-of-Depths) uses mom's causal rule, candidate c takes a token iff its router probability (the
linear router's raw score) reaches the learned threshold ``threshold_*[step, c]``, instead of the sequence-wide
top-capacity selection of training. With ``route_unit='block'`` one route per step serves both halves
(:func:`block_step`); with ``qkv_combine='sum'`` the picked modules' q, k, v are summed unweighted.

Decoding uses :class:`MoMCache`: one cache layer per attention core (every vanilla layer and every (chunk, step)),
each holding, besides keys and values, whether every cached position is a key there. Padded positions
(``attention_mask`` 0) are never keys, and position ids count from each row's first real token, so a left-padded
row computes what it would alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_mom import HALVES, MoMHFConfig

ModuleFn = Callable[[Tensor, int], Tensor]  # (x_RD, module) -> y_RO: one module applied to some tokens


# ---------------------------------------------------------------------------------------------- module pools
class StackedLinear(nn.Module):
    """N independent linear maps ``x @ weight[m] + bias[m]``; weights stored (N, in, out) like GPT-2's Conv1D."""

    def __init__(self, n: int, d_in: int, d_out: int, residual: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out))
        self.bias = nn.Parameter(torch.empty(n, d_out))
        self.residual = residual  # writes into the residual stream (GPT-2 scales its initialisation)

    def forward(self, x: Tensor, m: int) -> Tensor:
        return F.linear(x, self.weight[m].t(), self.bias[m])


class StackedLayerNorm(nn.Module):
    """N LayerNorms over the last dimension."""

    def __init__(self, n: int, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, d))
        self.bias = nn.Parameter(torch.empty(n, d))
        self.eps = eps

    def forward(self, x: Tensor, m: int) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight[m], self.bias[m], self.eps)


class PoolAttention(nn.Module):
    def __init__(self, n: int, d: int):
        super().__init__()
        self.c_attn = StackedLinear(n, d, 3 * d)
        self.c_proj = StackedLinear(n, d, d, residual=True)


class PoolMLP(nn.Module):
    def __init__(self, n: int, d: int, d_ff: int):
        super().__init__()
        self.c_fc = StackedLinear(n, d, d_ff)
        self.c_proj = StackedLinear(n, d_ff, d, residual=True)


class ModulePool(nn.Module):
    """``n_attn`` attention modules (ln_1, attn.c_attn, attn.c_proj) and ``n_ffn`` FFN modules (ln_2, mlp.c_fc,
    mlp.c_proj), the halves of GPT-2 blocks, stacked along a leading module axis."""

    def __init__(self, n_attn: int, n_ffn: int, cfg: MoMHFConfig):
        super().__init__()
        d = cfg.d_model
        self.ln_1 = StackedLayerNorm(n_attn, d, cfg.layer_norm_eps)
        self.attn = PoolAttention(n_attn, d)
        self.ln_2 = StackedLayerNorm(n_ffn, d, cfg.layer_norm_eps)
        self.mlp = PoolMLP(n_ffn, d, cfg.d_ff)

    def qkv(self, x_RD: Tensor, m: int) -> Tensor:
        return self.attn.c_attn(self.ln_1(x_RD, m), m)

    def proj(self, o_RD: Tensor, m: int) -> Tensor:
        return self.attn.c_proj(o_RD, m)

    def ffn(self, x_RD: Tensor, m: int) -> Tensor:
        return self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x_RD, m), m), approximate="tanh"), m)


# ---------------------------------------------------------------------------------------------- routing
class Router(nn.Module):
    """What both learned routers share (``router_norm``, ``router_step``): they read ``u = norm(x_t) + e_h``, with
    their own LayerNorm or RMSNorm and a learned step embedding e (H, D) where configured, and add the learned
    per-step bias b_h (H, N+1) to their logits where configured."""

    def __init__(self, cfg: MoMHFConfig, half: str, d: int, n_out: int):
        super().__init__()
        self.initial_bias = cfg.layer_map_bias(half)  # (H, N+1) nested lists: what the step bias starts at
        norms = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm, "centered": nn.RMSNorm}
        self.norm = norms[cfg.router_norm](d, eps=cfg.layer_norm_eps) if cfg.router_norm in norms else None
        # ``centered``: each step's running mean of the router input over tokens, subtracted before the RMSNorm
        self.register_buffer("center_HD", torch.zeros(cfg.steps, d) if cfg.router_norm == "centered" else None)
        self.center_momentum = cfg.router_center_momentum
        self.step_embed = nn.Parameter(torch.zeros(cfg.steps, d)) if cfg.router_step in ("embed", "both") else None
        self.step_bias = nn.Parameter(torch.zeros(cfg.steps, n_out)) if cfg.router_step in ("bias", "both") else None

    def router_input(self, x_TD: Tensor, step: int) -> Tensor:
        if self.center_HD is not None:
            # the running mean before this batch; in training it then moves router_center_momentum of the way to the
            # batch's mean
            mean_D = self.center_HD[step].clone()
            if self.training:
                with torch.no_grad():
                    self.center_HD[step].lerp_(x_TD.detach().mean(0).to(self.center_HD.dtype),
                                               self.center_momentum)
            x_TD = x_TD - mean_D.to(x_TD.dtype)
        if self.norm is not None:
            x_TD = self.norm(x_TD)
        return x_TD if self.step_embed is None else x_TD + self.step_embed[step]

    def step_logits(self, logits_TN: Tensor, step: int) -> Tensor:
        return logits_TN if self.step_bias is None else logits_TN + self.step_bias[step]


class GRURouter(Router):
    """The paper's router: ``h' = GRUCell(u_t, h)``, logits ``W_o h'``; h is carried over a chunk's steps."""

    def __init__(self, cfg: MoMHFConfig, half: str, d: int, hidden: int, n_out: int):
        super().__init__(cfg, half, d, n_out)
        self.gru = nn.GRUCell(d, hidden)
        self.out = nn.Linear(hidden, n_out)

    def forward(self, x_TD: Tensor, h_TR: Tensor | None, step: int) -> tuple[Tensor, Tensor]:
        u_TD = self.router_input(x_TD, step)
        if h_TR is None:
            h_TR = u_TD.new_zeros(u_TD.shape[0], self.gru.hidden_size)
        h_TR = self.gru(u_TD, h_TR.to(u_TD.dtype))
        return self.step_logits(self.out(h_TR), step), h_TR


class MLPRouter(Router):
    """The stateless baseline: ``W_2 ReLU(W_1 u_t)``."""

    def __init__(self, cfg: MoMHFConfig, half: str, d: int, hidden: int, n_out: int):
        super().__init__(cfg, half, d, n_out)
        self.fc = nn.Linear(d, hidden)
        self.out = nn.Linear(hidden, n_out)

    def forward(self, x_TD: Tensor, h: None, step: int) -> tuple[Tensor, None]:
        return self.step_logits(self.out(F.relu(self.fc(self.router_input(x_TD, step)))), step), None


class LinearRouter(Router):
    """Mixture-of-Depths' router: scores ``r = W x_t + b``, one row per module, used raw (no softmax)."""

    def __init__(self, cfg: MoMHFConfig, half: str, d: int, hidden: int, n_out: int):
        super().__init__(cfg, half, d, n_out)
        self.out = nn.Linear(d, n_out)

    def forward(self, x_TD: Tensor, h: None, step: int) -> tuple[Tensor, None]:
        return self.step_logits(self.out(self.router_input(x_TD, step)), step), None


ROUTERS = {"gru": GRURouter, "mlp": MLPRouter, "linear": LinearRouter}


@dataclass
class Route:
    """What one router decided for T tokens at one step: each token's K picks (module index; ``n`` is SKIP) and
    their weights (a SKIP pick adds nothing: its weight is never read)."""

    idx_TK: Tensor  # long
    w_TK: Tensor  # float
    n: int  # modules in the pool

    @property
    def picked_TK(self) -> Tensor:
        return self.idx_TK < self.n

    def key_valid(self) -> Tensor:
        """(T,) bool: the token took at least one real module, so it is a key at this step."""
        return self.picked_TK.any(-1)

    def qkv_weights(self) -> Tensor:
        """The pick weights renormalised over the real picks (they combine the modules' q, k, v); all-SKIP: 0."""
        w_TK = self.w_TK * self.picked_TK
        return w_TK / w_TK.sum(-1, keepdim=True).clamp_min(torch.finfo(w_TK.dtype).tiny)


def static_route(n_tokens: int, module: int, n: int, device: torch.device) -> Route:
    """Every token takes ``module`` with weight 1 (vanilla layers, ``router='fixed'``, a single candidate)."""
    return Route(torch.full((n_tokens, 1), module, dtype=torch.long, device=device),
                 torch.ones(n_tokens, 1, device=device), n)


def router_probs(logits_TN: Tensor, allowed_N: Tensor, temperature: float) -> Tensor:
    """``softmax(logits / τ)`` in float32 over the choices the step allows (modules + SKIP, the last)."""
    return (logits_TN.float() / temperature).masked_fill(~allowed_N, float("-inf")).softmax(-1)


def token_choice(probs_TN: Tensor, k: int, renormalise: bool) -> Route:
    """Each token's k most probable choices (ties to the lower index) weighted by their probabilities, renormalised
    to sum to 1 over all k picks if ``renormalise`` (SKIP included: with a SKIP pick the real picks' weights sum to
    less than 1)."""
    w_TK, idx_TK = probs_TN.sort(dim=-1, descending=True, stable=True)
    w_TK, idx_TK = w_TK[:, :k], idx_TK[:, :k]
    return Route(idx_TK, w_TK / w_TK.sum(-1, keepdim=True) if renormalise else w_TK, probs_TN.shape[-1] - 1)


def causal_expert_choice(probs_TN: Tensor, cand_c: Tensor, threshold_c: Tensor) -> Route:
    """Expert choice, decoded causally: candidate c takes a token iff its probability g_c ≥ ``threshold_c``, with
    weight g_c (K = the step's candidates; a candidate that does not take the token is a SKIP pick). For the linear
    router ``probs_TN`` holds its raw scores r (Mixture-of-Depths: r ranks and weights tokens)."""
    n = probs_TN.shape[-1] - 1
    scores_Tc = probs_TN[:, cand_c]
    return Route(torch.where(scores_Tc >= threshold_c, cand_c, n), scores_Tc, n)


def routed_sum(x_TD: Tensor, idx_TK: Tensor, w_TK: Tensor, n: int, fn: ModuleFn, out_dim: int) -> Tensor:
    """``y_t = Σ_k w_tk · fn(x_t, idx_tk)`` over the token's real picks (SKIP adds nothing)."""
    y_TO = x_TD.new_zeros(x_TD.shape[0], out_dim)
    for m in range(n):
        t_R, k_R = (idx_TK == m).nonzero(as_tuple=True)
        if t_R.numel():
            y_TO = y_TO.index_add(0, t_R, fn(x_TD[t_R], m) * w_TK[t_R, k_R].unsqueeze(-1).to(y_TO.dtype))
    return y_TO


# ---------------------------------------------------------------------------------------------- KV cache
class MoMCacheLayer(DynamicLayer):
    """The cache of one attention core: keys and values as a ``DynamicLayer``, plus ``valid_BS``, whether each
    cached position is a key here (its token took a real attention module at this core; padding is the
    attention mask's business)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.valid_BS: Tensor | None = None

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, key_valid_BT: Tensor,
               **kwargs: Any) -> tuple[Tensor, Tensor]:
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        self.valid_BS = key_valid_BT if self.valid_BS is None else torch.cat([self.valid_BS, key_valid_BT], 1)
        return keys, values

    def reset(self) -> None:
        super().reset()
        self.valid_BS = None

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if tokens_to_remove < 0 and self.valid_BS is not None:
            self.valid_BS = self.valid_BS[:, :tokens_to_remove]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        if self.valid_BS is not None:
            self.valid_BS = self.valid_BS.index_select(0, beam_idx.to(self.valid_BS.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.valid_BS is not None:
            self.valid_BS = self.valid_BS.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: Tensor) -> None:
        super().batch_select_indices(indices)
        if self.valid_BS is not None:
            self.valid_BS = self.valid_BS[indices]


class MoMCache(Cache):
    """One :class:`MoMCacheLayer` per attention core, in the order of ``config.attention_cores()``. ``generate``
    makes one by itself; pass one as ``cache`` to decode step by step."""

    def __init__(self, config: MoMHFConfig):
        super().__init__(layers=[MoMCacheLayer() for _ in config.attention_cores()])

    def update_keys(self, k_BHTd: Tensor, v_BHTd: Tensor, key_valid_BT: Tensor,
                    layer_idx: int) -> tuple[Tensor, Tensor, Tensor]:
        """Append T new positions to core ``layer_idx``; return all its keys, values and key validity."""
        k, v = self.update(k_BHTd, v_BHTd, layer_idx, key_valid_BT=key_valid_BT)
        return k, v, self.layers[layer_idx].valid_BS


@dataclass
class Visibility:
    """The attention rule every core of one forward shares: T new tokens, the last of S positions (cached + new)."""

    mask_BS: Tensor  # attention_mask over the cached and the new positions (0: padding)
    causal_TS: Tensor  # key position ≤ query position
    own_TS: Tensor  # key position = query position

    @classmethod
    def make(cls, mask_BS: Tensor, T: int) -> "Visibility":
        S = mask_BS.shape[1]
        q_T1 = torch.arange(S - T, S, device=mask_BS.device).unsqueeze(1)
        k_1S = torch.arange(S, device=mask_BS.device).unsqueeze(0)
        return cls(mask_BS, k_1S <= q_T1, k_1S == q_T1)

    def mask(self, valid_BS: Tensor) -> Tensor:
        """(B, 1, T, S): a query sees the earlier keys that are valid and no padding, and itself even when it is
        no key (every row of the softmax stays non-empty; only that token's own, unused output reads it)."""
        keys_B1S = (valid_BS & self.mask_BS).unsqueeze(1)
        return (self.causal_TS & (keys_B1S | self.own_TS)).unsqueeze(1)


def causal_attention(qkv_BT3D: Tensor, key_valid_BT: Tensor, n_head: int, cache: MoMCache, layer_idx: int,
                     vis: Visibility) -> Tensor:
    """Multi-head attention of the new tokens' combined q, k, v over all keys of core ``layer_idx``."""
    B, T, threeD = qkv_BT3D.shape
    D = threeD // 3
    q, k, v = qkv_BT3D.view(B, T, 3, n_head, D // n_head).permute(2, 0, 3, 1, 4)  # each (B, H, T, hd)
    k, v, valid_BS = cache.update_keys(k, v, key_valid_BT, layer_idx)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=vis.mask(valid_BS))
    return o.transpose(1, 2).reshape(B, T, D)


# ---------------------------------------------------------------------------------------------- blocks
Attend = Callable[[Tensor, Tensor], Tensor]  # (qkv_BT3D, key_valid_BT) -> o_BTD: one attention core


def attention_half(pool: ModulePool, x_TD: Tensor, route: Route, B: int, attend: Attend,
                   qkv_sum: bool = False) -> Tensor:
    """The attention half of a step: the residual update (T, D). ``qkv_sum``: the picked modules' q, k, v summed
    without weights (``qkv_combine='sum'``, the official code's default)."""
    D = x_TD.shape[-1]
    qkv_w_TK = route.picked_TK.to(route.w_TK.dtype) if qkv_sum else route.qkv_weights()
    qkv_TD = routed_sum(x_TD, route.idx_TK, qkv_w_TK, route.n, pool.qkv, 3 * D)
    o_BTD = attend(qkv_TD.view(B, -1, 3 * D), route.key_valid().view(B, -1))
    return routed_sum(o_BTD.reshape(-1, D), route.idx_TK, route.w_TK, route.n, pool.proj, D)


def ffn_half(pool: ModulePool, x_TD: Tensor, route: Route) -> Tensor:
    """The FFN half of a step: the residual update (T, D)."""
    return routed_sum(x_TD, route.idx_TK, route.w_TK, route.n, pool.ffn, x_TD.shape[-1])


def block_step(pool: ModulePool, x_TD: Tensor, route: Route, B: int, attend: Attend, qkv_sum: bool) -> Tensor:
    """A block-routed step (``route_unit='block'``, Mixture-of-Depths as published): both halves take the route's
    picks with weights scaled to sum to 1; the block's update u = a + f (attention a, then the FFN on x + a) is
    added times s, the sum of the token's real picks' weights: x + s·u (MoD: x + r·(block(x) − x))."""
    w_TK = route.w_TK * route.picked_TK
    s_T1 = w_TK.sum(-1, keepdim=True)
    none_T1 = s_T1 == 0
    unit = Route(route.idx_TK, torch.where(none_T1, 0.0, w_TK / torch.where(none_T1, 1.0, s_T1)), route.n)
    a_TD = attention_half(pool, x_TD, unit, B, attend, qkv_sum)
    u_TD = a_TD + ffn_half(pool, x_TD + a_TD, unit)
    return x_TD + s_T1.to(u_TD.dtype) * u_TD


def vanilla_layer(pool: ModulePool, x_TD: Tensor, B: int, attend: Attend) -> Tensor:
    """A GPT-2 block: the one-module pool on the static route."""
    route = static_route(x_TD.shape[0], 0, 1, x_TD.device)
    x_TD = x_TD + attention_half(pool, x_TD, route, B, attend)
    return x_TD + ffn_half(pool, x_TD, route)


class Chunk(nn.Module):
    """An assembled block: a module pool and its two routers, run for ``steps`` steps; then its anchor layer."""

    def __init__(self, cfg: MoMHFConfig):
        super().__init__()
        self.cfg = cfg
        self.pool = ModulePool(cfg.n_attn, cfg.n_ffn, cfg)
        for half in HALVES:
            n = cfg.n_modules(half)
            routed = cfg.has_router(half)
            router = ROUTERS[cfg.router](cfg, half, cfg.d_model, cfg.router_hidden, n + 1) if routed else None
            setattr(self, f"router_{half}", router)
            if cfg.selection == "expert" and routed:
                # per (step, candidate): the router probability a token needs for the candidate to take it
                self.register_buffer(f"threshold_{half}", torch.empty(cfg.steps, len(cfg.candidates(half, 0))))
        self.anchor = ModulePool(1, 1, cfg) if cfg.anchor else None

    def route(self, half: str, x_TD: Tensor, state: Tensor | None, step: int) -> tuple[Route, Tensor | None]:
        cfg, n = self.cfg, self.cfg.n_modules(half)
        router = getattr(self, f"router_{half}")
        if router is None:
            return static_route(x_TD.shape[0], cfg.static_module(half, step), n, x_TD.device), None
        logits_TN, state = router(x_TD, state, step)
        cand_c = torch.tensor(cfg.candidates(half, step), device=x_TD.device)
        allowed_N = torch.zeros(n + 1, dtype=torch.bool, device=x_TD.device)
        allowed_N[cand_c] = True
        allowed_N[n] = cfg.skip
        if cfg.router == "linear":  # raw scores, expert choice only
            return causal_expert_choice(logits_TN.float(), cand_c, getattr(self, f"threshold_{half}")[step]), state
        probs_TN = router_probs(logits_TN, allowed_N, cfg.router_temperature)
        if cfg.selection == "token":
            return token_choice(probs_TN, cfg.k(half), cfg.renormalises(half)), state
        return causal_expert_choice(probs_TN, cand_c, getattr(self, f"threshold_{half}")[step]), state

    def forward(self, x_TD: Tensor, B: int, attend_at: Callable[[int], Attend], first_core: int) -> Tensor:
        """``attend_at(i)``: attention core i; this chunk's steps are cores ``first_core`` + h, its anchor next."""
        state: dict[str, Tensor | None] = {half: None for half in HALVES}
        qkv_sum = self.cfg.qkv_combine == "sum"
        for h in range(self.cfg.steps):
            route, state["attn"] = self.route("attn", x_TD, state["attn"], h)
            if self.cfg.route_unit == "block":
                x_TD = block_step(self.pool, x_TD, route, B, attend_at(first_core + h), qkv_sum)
                continue
            x_TD = x_TD + attention_half(self.pool, x_TD, route, B, attend_at(first_core + h), qkv_sum)
            route, state["ffn"] = self.route("ffn", x_TD, state["ffn"], h)
            x_TD = x_TD + ffn_half(self.pool, x_TD, route)
        if self.anchor is not None:
            x_TD = vanilla_layer(self.anchor, x_TD, B, attend_at(first_core + self.cfg.steps))
        return x_TD


# ---------------------------------------------------------------------------------------------- the model
class MoMPreTrainedModel(PreTrainedModel):
    """Config class, weight initialisation and the input-embedding name, for transformers."""

    config_class = MoMHFConfig
    _no_split_modules = ["ModulePool", "Chunk"]
    _input_embed_layer = "wte"

    def _init_weights(self, module: nn.Module) -> None:
        """mom's initialisation (GPT-2's): N(0, init_std), residual projections scaled by 1/sqrt(2·depth);
        expert-choice thresholds start at a uniform router's probability; routers' step embeddings and running
        means at zero and their step biases as ``router_init`` says."""
        cfg, std = self.config, self.config.init_std
        if isinstance(module, StackedLinear):
            init.normal_(module.weight, 0.0, std / math.sqrt(2 * cfg.depth) if module.residual else std)
            init.zeros_(module.bias)
        elif isinstance(module, (StackedLayerNorm, nn.LayerNorm, nn.RMSNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, 0.0, std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, Router):  # (its GRU / linears / norm are modules of their own)
            if module.center_HD is not None:
                init.zeros_(module.center_HD)
            if module.step_embed is not None:
                init.zeros_(module.step_embed)
            if module.step_bias is not None:
                bias = module.step_bias
                init.copy_(bias, torch.tensor(module.initial_bias, dtype=bias.dtype, device=bias.device))
        elif isinstance(module, nn.GRUCell):  # torch's own GRU initialisation, as mom keeps it
            bound = 1.0 / math.sqrt(module.hidden_size)
            for p in module.parameters():
                init.uniform_(p, -bound, bound)
        elif isinstance(module, Chunk):
            for half in HALVES:
                threshold = getattr(module, f"threshold_{half}", None)
                if threshold is not None:
                    n_choices = threshold.shape[1] + int(cfg.skip)
                    init.constant_(threshold, 0.0 if cfg.router == "linear" else 1.0 / n_choices)


class MoMForCausalLM(MoMPreTrainedModel, GenerationMixin):
    """A mom model as a causal LM: ``bottom`` vanilla layers, ``chunks`` assembled blocks, ``top`` vanilla layers,
    ln_f and a head tied to ``wte``."""

    _tied_weights_keys = {"lm_head.weight": "wte.weight"}

    def __init__(self, config: MoMHFConfig):
        super().__init__(config)
        d = config.d_model
        self.wte = nn.Embedding(config.vocab_size, d)
        self.wpe = nn.Embedding(config.n_ctx, d)
        self.bottom = nn.ModuleList(ModulePool(1, 1, config) for _ in range(config.bottom))
        self.chunks = nn.ModuleList(Chunk(config) for _ in range(config.chunks))
        self.top = nn.ModuleList(ModulePool(1, 1, config) for _ in range(config.top))
        self.ln_f = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids: torch.LongTensor, attention_mask: Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: MoMCache | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int | Tensor = 0, return_dict: bool | None = None,
                **kwargs: Any) -> CausalLMOutputWithPast | tuple:
        """Logits of ``input_ids`` (B, T), appended after the tokens ``cache`` holds.

        ``attention_mask`` (B, cached + T): 0 marks padding, which is never a key. ``position_ids`` (B, T): by
        default counted from each row's first real token. ``logits_to_keep``: only the last that many positions
        (an int; 0 keeps all) or those indices (a tensor) get logits. ``labels``: next-token loss (shifted inside)."""
        unsupported = sorted(k for k, v in kwargs.items() if v is not None and v is not False)
        if unsupported:
            raise ValueError(f"MoMForCausalLM does not implement the argument(s) {', '.join(unsupported)}")
        cfg = self.config
        use_cache = cfg.use_cache if use_cache is None else use_cache
        if cache is None:
            cache = MoMCache(cfg)  # also without use_cache: attention always reads the keys from a cache
        elif not isinstance(cache, MoMCache):
            raise TypeError(f"cache must be a MoMCache (it records which positions are keys at every attention "
                            f"core), got {type(cache).__name__}")
        B, T = input_ids.shape
        S = cache.get_seq_length() + T
        mask_BS = torch.ones(B, S, dtype=torch.bool, device=input_ids.device) if attention_mask is None \
            else attention_mask.bool()
        if mask_BS.shape != (B, S):
            raise ValueError(f"attention_mask must cover the cached and the new tokens: shape {(B, S)}, got "
                             f"{tuple(mask_BS.shape)}")
        if position_ids is None:
            position_ids = (mask_BS.long().cumsum(-1) - 1).clamp_min(0)[:, S - T:]
        if int(position_ids.max()) >= cfg.n_ctx:
            raise ValueError(f"position {int(position_ids.max())} is past the context length n_ctx={cfg.n_ctx}")
        vis = Visibility.make(mask_BS, T)

        def attend_at(core: int) -> Attend:
            return lambda qkv_BT3D, valid_BT: causal_attention(qkv_BT3D, valid_BT, cfg.n_head, cache, core, vis)

        x_TD = (self.wte(input_ids) + self.wpe(position_ids)).view(B * T, -1)
        core = 0
        for pool in self.bottom:
            x_TD = vanilla_layer(pool, x_TD, B, attend_at(core))
            core += 1
        for chunk in self.chunks:
            x_TD = chunk(x_TD, B, attend_at, core)
            core += cfg.steps + int(cfg.anchor)
        for pool in self.top:
            x_TD = vanilla_layer(pool, x_TD, B, attend_at(core))
            core += 1
        x_BTD = x_TD.view(B, T, -1)
        if isinstance(logits_to_keep, int):
            x_BTD = x_BTD[:, -logits_to_keep:] if logits_to_keep else x_BTD
        else:
            x_BTD = x_BTD[:, logits_to_keep]
        logits = self.lm_head(self.ln_f(x_BTD))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=cfg.vocab_size)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache if use_cache else None)
        return out if (cfg.return_dict if return_dict is None else return_dict) else out.to_tuple()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args: Any, **kwargs: Any):
        """``generate`` would make a ``DynamicCache``, which has no room for key validity: a MoM decodes with its
        :class:`MoMCache`. A cache the caller passes goes through the usual checks."""
        if model_kwargs.get("cache") is not None or not generation_config.use_cache:
            return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        if generation_config.cache_implementation not in (None, "dynamic"):
            raise ValueError(f"cache_implementation={generation_config.cache_implementation!r}: a MoM decodes with "
                             "its own MoMCache only (leave cache_implementation unset)")
        model_kwargs["cache"] = MoMCache(self.config)
