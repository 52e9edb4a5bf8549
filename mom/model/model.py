"""The Mixture-of-Modules model.

How a batch flows (B sequences of T tokens, width D):

    idx_BT → wte + wpe → x_BTD
      → bottom vanilla layers
      → for each chunk: for h in 0..H-1:
            attention half: R_A routes x_t → picked modules' LN+QKV combined per token → one causal attention
                            (all-SKIP tokens masked out as keys) → picked modules' c_proj, router-weighted → +x
            FFN half:       R_F routes x_t → Σ_k w_k FFN_k(LN_k(x_t)) → +x
        then the chunk's anchor layer (vanilla) if any
      → top vanilla layers → ln_f → logits = x · wteᵀ (tied head)

Vanilla layers are module pools of one module each, run on the static route "everyone takes module 0 with
weight 1", so vanilla GPT-2 and every MoM special case run through the same code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mom.config.model import HALVES, MoMConfig, resolve_config
from mom.errors import CheckpointError, ConfigError, MomError
from mom.fileio import load_safetensors, save_safetensors, verify_manifest, write_manifest
from mom.model.attention import causal_attention
from mom.model.dispatch import make_dispatcher
from mom.model.kv_cache import anchor_slot, layer_slot, step_slot
from mom.model.modules import ModulePool, ModuleSlices
from mom.model.routers import (
    ROUTERS,
    Route,
    balance_loss,
    balance_stats,
    candidate_mask,
    official_balance,
    router_options,
    score_cutoff,
    select,
    select_scores,
    static_route,
    z_loss,
)

# The ``format`` a mom model file names in its safetensors metadata.
MODEL_FORMAT = "mom"


@dataclass
class RouteRecord:
    """What one router decided at one step, for analysis (``return_routes=True``)."""

    chunk: int
    step: int
    half: str  # "attn" | "ffn"
    idx_BTK: Tensor  # module per pick; n_modules means SKIP
    w_BTK: Tensor  # weight per pick
    probs_BTN: Tensor | None  # router distribution over modules + SKIP (None for static routes)
    n_modules: int


@dataclass
class MoMOutput:
    logits: Tensor  # (B, T, V); (1, N, V) with ``rows``
    loss: Tensor | None = None  # language-model cross entropy (when targets are given)
    hidden: Tensor | None = None  # final hidden states after ln_f, like logits (``return_hidden`` or ``rows``)
    aux_loss: Tensor | None = None  # balance_coef·balance + z_coef·z (add to ``loss`` when training)
    balance_loss: Tensor | None = None  # mean Switch balance term over routed (chunk, step, half); 1 = uniform
    z_loss: Tensor | None = None  # mean router z-loss
    routes: list[RouteRecord] | None = None


class _AuxAccumulator:
    """Collects balance and z-loss terms over the routed steps of a forward pass."""

    def __init__(self) -> None:
        self.balance: list[Tensor] = []
        self.z: list[Tensor] = []
        self.official_probs: list[Tensor] = []  # balance='official': every routed half's probabilities, pooled


def attention_half(mods: ModuleSlices, x_TD: Tensor, route: Route, B: int, T: int, dispatcher, mask_keys: bool,
                   slot=None, pack_keys: bool = False, qkv_sum: bool = False) -> Tensor:
    """The attention half of a step: returns the residual update (T, D). ``mods``: the pool's single forms for
    this forward pass (``mods.pool`` has the grouped ones). ``slot``: KV-cache slot when decoding. ``pack_keys``:
    hide all-SKIP keys by packing (``key_mask='pack'``, see :func:`mom.model.attention.causal_attention`). ``qkv_sum``:
    the picked modules' q, k, v summed unweighted (``qkv_combine='sum'``, the official code's default) instead of
    combined with the router weights renormalised over the real picks."""
    D, pool = x_TD.shape[-1], mods.pool
    eager = pool.eager_attention
    if route.static_module is not None:
        m = route.static_module
        o_BTD = causal_attention(mods.qkv(x_TD, m).view(B, T, 3 * D), pool.n_head, slot=slot, eager=eager)
        return mods.proj(o_BTD.view(B * T, D), m)
    plan = dispatcher.plan(route.idx_TK, pool.n_attn)
    qkv_w_TK = route.picked_TK.to(route.w_TK.dtype) if qkv_sum else route.module_weights()
    qkv_TD = dispatcher.run(plan, x_TD, qkv_w_TK, mods.qkv, pool.qkv_grouped, 3 * D)
    key_valid = route.key_valid().view(B, T) if mask_keys else None
    o_BTD = causal_attention(qkv_TD.view(B, T, 3 * D), pool.n_head, key_valid, slot=slot, pack=pack_keys, eager=eager)
    return dispatcher.run(plan, o_BTD.view(B * T, D), route.w_TK, mods.proj, pool.proj_grouped, D)


def ffn_half(mods: ModuleSlices, x_TD: Tensor, route: Route, dispatcher) -> Tensor:
    """The FFN half of a step: returns the residual update (T, D)."""
    if route.static_module is not None:
        return mods.ffn(x_TD, route.static_module)
    plan = dispatcher.plan(route.idx_TK, mods.pool.n_ffn)
    return dispatcher.run(plan, x_TD, route.w_TK, mods.ffn, mods.pool.ffn_grouped, x_TD.shape[-1])


def block_step(mods: ModuleSlices, x_TD: Tensor, route: Route, B: int, T: int, dispatcher, mask_keys: bool,
               slot=None, pack_keys: bool = False, qkv_sum: bool = False) -> Tensor:
    """One block-routed step (``route_unit='block'``; Mixture-of-Depths as published, Raposo et al. 2024): both
    halves take ``route``'s picks; the block's update u = a + f (attention a, then the FFN on x + a) is computed
    with the picks' weights scaled to sum to 1, and the token gets x + s·u, s the sum of its real picks' weights.
    MoD has one pick weighing the router score r: x + r·(block(x) − x). A token that picked nothing is unchanged
    and, at this step, no key. Returns the new residual stream (T, D)."""
    w_TK = route.w_TK * route.picked_TK
    s_T1 = w_TK.sum(-1, keepdim=True)
    none_T1 = s_T1 == 0
    unit = Route(idx_TK=route.idx_TK, w_TK=torch.where(none_T1, 0.0, w_TK / torch.where(none_T1, 1.0, s_T1)),
                 n=route.n)
    a_TD = attention_half(mods, x_TD, unit, B, T, dispatcher, mask_keys, slot, pack_keys, qkv_sum)
    f_TD = ffn_half(mods, x_TD + a_TD, unit, dispatcher)
    u_TD = a_TD + f_TD
    return x_TD + s_T1.to(u_TD.dtype) * u_TD


def cache_slot(cache, name: str):
    """The KV-cache slot of the attention core ``name`` (see :func:`mom.model.kv_cache.slot_names`); None without a
    cache."""
    return None if cache is None else cache.slot(name)


def vanilla_layer(pool: ModulePool, x_TD: Tensor, B: int, T: int, slot=None) -> Tensor:
    """A GPT-2 block: the one-module pool on the static route."""
    route, mods = static_route(x_TD.shape[0], 0, 1, x_TD.device), pool.slices()
    x_TD = x_TD + attention_half(mods, x_TD, route, B, T, None, mask_keys=False, slot=slot)
    return x_TD + ffn_half(mods, x_TD, route, None)


def vanilla_layers(pools: nn.ModuleList, where: str, x_BTD: Tensor, cache=None) -> Tensor:
    """The ``bottom`` or ``top`` stack of GPT-2 blocks."""
    B, T, D = x_BTD.shape
    x_TD = x_BTD.reshape(B * T, D)
    for i, pool in enumerate(pools):
        x_TD = vanilla_layer(pool, x_TD, B, T, cache_slot(cache, layer_slot(where, i)))
    return x_TD.view(B, T, D)


class Chunk(nn.Module):
    """An assembled block (module pool + routers, run for H steps) and its optional anchor layer."""

    def __init__(self, cfg: MoMConfig, index: int):
        super().__init__()
        self.cfg, self.index = cfg, index
        d = cfg.d_model
        self.pool = ModulePool(cfg.n_attn, cfg.n_ffn, d, cfg.d_ff, cfg.n_head, cfg.layer_norm_eps, cfg.attention)
        for half in HALVES:
            n = getattr(cfg, f"n_{half}")
            router = ROUTERS[cfg.router](d, cfg.router_hidden, n + 1, cfg.init_std,
                                         **router_options(cfg, half)) if cfg.has_router(half) else None
            setattr(self, f"router_{half}", router)
            self.register_buffer(f"allowed_{half}", candidate_mask(cfg, half), persistent=False)
            cands = torch.tensor([cfg.candidates(half, h) for h in range(cfg.steps)], dtype=torch.long)
            self.register_buffer(f"cand_{half}", cands, persistent=False)
            if cfg.selection == "expert" and router is not None:
                # Causal decode rule for expert choice: per (step, candidate) running estimate of the capacity
                # cut-off in router probability (raw score for the linear router), updated in training, saved with
                # the model.
                start = 0.0 if cfg.router == "linear" else 1.0 / cfg.n_choices(half)
                init = torch.full((cfg.steps, cands.shape[1]), start)
                self.register_buffer(f"threshold_{half}", init)
        self.anchor = (ModulePool(1, 1, d, cfg.d_ff, cfg.n_head, cfg.layer_norm_eps, cfg.attention) if cfg.anchor
                       else None)

    def route(self, half: str, x_TD: Tensor, state: Tensor | None, step: int, B: int,
              causal: bool = False) -> tuple[Route, Tensor | None]:
        cfg = self.cfg
        n = getattr(cfg, f"n_{half}")
        router = getattr(self, f"router_{half}")
        if router is None:
            m = step % n if cfg.router == "fixed" else cfg.candidates(half, step)[0]
            return static_route(x_TD.shape[0], m, n, x_TD.device), None
        logits, state = router(x_TD, state, step)
        cand = getattr(self, f"cand_{half}")[step]
        expert = cfg.selection == "expert"
        threshold = getattr(self, f"threshold_{half}")[step] if expert and causal else None
        allowed = getattr(self, f"allowed_{half}")[step]
        if cfg.router == "linear":  # raw scores (Mixture-of-Depths); validate() ensures expert choice
            route = select_scores(logits, allowed, cand, cfg.capacity, B, threshold)
            scores_TN = logits.float()
        else:
            route = select(logits, allowed, cand, cfg, half, B, threshold)
            scores_TN = route.probs_TN
        if expert and self.training and not causal:
            with torch.no_grad():
                buf = getattr(self, f"threshold_{half}")
                buf[step].lerp_(score_cutoff(scores_TN, cand, cfg.capacity, B).to(buf.dtype), 0.01)
        return route, state

    def forward(self, x_BTD: Tensor, dispatcher, aux: _AuxAccumulator, records: list | None, cache=None,
                causal: bool = False) -> Tensor:
        cfg = self.cfg
        B, T, D = x_BTD.shape
        x_TD = x_BTD.reshape(B * T, D)
        mask_keys = cfg.skip  # without SKIP every token picks a real attention module, hence is a key
        state = {"attn": None, "ffn": None}
        pooled: dict[str, list] = {"attn": [], "ffn": []}
        mods = self.pool.slices()  # one set of per-module slices for all H steps
        attn_kw = dict(pack_keys=cfg.key_mask == "pack", qkv_sum=cfg.qkv_combine == "sum")
        for h in range(cfg.steps):
            if cfg.route_unit == "block":  # one route for the whole block, taken by both halves
                route, state["attn"] = self.route("attn", x_TD, state["attn"], h, B, causal)
                slot = cache_slot(cache, step_slot(self.index, h))
                x_TD = block_step(mods, x_TD, route, B, T, dispatcher, mask_keys, slot, **attn_kw)
                self._after_route(route, "attn", h, aux, pooled, records, cache is None, B, T)
                if records is not None:
                    records.append(self._record(route, "ffn", h, B, T))
                continue
            for half in HALVES:
                route, state[half] = self.route(half, x_TD, state[half], h, B, causal)
                if half == "attn":
                    slot = cache_slot(cache, step_slot(self.index, h))
                    x_TD = x_TD + attention_half(mods, x_TD, route, B, T, dispatcher, mask_keys, slot, **attn_kw)
                else:
                    x_TD = x_TD + ffn_half(mods, x_TD, route, dispatcher)
                self._after_route(route, half, h, aux, pooled, records, cache is None, B, T)
        if cfg.balance_scope == "pooled":
            for stats in pooled.values():
                if stats:
                    counts, probsum, active = (torch.stack(s).sum(0) for s in zip(*stats))
                    aux.balance.append(balance_loss(counts, probsum, active.bool()))
        if self.anchor is not None:
            x_TD = vanilla_layer(self.anchor, x_TD, B, T, cache_slot(cache, anchor_slot(self.index)))
        return x_TD.view(B, T, D)

    def _record(self, route: Route, half: str, step: int, B: int, T: int) -> RouteRecord:
        return RouteRecord(self.index, step, half, route.idx_TK.view(B, T, -1), route.w_TK.view(B, T, -1),
                           None if route.probs_TN is None else route.probs_TN.view(B, T, -1), route.n)

    def _after_route(self, route: Route, half: str, step: int, aux: _AuxAccumulator, pooled: dict,
                     records: list | None, losses: bool, B: int, T: int) -> None:
        """Collect a routed half's aux-loss terms (``losses``: not while decoding) and its record."""
        if route.probs_TN is not None and losses:
            self._collect_aux(route, half, step, aux, pooled)
        if records is not None:
            records.append(self._record(route, half, step, B, T))

    def _collect_aux(self, route: Route, half: str, step: int, aux: _AuxAccumulator, pooled: dict) -> None:
        cfg = self.cfg
        aux.z.append(z_loss(route))
        # Expert choice is balanced by construction; a single active choice has nothing to balance.
        allowed = getattr(self, f"allowed_{half}")[step]
        if cfg.selection != "token":
            return
        if cfg.balance == "official":  # pooled over the whole model in MoM.forward
            aux.official_probs.append(route.probs_TN)
            return
        counts, probsum, active = balance_stats(route, allowed, cfg.balance_skip == "include")
        if cfg.balance_scope == "pooled":
            pooled[half].append((counts, probsum, active.float()))
        elif cfg.n_candidates(half) + int(cfg.skip and cfg.balance_skip == "include") > 1:
            aux.balance.append(balance_loss(counts, probsum, active))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.pool.reset_parameters(self.cfg.init_std, self.cfg.depth)
        if self.anchor is not None:
            self.anchor.reset_parameters(self.cfg.init_std, self.cfg.depth)


class MoM(nn.Module):
    """A Mixture-of-Modules language model (GPT-2 when ``config.chunks == 0``)."""

    def __init__(self, config: MoMConfig):
        super().__init__()
        if not isinstance(config, MoMConfig):
            raise ConfigError(f"MoM expects a MoMConfig, got {type(config).__name__}")
        self.config = cfg = config
        d = cfg.d_model

        def layer() -> ModulePool:
            return ModulePool(1, 1, d, cfg.d_ff, cfg.n_head, cfg.layer_norm_eps, cfg.attention)

        self.wte = nn.Embedding(cfg.vocab_size, d)
        self.wpe = nn.Embedding(cfg.n_ctx, d)
        self.bottom = nn.ModuleList(layer() for _ in range(cfg.bottom))
        self.chunks = nn.ModuleList(Chunk(cfg, c) for c in range(cfg.chunks))
        self.top = nn.ModuleList(layer() for _ in range(cfg.top))
        self.ln_f = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.dispatcher = make_dispatcher(cfg.dispatch)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        cfg = self.config
        nn.init.normal_(self.wte.weight, 0.0, cfg.init_std)
        nn.init.normal_(self.wpe.weight, 0.0, cfg.init_std)
        for pool in (*self.bottom, *self.top):
            pool.reset_parameters(cfg.init_std, cfg.depth)
        for chunk in self.chunks:
            chunk.reset_parameters()
        self.ln_f.reset_parameters()

    # ------------------------------------------------------------------ forward
    def forward(self, idx_BT: Tensor, targets_BT: Tensor | None = None, *, return_routes: bool = False,
                cache=None, causal_routing: bool = False, rows: tuple[Tensor, Tensor] | None = None,
                return_hidden: bool = False) -> MoMOutput:
        """Run the model.

        ``cache``: a :class:`mom.model.kv_cache.KVCache`; the tokens are appended after those already cached (their
        positions and padding come from the cache). ``causal_routing``: use the causal decode rule for expert
        choice (always on with a cache); token-choice routing is causal already. ``rows = (b_N, t_N)``: apply
        ln_f and the LM head only at those N (sequence, position) pairs — logits and hidden are (1, N, ·) — for
        heads that read one position per sequence (classification, scoring): the (B, T, V) head matmul dominates
        a small model's forward. ``return_hidden``: also return the final hidden states (after ln_f).
        """
        cfg = self.config
        # Shape and dtype only: checking the ids' range would be a host sync per step (an id past the vocabulary
        # fails in the embedding lookup).
        if not isinstance(idx_BT, Tensor) or idx_BT.dim() != 2 or idx_BT.is_floating_point() or idx_BT.numel() == 0:
            what = (f"a {type(idx_BT).__name__}" if not isinstance(idx_BT, Tensor)
                    else f"shape {tuple(idx_BT.shape)}, dtype {idx_BT.dtype}")
            raise ValueError(f"idx_BT must be a non-empty (batch, time) tensor of integer token ids, got {what}")
        B, T = idx_BT.shape
        if cache is None:
            if T > cfg.n_ctx:
                raise ValueError(f"sequence length {T} exceeds the context length n_ctx={cfg.n_ctx}")
            x_BTD = self.wte(idx_BT) + self.wpe(torch.arange(T, device=idx_BT.device))
        else:
            x_BTD = self.wte(idx_BT) + self.wpe(cache.positions(T))
            causal_routing = True
        aux = _AuxAccumulator()
        records: list[RouteRecord] | None = [] if return_routes else None
        x_BTD = vanilla_layers(self.bottom, "bottom", x_BTD, cache)
        for chunk in self.chunks:
            x_BTD = chunk(x_BTD, self.dispatcher, aux, records, cache, causal_routing)
        x_BTD = vanilla_layers(self.top, "top", x_BTD, cache)
        if aux.official_probs:
            aux.balance.append(official_balance(aux.official_probs))
        if cache is not None:
            cache.advance(T)
        if rows is not None:
            if targets_BT is not None:
                raise ValueError("rows and targets exclude each other (the loss needs every position)")
            x_BTD = x_BTD[rows[0], rows[1]].unsqueeze(0)  # (1, N, D)
        x_BTD = self.ln_f(x_BTD)
        logits_BTV = F.linear(x_BTD, self.wte.weight)

        zero = logits_BTV.new_zeros((), dtype=torch.float32)
        bal = torch.stack(aux.balance).mean() if aux.balance else zero
        z = torch.stack(aux.z).mean() if aux.z else zero
        out = MoMOutput(logits=logits_BTV, aux_loss=cfg.balance_coef * bal + cfg.z_coef * z,
                        balance_loss=bal, z_loss=z, routes=records,
                        hidden=x_BTD if return_hidden or rows is not None else None)
        if targets_BT is not None:
            out.loss = F.cross_entropy(logits_BTV.float().view(B * T, -1), targets_BT.reshape(-1), ignore_index=-100)
        return out

    # ------------------------------------------------------------------ bookkeeping
    def num_params(self, include_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if include_embeddings else n - self.wte.weight.numel() - self.wpe.weight.numel()

    # Set by mom.convert.gpt2 when it is imported (``import mom`` does): the model core does not know the converter.
    _gpt2_importer: ClassVar[Callable[..., "MoM"] | None] = None

    @classmethod
    def from_gpt2(cls, directory: str | os.PathLike, config: MoMConfig | str | None = None) -> "MoM":
        """Load an HF GPT-2 directory, vanilla or decomposed into ``config`` (a MoMConfig, preset or JSON path);
        see :func:`mom.convert.gpt2.from_gpt2`."""
        if cls._gpt2_importer is None:
            raise MomError("MoM.from_gpt2 is provided by mom.convert.gpt2: import mom (or that module) first")
        return cls._gpt2_importer(directory, resolve_config(config) if isinstance(config, str) else config)

    # ------------------------------------------------------------------ our checkpoint format
    def save_pretrained(self, directory: str | os.PathLike, *, manifest: bool = True,
                        state_dict: dict[str, Tensor] | None = None, tokenizer=None) -> list[str]:
        """Write ``model.safetensors`` + ``config.json`` (each atomically: temporary file, fsync, rename), then
        ``manifest.json`` with their sizes and sha256 (``manifest=False``: the caller writes a larger one).
        ``state_dict``: the tensors to write instead of this module's own (e.g. gathered from FSDP shards).
        ``tokenizer``: the model's :class:`mom.data.tokenizer.Tokenizer`, written beside it (a corpus BPE as
        ``tokenizer.json``, listed in the manifest; GPT-2, the default, is a directory without one) so that the
        tokenizer travels with the model. Returns the names of the files written."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise CheckpointError(f"{directory}: exists and is not a directory")
        meta = {"format": MODEL_FORMAT, "config": json.dumps(self.config.to_dict())}
        save_safetensors(self.state_dict() if state_dict is None else state_dict, directory / "model.safetensors", meta)
        self.config.save(directory / "config.json")
        names = ["model.safetensors", "config.json", *(tokenizer.save(directory) if tokenizer is not None else [])]
        if manifest:
            write_manifest(directory, names)
        return names

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                        **overrides) -> "MoM":
        """Load a model saved by :meth:`save_pretrained`. ``overrides`` may change non-shape fields
        (e.g. ``dispatch="loop"``)."""
        directory = Path(directory)
        if directory.is_file():
            raise CheckpointError(f"{directory}: is a file; give the model directory that holds it")
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: model directory not found")
        if torch.device(map_location).type == "cuda" and not torch.cuda.is_available():
            raise MomError(f"map_location={map_location!r}: no CUDA device is available")
        cfg_path, weights = directory / "config.json", directory / "model.safetensors"
        if not cfg_path.is_file():
            raise CheckpointError(f"{cfg_path}: missing (is {directory} a mom model directory?)")
        verify_manifest(directory)  # directories written before manifests existed load unverified
        cfg = MoMConfig.load(cfg_path)
        if overrides:
            cfg = cfg.replace(**overrides)
        model = cls(cfg)
        model.load_state_dict(load_safetensors(weights, device=map_location, expect_format=MODEL_FORMAT),
                              strict=True, source=weights)
        return model.to(map_location)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False, *, source=None):
        """Like ``nn.Module.load_state_dict``, but a mismatch raises :class:`CheckpointError` naming the tensors."""
        own = self.state_dict()
        where = f"{source}: " if source else ""
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[0]}")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
            raise CheckpointError(f"{where}does not match the model config: " + "; ".join(parts))
        for k, v in state_dict.items():
            if k in own and tuple(own[k].shape) != tuple(v.shape):
                raise CheckpointError(f"{where}tensor {k} has shape {tuple(v.shape)}, the config expects "
                                      f"{tuple(own[k].shape)}")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
