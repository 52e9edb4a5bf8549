"""GPT-2 import, export and decomposition into modules (the paper's phase-2 initialisation).

Layer map (from a vanilla L-layer GPT-2 into a MoM layout, see :meth:`MoMConfig.gpt2_layers`):
    layers 0 … bottom-1                     → bottom vanilla layers, 1:1
    per chunk, the next L_c layers          → that chunk's pools: L_c = ``layers_per_chunk`` (``chunk_layers``, or
                                              max(N_A, N_F)); a pool of N modules takes module i from chunk layer
                                              ⌊i·L_c/N⌋ (attention half → attention pool, FFN half → FFN pool), so a
                                              pool of L_c modules takes every layer and a smaller one layers evenly
                                              spread from the first; halves no module takes are dropped
    the next layer (if anchor)              → the chunk's anchor layer
    the remaining layers                    → top vanilla layers

Smaller pools than layers (``chunk_layers`` > max(N_A, N_F), :func:`smaller_pools`) are the official code's pruning
ablation: phase 2 trains a MoM whose pools hold fewer modules than the GPT-2 had layers (e.g. 50% of the attention
modules, 75% of the FFN modules), where ``mom prune`` removes modules from a trained MoM.


Routers are not part of GPT-2 and keep the initialisation their config gives them: random (``router_init='random'``,
the paper's), or, with ``router_init='layer_map'``, a per-step logit bias that makes step h prefer the module(s) this
map gave it (:meth:`MoMConfig.layer_map_choices`), so that phase 2 starts as the decomposed phase-1 network (on the
demo's tiny model: +0.003 nats at step 0 instead of +0.11 with random routers; docs/log.md). With no assembled block
the result is the GPT-2 itself; with ``router='fixed'`` and N = H it computes exactly the same function (tested).

HF directories are read from ``model.safetensors`` or ``pytorch_model.bin`` (``torch.load(weights_only=True)``,
never a full unpickle). No network access: a directory is a directory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor

from mom.config.model import HALVES, MoMConfig
from mom.errors import CheckpointError, ConfigError
from mom.fileio import load_safetensors, read_json, save_safetensors, write_json_atomic
from mom.model.model import MoM
from mom.model.modules import HALF_TENSORS
from mom.model.routers import layer_map_bias

# A GPT-2 layer's tensor names: its attention half's, then its FFN half's.
LAYER_KEYS = HALF_TENSORS["attn"] + HALF_TENSORS["ffn"]


def pool_sources(n_modules: int, n_layers: int) -> list[int]:
    """The chunk layer each of a pool's ``n_modules`` modules is decomposed from: module i ← layer ⌊i·L/N⌋ (every
    layer when N = L; evenly spread from the first one when the pool is smaller)."""
    return [i * n_layers // n_modules for i in range(n_modules)]


def layer_map(cfg: MoMConfig) -> list[tuple[str, int, str]]:
    """``(our pool prefix, module index, half)`` for each GPT-2 layer half, in GPT-2 layer order.

    Element 2l and 2l+1 of the result describe layer l's attention and FFN halves; a half that no pool module
    takes (see :func:`pool_sources`) is mapped to ``("", -1, half)`` (dropped)."""
    out: list[tuple[str, int, str]] = []

    def vanilla(prefix: str) -> None:
        out.extend([(prefix, 0, "attn"), (prefix, 0, "ffn")])

    L_c = cfg.layers_per_chunk
    module_of = {half: {layer: m for m, layer in enumerate(pool_sources(getattr(cfg, f"n_{half}"), L_c))}
                 for half in ("attn", "ffn")}
    for i in range(cfg.bottom):
        vanilla(f"bottom.{i}.")
    for c in range(cfg.chunks):
        for layer in range(L_c):
            for half in ("attn", "ffn"):
                m = module_of[half].get(layer)
                out.append((f"chunks.{c}.pool.", m, half) if m is not None else ("", -1, half))
        if cfg.anchor:
            vanilla(f"chunks.{c}.anchor.")
    for i in range(cfg.top):
        vanilla(f"top.{i}.")
    return out


def decompose(layers: list[dict[str, Tensor]], embeddings: dict[str, Tensor], model) -> None:
    """Copy GPT-2 layers (each a dict keyed by :data:`LAYER_KEYS`) and embeddings into ``model`` per the layer map.

    ``embeddings`` holds ``wte.weight``, ``wpe.weight``, ``ln_f.weight``, ``ln_f.bias``. Routers are untouched: they
    keep the initialisation ``router_init`` gave them when ``model`` was built, except that ``router_init='auto'``
    sets their step biases as ``layer_map`` would (:func:`router_start` says which)."""
    cfg = model.config
    if len(layers) != cfg.gpt2_layers:
        raise CheckpointError(
            f"the layout '{cfg.name}' decomposes {cfg.gpt2_layers} GPT-2 layers "
            f"(bottom {cfg.bottom} + chunks {cfg.chunks}×({cfg.layers_per_chunk} layers"
            f"{' + anchor' if cfg.anchor else ''}) + top {cfg.top}), but the source model has {len(layers)}")
    state = model.state_dict()
    updates: dict[str, Tensor] = {}
    for k, v in embeddings.items():
        _put(updates, state, k, None, v)
    for i, (prefix, m, half) in enumerate(layer_map(cfg)):
        if m < 0:
            continue
        for key in HALF_TENSORS[half]:
            _put(updates, state, prefix + key, m, layers[i // 2][key])
    if cfg.router_init == "auto":  # phase 2 starts as the decomposed network (router_init='auto')
        updates.update(layer_map_step_biases(cfg, state))
    # load_state_dict(strict=False) with our own names: shapes were checked in _put.
    for k, v in updates.items():
        state[k] = v
    model.load_state_dict(state)


def layer_map_step_biases(cfg: MoMConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every router's per-step logit bias as ``router_init='layer_map'`` starts it (for ``'auto'`` at decomposition)."""
    if cfg.router_step not in ("bias", "both"):
        return {}
    lm = cfg.replace(router_init="layer_map")
    out = {}
    for c in range(cfg.chunks):
        for half in HALVES:
            key = f"chunks.{c}.router_{half}.step_bias"
            if key in state:
                out[key] = layer_map_bias(lm, half).to(state[key].dtype)
    return out


def router_start(cfg: MoMConfig) -> str:
    """How a decomposed model's routers start, in words (for logs)."""
    if cfg.is_vanilla or cfg.router == "fixed":
        return "no learned routers"
    if cfg.router_init == "layer_map" or (cfg.router_init == "auto" and cfg.router_step in ("bias", "both")):
        return (f"routers start on the layer map's modules: router_init={cfg.router_init}, a lead of "
                f"{cfg.router_init_bias:g} in scaled logits")
    return "routers fresh"


def _put(updates: dict, state: dict, key: str, m: int | None, value: Tensor) -> None:
    if key not in state:
        raise CheckpointError(f"the model has no tensor {key}")
    target = state[key] if m is None else state[key][m]
    if tuple(target.shape) != tuple(value.shape):
        raise CheckpointError(f"cannot map a tensor of shape {tuple(value.shape)} onto {key}"
                              f"{'' if m is None else f'[{m}]'} of shape {tuple(target.shape)}")
    if m is None:
        updates[key] = value.to(target.dtype).clone()
    else:
        base = updates.get(key, state[key].clone())
        base[m] = value.to(target.dtype)
        updates[key] = base


def smaller_pools(cfg: MoMConfig, attn_keep: float, ffn_keep: float) -> MoMConfig:
    """``cfg`` with pools of ``ceil(keep · N)`` modules decomposed from the same N layers per chunk (the official
    pruning ablation, trained in phase 2; see the module docstring). Top-K is capped to the choices left."""
    if not (0 < attn_keep <= 1 and 0 < ffn_keep <= 1):
        raise ConfigError(f"keep fractions must be in (0, 1], got {attn_keep:g} and {ffn_keep:g}")
    n_attn, n_ffn = (max(1, math.ceil(keep * getattr(cfg, f"n_{half}") - 1e-9))
                     for half, keep in (("attn", attn_keep), ("ffn", ffn_keep)))
    changes = dict(n_attn=n_attn, n_ffn=n_ffn, chunk_layers=cfg.layers_per_chunk,
                   name=f"{cfg.name}-pools-a{n_attn}f{n_ffn}")
    if cfg.selection == "token":
        for half, n in (("attn", n_attn), ("ffn", n_ffn)):
            if cfg.k(half) > n + int(cfg.skip):
                changes[f"{half}_top_k"] = n + int(cfg.skip)
    return cfg.replace(**changes)


def vanilla_layers_of(model) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
    """Split a vanilla-shaped model (``chunks == 0``) into GPT-2 layers and embeddings (inverse of decompose)."""
    cfg = model.config
    if not cfg.is_vanilla:
        raise CheckpointError(f"model '{cfg.name}' has assembled blocks; only a vanilla (chunks=0) model has GPT-2 "
                              "layers")
    state = model.state_dict()
    layers = []
    for prefix in [f"bottom.{i}." for i in range(cfg.bottom)] + [f"top.{i}." for i in range(cfg.top)]:
        layers.append({k: state[prefix + k][0] for k in LAYER_KEYS})
    emb = {k: state[k] for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    return layers, emb


# ---------------------------------------------------------------------------------------------- HF format
def read_hf(directory: str | os.PathLike) -> tuple[MoMConfig, list[dict[str, Tensor]], dict[str, Tensor]]:
    """Read an HF GPT-2 directory: (vanilla config, layers, embeddings)."""
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory}: no config.json (not an HF model directory)")
    hf = read_json(cfg_path, "HF config")
    if not isinstance(hf, dict) or hf.get("model_type") != "gpt2":
        found = hf.get("model_type") if isinstance(hf, dict) else None
        raise CheckpointError(f"{cfg_path}: model_type is {found!r}, only 'gpt2' can be imported")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(f"{cfg_path}: activation_function {act!r} is not GPT-2's tanh GELU")
    try:
        d = int(hf["n_embd"])
        cfg = MoMConfig(name=directory.name or "gpt2", vocab_size=int(hf["vocab_size"]), n_ctx=int(hf["n_positions"]),
                        d_model=d, n_head=int(hf["n_head"]), d_ff=int(hf.get("n_inner") or 4 * d),
                        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), bottom=int(hf["n_layer"]), top=0)
    except KeyError as e:
        raise CheckpointError(f"{cfg_path}: missing field {e}") from None
    state = _read_hf_weights(directory)
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    try:
        layers = [{k: state[f"h.{l}.{k}"] for k in LAYER_KEYS} for l in range(cfg.bottom)]
        emb = {k: state[k] for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    except KeyError as e:
        raise CheckpointError(f"{directory}: weights lack tensor {e.args[0]} (transformer.{e.args[0]})") from None
    if "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], emb["wte.weight"]):
        raise CheckpointError(f"{directory}: lm_head is not tied to wte; only tied GPT-2 heads are supported")
    return cfg, layers, emb


def _read_hf_weights(directory: Path) -> dict[str, Tensor]:
    st = directory / "model.safetensors"
    if st.is_file():
        return load_safetensors(st)
    bin_path = directory / "pytorch_model.bin"
    if bin_path.is_file():
        try:
            return torch.load(bin_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{bin_path}: cannot be read safely ({type(e).__name__}: {str(e)[:200]})") from None
    raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin")


def from_gpt2(directory: str | os.PathLike, config: MoMConfig | None = None):
    """Build a :class:`~mom.model.model.MoM` from an HF GPT-2 directory: vanilla, or decomposed into ``config``'s
    layout. Also reachable as ``MoM.from_gpt2`` (registered below)."""
    vanilla_cfg, layers, emb = read_hf(directory)
    cfg = vanilla_cfg if config is None else config
    check_compatible(vanilla_cfg, cfg, str(directory))
    model = MoM(cfg)
    decompose(layers, emb, model)
    return model


def check_compatible(src: MoMConfig, dst: MoMConfig, source: str) -> None:
    for f in ("vocab_size", "n_ctx", "d_model", "n_head", "d_ff"):
        if getattr(src, f) != getattr(dst, f):
            raise CheckpointError(f"{source}: {f} is {getattr(src, f)} but the config '{dst.name}' needs "
                                  f"{getattr(dst, f)}")


def to_hf(model, directory: str | os.PathLike) -> None:
    """Write a vanilla-shaped model as an HF ``GPT2LMHeadModel`` directory (safetensors + config.json)."""
    cfg = model.config
    layers, emb = vanilla_layers_of(model)
    tensors = {f"transformer.{k}": v.contiguous() for k, v in emb.items()}
    for l, layer in enumerate(layers):
        tensors.update({f"transformer.h.{l}.{k}": v.contiguous() for k, v in layer.items()})
    directory = Path(directory)
    save_safetensors(tensors, directory / "model.safetensors", {"format": "pt"})
    write_json_atomic(directory / "config.json", {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_ctx, "n_embd": cfg.d_model, "n_layer": len(layers), "n_head": cfg.n_head,
        "n_inner": cfg.d_ff, "activation_function": "gelu_new", "layer_norm_epsilon": cfg.layer_norm_eps,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": cfg.init_std,
        "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": True,
    })


MoM._gpt2_importer = from_gpt2
