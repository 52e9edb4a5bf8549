"""Routing health: whether routers assemble different paths or collapse, as four numbers per half of a chunk.

* ``entropy``: the usage entropy of a step's picks over the choices the step allows, divided by ln(allowed choices)
  — 1 when every allowed choice (modules + SKIP) is picked equally often, 0 when one choice takes every pick (with
  K picks per token the floor is above 0: K distinct choices share the picks); the mean over the chunk's steps;
* ``skip``: the SKIP share of picks, the mean over the steps;
* ``same_path``: the share of tokens that take the same choices (SKIP included) at every step of the chunk — a
  router that mixes rather than assembles reads near 1 (the paper-style GRU in the demo: 0.92 for attention);
  None with one step;
* ``step_js_bits``: the mean Jensen–Shannon divergence, in bits (0 … 1), between the usage distributions of every
  pair of the chunk's steps — 0 when every step uses the modules alike, 1 when steps use disjoint choices; None
  with one step.

Computed from routes a forward returned anyway, on the host, off the training step's path: the training monitor
(:mod:`mom.train.monitor`, per half over the chunks) and ``mom routes`` (:mod:`mom.analysis.routes`, per chunk).
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
from torch import Tensor


def normalized_entropy(usage: Sequence[float], choices: int) -> float | None:
    """Entropy of a usage distribution (fractions summing to 1) divided by ln(``choices``); None below 2 choices."""
    if choices < 2:
        return None
    h = -sum(u * math.log(u) for u in usage if u > 0)
    return min(1.0, max(0.0, h / math.log(choices)))


def js_bits(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen–Shannon divergence of two distributions over the same choices, in bits (0 … 1)."""
    def kl(a: Sequence[float], m: Sequence[float]) -> float:
        return sum(x * math.log2(x / y) for x, y in zip(a, m) if x > 0)

    m = [(x + y) / 2 for x, y in zip(p, q)]
    return min(1.0, max(0.0, (kl(p, m) + kl(q, m)) / 2))


def step_divergence_bits(usages: Sequence[Sequence[float]]) -> float | None:
    """Mean pairwise :func:`js_bits` between the steps' usage distributions; None with fewer than two steps."""
    pairs = list(itertools.combinations(usages, 2))
    return sum(js_bits(p, q) for p, q in pairs) / len(pairs) if pairs else None


def same_path(picks: Sequence[Tensor]) -> Tensor:
    """(P,) bool: whether each token's picks are the same set at every step. ``picks``: one (P, K) index tensor per
    step (a token's K picks in any order; SKIP is a choice like the others)."""
    first = picks[0].sort(-1).values
    same = torch.ones(first.shape[0], dtype=torch.bool, device=first.device)
    for idx_PK in picks[1:]:
        same &= (idx_PK.sort(-1).values == first).all(-1)
    return same


def mean_health(parts: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    """The field-wise mean of several health dicts (e.g. over chunks), ignoring None values; rounded to 5 digits."""
    out: dict[str, float | None] = {}
    for key in ("entropy", "skip", "same_path", "step_js_bits"):
        vals = [p[key] for p in parts if p.get(key) is not None]
        out[key] = round(sum(vals) / len(vals), 5) if vals else None
    return out


def format_health(health: dict[str, dict[str, float | None]]) -> str:
    """One short line: ``attn ent 0.83 skip 0.12 same 0.92 js 0.04 | ffn …`` (``-`` for an undefined value)."""
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    return " | ".join(f"{half} ent {f(h['entropy'])} skip {f(h['skip'])} same {f(h['same_path'])} "
                      f"js {f(h['step_js_bits'])}" for half, h in health.items())
