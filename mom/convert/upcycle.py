"""Sparse upcycling: a MoE initialised from a vanilla model (each step's FFN experts copies of that layer's FFN)."""

from __future__ import annotations

from pathlib import Path

from mom.config.model import HALVES
from mom.data.tokenizer import load_tokenizer
from mom.model.model import MoM
from mom.model.modules import HALF_TENSORS


def upcycle_moe(vanilla_dir: Path, cfg, out: Path) -> None:
    """MoE initialised from a vanilla model (sparse upcycling): step h's attention module is layer h's attention,
    and each of step h's FFN experts is a copy of layer h's FFN. The router weights of the K picked experts sum to
    1 and the experts are equal, so the upcycled model starts as exactly the vanilla function.

    Experts narrower than the vanilla FFN (the parameter-matched ``moe`` preset: E experts of width d_ff / E) are
    carved out of it instead: expert e of step h takes the e-th slice of layer h's hidden units (``c_fc`` columns,
    ``c_proj`` rows) with the layer's LayerNorm and output bias, so all E experts together hold the dense FFN. The
    K picked experts then compute part of it: the start is close to, not equal to, the vanilla function."""
    van = MoM.from_pretrained(vanilla_dir)
    if van.config.bottom != cfg.steps or not van.config.is_vanilla:
        raise ValueError(f"upcycling needs a {cfg.steps}-layer vanilla model, got {van.config.name}")
    moe = MoM(cfg)
    vs, ms = van.state_dict(), moe.state_dict()
    for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
        ms[k] = vs[k].clone()
    dense, width = van.config.d_ff, cfg.d_ff
    for h in range(cfg.steps):
        for half in HALVES:
            experts = cfg.candidates(half, h)
            if half == "ffn" and width != dense and width * len(experts) != dense:
                raise ValueError(f"step {h}'s {len(experts)} experts of width {width} neither copy nor split the "
                                 f"vanilla FFN of width {dense}")
            for e, m in enumerate(experts):
                for name in HALF_TENSORS[half]:
                    ms[f"chunks.0.pool.{name}"][m] = _expert_slice(vs[f"bottom.{h}.{name}"][0], name, e, width,
                                                                   half == "ffn" and width != dense)
    moe.load_state_dict(ms)
    moe.save_pretrained(out, tokenizer=load_tokenizer(vanilla_dir))  # same embeddings: same tokenizer


def _expert_slice(t, name: str, e: int, width: int, split: bool):
    """Expert ``e``'s part of a dense FFN tensor: the e-th ``width`` hidden units when ``split``, else all of it."""
    if not split:
        return t
    hidden = slice(e * width, (e + 1) * width)
    if name == "mlp.c_fc.weight":
        return t[:, hidden]
    if name in ("mlp.c_fc.bias", "mlp.c_proj.weight"):
        return t[hidden]
    return t  # ln_2 and the output bias: each expert keeps the layer's
