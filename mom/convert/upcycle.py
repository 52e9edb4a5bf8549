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
    1 and the experts are equal, so the upcycled model starts as exactly the vanilla function."""
    van = MoM.from_pretrained(vanilla_dir)
    if van.config.bottom != cfg.steps or not van.config.is_vanilla:
        raise ValueError(f"upcycling needs a {cfg.steps}-layer vanilla model, got {van.config.name}")
    moe = MoM(cfg)
    vs, ms = van.state_dict(), moe.state_dict()
    for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
        ms[k] = vs[k].clone()
    for h in range(cfg.steps):
        for half in HALVES:
            for m in cfg.candidates(half, h):
                for name in HALF_TENSORS[half]:
                    ms[f"chunks.0.pool.{name}"][m] = vs[f"bottom.{h}.{name}"][0]
    moe.load_state_dict(ms)
    moe.save_pretrained(out, tokenizer=load_tokenizer(vanilla_dir))  # same embeddings: same tokenizer
