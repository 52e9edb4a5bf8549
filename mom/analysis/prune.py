"""Module pruning: remove the least important modules from every assembled block's pool.

The paper removes 50% of the attention modules and 25% of the FFN modules of a trained MoM and keeps its
performance ("attention is more over-parameterised than FFN"). Here, for every chunk and half independently:

1. rank the N modules by importance, either
   * ``usage`` (default): the router weight a module received per token on data, summed over the chunk's
     steps — for token choice the renormalised top-K weight of each pick (SKIP picks carry none), for expert
     choice the router probability of the tokens it took. A module the routers never pick scores 0; or
   * ``norm``: the Frobenius norm of the module's matmul weights (attention: ``c_attn`` and ``c_proj``; FFN:
     ``c_fc`` and ``c_proj``), a data-free proxy;
2. keep the ``ceil(keep · N)`` highest-ranked (ties: lower index first), in their original order;
3. slice the stacked pool tensors (leading module axis), the router's output rows (module rows kept, the SKIP row
   stays last) and, for expert choice, the per-module decode thresholds.

Removing a module from the router's output drops its logit from the softmax. If the router never gave it any
probability, nothing else changes and the pruned model computes exactly what the original did (a test proves
it); otherwise the remaining choices are renormalised, as in the paper. The result is an ordinary checkpoint with
smaller ``n_attn``/``n_ffn`` that loads with ``MoM.from_pretrained`` and trains further with
``mom train --config OUT --init-from OUT``.

Pruning needs ``attn_candidates``/``ffn_candidates`` = ``all`` and a learned router: with ``diagonal`` or
``grouped`` candidates, step h owns fixed modules (layer-skip, MoD, MoE), and with ``fixed`` routing step h runs
module h mod N, so removing a module would silently change which module the remaining steps run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mom.analysis.routes import collect_stats
from mom.config.model import HALVES, MoMConfig
from mom.errors import ConfigError, MomError
from mom.fileio import dir_mode, write_manifest
from mom.model.model import MoM
from mom.model.modules import HALF_MATRICES, HALF_TENSORS


def keep_count(n: int, fraction: float, flag: str = "keep") -> int:
    """Modules kept out of ``n``: ``ceil(fraction · n)`` (so at least the requested fraction, and ≥ 1)."""
    if not (isinstance(fraction, (int, float)) and math.isfinite(fraction)) or not 0 < fraction <= 1:
        extra = " (0 would remove every module)" if fraction == 0 else ""
        raise MomError(f"{flag} must be a fraction in (0, 1], got {fraction:g}{extra}")
    return min(n, max(1, math.ceil(fraction * n - 1e-9)))


def check_prunable(cfg: MoMConfig) -> None:
    """Raise :class:`ConfigError` when removing modules is not well defined for ``cfg`` (see module docstring)."""
    if cfg.is_vanilla:
        raise ConfigError(f"'{cfg.name}' is a vanilla model (no assembled block): it has no module pool to prune")
    if cfg.router == "fixed":
        raise ConfigError("router='fixed' runs module h at step h: removing modules would change what every step "
                          "runs; pruning needs a learned router")
    for half in HALVES:
        mode = getattr(cfg, f"{half}_candidates")
        if mode != "all":
            raise ConfigError(f"{half}_candidates='{mode}' ties each step to its own modules (layer-skip, MoD, MoE): "
                              "pruning needs candidates 'all'")


def module_importance(model, by: str, batches=None) -> tuple[dict[tuple[int, str], np.ndarray], int]:
    """Importance of every module, per (chunk, half): an (N,) array, higher = more important; and the number
    of tokens it was measured on (0 for ``norm``). ``batches`` (token id tensors) are needed for ``usage``."""
    cfg = model.config
    if by == "norm":
        out = {}
        for c, chunk in enumerate(model.chunks):
            params = dict(chunk.pool.named_parameters())
            for half in HALVES:
                sq = sum(params[name].detach().float().pow(2).flatten(1).sum(1) for name in HALF_MATRICES[half])
                out[(c, half)] = sq.sqrt().cpu().numpy()
        return out, 0
    if by == "usage":

        if batches is None:
            raise ValueError("usage importance needs batches of token ids")
        stats, _ = collect_stats(model, batches)
        return {(c, half): stats.pooled_weight(c, half) for c in range(cfg.chunks) for half in HALVES}, stats.tokens
    raise MomError(f"--by must be 'usage' or 'norm', got '{by}'")


def choose_kept(importance_N: np.ndarray, n_keep: int) -> list[int]:
    """The ``n_keep`` most important module indices, in ascending order (ties: lower index first)."""
    order = sorted(range(len(importance_N)), key=lambda m: (-float(importance_N[m]), m))
    return sorted(order[:n_keep])


def pruned_config(cfg: MoMConfig, n_attn: int, n_ffn: int) -> tuple[MoMConfig, list[str]]:
    """``cfg`` with smaller pools; top-K is capped to the choices left (with a note saying so)."""
    changes: dict[str, Any] = {"n_attn": n_attn, "n_ffn": n_ffn}
    notes = []
    if cfg.selection == "token":
        for half, n in (("attn", n_attn), ("ffn", n_ffn)):
            choices = n + int(cfg.skip)
            if cfg.k(half) > choices:
                changes[f"{half}_top_k"] = choices
                notes.append(f"{half} top_k lowered from {cfg.k(half)} to {choices}: only {n} module(s)"
                             f"{' + SKIP' if cfg.skip else ''} remain")
    suffix = f"-pruned-a{n_attn}f{n_ffn}"
    changes["name"] = cfg.name if cfg.name.endswith(suffix) else cfg.name + suffix
    return cfg.replace(**changes), notes


def prune_state_dict(state: dict[str, torch.Tensor], cfg: MoMConfig,
                     kept: dict[tuple[int, str], list[int]]) -> dict[str, torch.Tensor]:
    """A state dict with only the ``kept[(chunk, half)]`` modules (see the module docstring for what is sliced)."""
    out = dict(state)
    for (c, half), keep in kept.items():
        n = getattr(cfg, f"n_{half}")
        keep_t = torch.tensor(keep, dtype=torch.long)
        for name in HALF_TENSORS[half]:
            key = f"chunks.{c}.pool.{name}"
            out[key] = state[key].index_select(0, keep_t).clone()
        rows = torch.cat([keep_t, torch.tensor([n])])  # the SKIP output stays last
        for name in ("weight", "bias"):
            key = f"chunks.{c}.router_{half}.out.{name}"
            if key in state:
                out[key] = state[key].index_select(0, rows).clone()
        key = f"chunks.{c}.router_{half}.step_bias"
        if key in state:  # router_step bias/both: one logit bias per (step, choice)
            out[key] = state[key].index_select(1, rows).clone()
        key = f"chunks.{c}.threshold_{half}"
        if key in state:  # expert choice: one decode threshold per (step, candidate); candidates 'all' = modules
            out[key] = state[key].index_select(1, keep_t).clone()
    return out


def prune(model, attn_keep: float, ffn_keep: float, by: str = "usage", batches=None):
    """Prune ``model`` (a :class:`~mom.model.model.MoM`); returns ``(pruned model, report dict)``."""
    cfg = model.config
    check_prunable(cfg)
    n_attn = keep_count(cfg.n_attn, attn_keep, "--attn-keep")
    n_ffn = keep_count(cfg.n_ffn, ffn_keep, "--ffn-keep")
    new_cfg, notes = pruned_config(cfg, n_attn, n_ffn)
    importance, tokens = module_importance(model, by, batches)
    kept = {(c, half): choose_kept(importance[(c, half)], n_attn if half == "attn" else n_ffn)
            for c in range(cfg.chunks) for half in HALVES}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    pruned = MoM(new_cfg)
    pruned.load_state_dict(prune_state_dict(state, cfg, kept), strict=True, source="pruned weights")
    if getattr(model, "tokenizer", None) is not None:  # the same tokens: the tokenizer carries over
        pruned.tokenizer = model.tokenizer
    report = {
        "by": by, "attn_keep": attn_keep, "ffn_keep": ffn_keep, "tokens_measured": tokens,
        "n_attn": [cfg.n_attn, n_attn], "n_ffn": [cfg.n_ffn, n_ffn],
        "params": [model.num_params(), pruned.num_params()], "notes": notes,
        "chunks": [{half: {"kept": kept[(c, half)],
                           "removed": [m for m in range(getattr(cfg, f"n_{half}")) if m not in kept[(c, half)]],
                           "importance": [round(float(v), 6) for v in importance[(c, half)]]}
                    for half in HALVES} for c in range(cfg.chunks)],
    }
    return pruned.to(next(model.parameters()).device).eval(), report


# ================================================================================================ writing
# What a pruned checkpoint directory holds: ``--force`` replaces a directory holding only these, nothing else.
PRUNED_FILES = ("model.safetensors", "config.json", "prune.json", "manifest.json", "tokenizer.json")


def check_out(out: Path, force: bool) -> None:
    """``--out`` may be new, empty, or (with ``force``) an earlier pruned checkpoint: the directory is replaced as a
    whole, so one holding anything else (another run, the source checkpoint, a user's files) is refused."""
    if out.exists() and not out.is_dir():
        raise MomError(f"--out {out}: exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise MomError(f"--out {out}: exists and is not empty; pass --force to replace it")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in PRUNED_FILES)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        raise MomError(f"--out {out}: holds more than a pruned checkpoint ({shown}); --force replaces only a "
                       "directory of model.safetensors, config.json, prune.json and manifest.json: pick a new --out")


def save_atomic(model, out: Path, report: dict, force: bool) -> None:
    """Write the pruned checkpoint (``model.safetensors``, ``config.json``, ``prune.json``) into a temporary
    directory beside ``out`` and rename it into place, so ``out`` is never left half-written."""
    out = Path(out)
    check_out(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as e:
        raise MomError(f"--out {out}: cannot create the output directory ({e.strerror or e})") from None
    trash = None
    try:
        # the tokenizer the model was loaded with (mom.runs.load_model) travels with the pruned model
        names = model.save_pretrained(tmp, manifest=False, tokenizer=getattr(model, "tokenizer", None))
        (tmp / "prune.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        write_manifest(tmp, [*names, "prune.json"])
        os.chmod(tmp, dir_mode())  # mkdtemp creates an owner-only directory; use the usual permissions
        if out.exists():
            trash = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, trash)
        os.rename(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if trash is not None and trash.exists() and not out.exists():
            os.rename(trash, out)  # put the old contents back
        raise MomError(f"--out {out}: cannot write the pruned checkpoint ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
