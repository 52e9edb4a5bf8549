"""Routing analysis: which modules tokens take, how often they SKIP, how deep their paths are.

:class:`RouteStats` accumulates :class:`~mom.model.model.RouteRecord` lists (``model(idx, return_routes=True).routes``)
over any number of forward passes and reduces them to plain numbers:

* **usage** per (chunk, step, half): the fraction of picks that went to module 0 … N-1 and, last, SKIP (sums to
  1); ``weighted_usage``: the router weight each module received per token (token choice: the renormalised top-K
  weight, 0 for SKIP; expert choice: the router probability), so a module picked often but with tiny weight
  shows as little used;
* **SKIP rate**: the SKIP share of picks, and ``skip_all``, the fraction of tokens whose every pick was SKIP (they
  bypass that half entirely);
* **effective depth** per token: the attention and FFN halves in which the token ran at least one real module,
  divided by 2, plus the vanilla layers (bottom, anchors, top: always run). It is in layers, equal to
  ``config.depth`` for a token that never skips; ``module_applications`` counts every real module a token ran
  (K per routed half, 2 per vanilla layer), i.e. its width times depth;
* **health** per (chunk, half) (:mod:`mom.model.route_health`): usage entropy normalised to [0, 1], SKIP share,
  the share of tokens taking the same choices at every step, the mean Jensen–Shannon divergence between the steps'
  usage (bits) — whether the routers assemble different paths or mix the same modules at every step;
* **co-occurrence** per (chunk, half): ``same_step[i, j]`` = tokens that picked both module i and module j at the
  same step (i ≠ j; possible only with K > 1); ``next_step[i, j]`` = (token, consecutive-step) pairs where the
  token picked i at step h and j at step h+1, over N+1 choices (SKIP last): how modules chain along the path.

:func:`render_png` and :func:`render_html` draw a report: a heatmap of one sequence's route (tokens × (chunk,
step, half, pick), colour = module, SKIP grey), SKIP rate per step, the effective-depth histogram, module usage
per step and the co-occurrence matrices. ``mom routes`` (:func:`cli_routes`) wires it to a checkpoint and text or
a token dataset. This module also holds the helpers the other measuring commands share: loading a checkpoint,
finding validation tokens and cutting them into batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from mom.config.model import HALVES
from mom.model.route_health import mean_health, normalized_entropy, step_divergence_bits

HALF_NAMES = {"attn": "attention", "ffn": "FFN"}


# ================================================================================================ statistics
@dataclass
class _StepCounts:
    """Running sums for one (chunk, step, half)."""

    n_modules: int
    k: int
    picks_N: np.ndarray  # (N+1,) picks per module, SKIP last
    weight_N: np.ndarray  # (N,) summed router weight per module
    tokens: int = 0
    skip_all: int = 0  # tokens whose every pick was SKIP
    choices: int = 1  # choices the step allows, SKIP included (1: a static route, nothing decided)


class RouteStats:
    """Routing statistics accumulated over forward passes (see the module docstring for every quantity).

    ``vanilla_layers``: the model's always-run layers (``config.n_vanilla_layers``), added to every token's
    effective depth. Feed it with :meth:`add` (all records of one forward pass at a time), read :meth:`summary`.
    """

    def __init__(self, vanilla_layers: int = 0):
        self.vanilla_layers = vanilla_layers
        self.steps: dict[tuple[int, int, str], _StepCounts] = {}
        self.same_step: dict[tuple[int, str], np.ndarray] = {}  # (N, N)
        self.next_step: dict[tuple[int, str], np.ndarray] = {}  # (N+1, N+1)
        self.same_path: dict[tuple[int, str], int] = {}  # tokens taking the same choices at every step of a chunk
        self.halves_hist = np.zeros(1, dtype=np.int64)  # tokens by number of routed halves they ran
        self.applications = 0.0  # Σ over tokens of real module picks in routed halves
        self.tokens = 0
        self.forwards = 0

    def add(self, routes: Sequence) -> None:
        """Add the route records of one forward pass (all share the same B × T tokens)."""
        if not routes:
            raise ValueError("no route records: the model has no assembled block (nothing is routed)")
        B, T = routes[0].idx_BTK.shape[:2]
        halves_run_P = torch.zeros(B * T, dtype=torch.long)
        by_chain: dict[tuple[int, str], list] = {}
        for r in routes:
            n = r.n_modules
            idx_PK = r.idx_BTK.detach().reshape(B * T, -1).cpu()
            w_PK = r.w_BTK.detach().reshape(B * T, -1).float().cpu()
            real_PK = idx_PK < n
            key = (r.chunk, r.step, r.half)
            sc = self.steps.get(key)
            if sc is None:
                sc = self.steps[key] = _StepCounts(n, idx_PK.shape[1], np.zeros(n + 1), np.zeros(n))
                if r.probs_BTN is not None:  # disallowed choices get probability exactly 0
                    sc.choices = int((r.probs_BTN.detach().reshape(-1, n + 1) > 0).any(0).sum())
            sc.picks_N += torch.bincount(idx_PK.flatten(), minlength=n + 1).double().numpy()
            sc.weight_N += torch.zeros(n + 1, dtype=torch.float64).index_add_(
                0, idx_PK.flatten(), w_PK.flatten().double())[:n].numpy()
            sc.tokens += B * T
            sc.skip_all += int((~real_PK.any(-1)).sum())
            halves_run_P += real_PK.any(-1).long()
            self.applications += float(real_PK.sum())
            multi_PN = _multi_hot(idx_PK, n + 1)
            real_PN = multi_PN[:, :n]
            same_NN = (real_PN.T @ real_PN).numpy()
            np.fill_diagonal(same_NN, 0)
            chain = (r.chunk, r.half)
            self.same_step[chain] = self.same_step.get(chain, 0) + same_NN
            by_chain.setdefault(chain, []).append((r.step, multi_PN))
        for chain, seq in by_chain.items():
            seq.sort(key=lambda s: s[0])
            for (h0, a_PN), (h1, b_PN) in zip(seq, seq[1:]):
                if h1 == h0 + 1:
                    self.next_step[chain] = self.next_step.get(chain, 0) + (a_PN.T @ b_PN).numpy()
            same_P = torch.stack([(m_PN == seq[0][1]).all(-1) for _, m_PN in seq]).all(0)
            self.same_path[chain] = self.same_path.get(chain, 0) + int(same_P.sum())
        counts = torch.bincount(halves_run_P).numpy()
        if len(counts) > len(self.halves_hist):
            self.halves_hist = np.pad(self.halves_hist, (0, len(counts) - len(self.halves_hist)))
        self.halves_hist[: len(counts)] += counts
        self.tokens += B * T
        self.forwards += 1

    # ------------------------------------------------------------------ derived quantities
    def usage(self, chunk: int, step: int, half: str) -> np.ndarray:
        """(N+1,) fraction of picks per module, SKIP last."""
        sc = self.steps[(chunk, step, half)]
        return sc.picks_N / max(sc.picks_N.sum(), 1)

    def weighted_usage(self, chunk: int, step: int, half: str) -> np.ndarray:
        """(N,) mean router weight per token each module received."""
        sc = self.steps[(chunk, step, half)]
        return sc.weight_N / max(sc.tokens, 1)

    def skip_rate(self, chunk: int, step: int, half: str) -> float:
        return float(self.usage(chunk, step, half)[-1])

    def skip_all(self, chunk: int, step: int, half: str) -> float:
        sc = self.steps[(chunk, step, half)]
        return sc.skip_all / max(sc.tokens, 1)

    def modules_per_token(self, chunk: int, step: int, half: str) -> float:
        sc = self.steps[(chunk, step, half)]
        return float(sc.picks_N[:-1].sum()) / max(sc.tokens, 1)

    def pooled_usage(self, chunk: int, half: str) -> np.ndarray:
        """(N+1,) fraction of picks per module over all steps of a chunk, SKIP last."""
        picks = sum(sc.picks_N for (c, _, h), sc in self.steps.items() if c == chunk and h == half)
        return picks / max(picks.sum(), 1)

    def pooled_weight(self, chunk: int, half: str) -> np.ndarray:
        """(N,) router weight per module summed over a chunk's steps, per token (the pruning importance)."""
        w = sum(sc.weight_N for (c, _, h), sc in self.steps.items() if c == chunk and h == half)
        return w / max(self.tokens, 1)

    def health(self, chunk: int, half: str) -> dict[str, float | None]:
        """The :mod:`mom.model.route_health` measures of a chunk's half: usage entropy normalised to [0, 1] and SKIP
        share (means over its steps), the share of tokens taking the same choices at every step, the mean pairwise
        Jensen–Shannon divergence between its steps' usage (bits); None where undefined (one step; a static half)."""
        steps = sorted(s for c, s, h in self.steps if c == chunk and h == half)
        counts = [self.steps[(chunk, s, half)] for s in steps]
        if all(sc.choices < 2 for sc in counts):
            return {"entropy": None, "skip": None, "same_path": None, "step_js_bits": None}
        usages = [self.usage(chunk, s, half).tolist() for s in steps]
        ents = [normalized_entropy(u, sc.choices) for u, sc in zip(usages, counts)]
        ents = [e for e in ents if e is not None]
        return mean_health([{
            "entropy": sum(ents) / len(ents) if ents else None,
            "skip": sum(u[-1] for u in usages) / len(usages),
            "same_path": self.same_path[(chunk, half)] / max(self.tokens, 1) if len(steps) > 1 else None,
            "step_js_bits": step_divergence_bits(usages),
        }])

    def depth_histogram(self) -> dict[float, int]:
        """{effective depth: tokens}; depths step by 0.5 (one half of a layer)."""
        return {self.vanilla_layers + k / 2: int(c) for k, c in enumerate(self.halves_hist) if c}

    def mean_depth(self) -> float:
        k = np.arange(len(self.halves_hist))
        return self.vanilla_layers + float((k * self.halves_hist).sum()) / 2 / max(self.tokens, 1)

    def mean_applications(self) -> float:
        return 2 * self.vanilla_layers + self.applications / max(self.tokens, 1)

    def chunks(self) -> list[int]:
        return sorted({c for c, _, _ in self.steps})

    def n_steps(self, chunk: int) -> int:
        return 1 + max(s for c, s, _ in self.steps if c == chunk)

    def summary(self) -> dict[str, Any]:
        """Everything as JSON-ready numbers (fractions rounded to 6 digits)."""
        def r(x):
            return [round(float(v), 6) for v in x]

        steps = []
        for (c, s, h), sc in sorted(self.steps.items(), key=lambda kv: (kv[0][0], kv[0][1], HALVES.index(kv[0][2]))):
            steps.append({"chunk": c, "step": s, "half": h, "n_modules": sc.n_modules, "k": sc.k,
                          "usage": r(self.usage(c, s, h)), "weighted_usage": r(self.weighted_usage(c, s, h)),
                          "skip_rate": round(self.skip_rate(c, s, h), 6), "skip_all": round(self.skip_all(c, s, h), 6),
                          "modules_per_token": round(self.modules_per_token(c, s, h), 6)})
        chains = {}
        for (c, h) in sorted(self.same_step, key=lambda ch: (ch[0], HALVES.index(ch[1]))):
            chains[f"chunk{c}.{h}"] = {
                "usage": r(self.pooled_usage(c, h)),
                "same_step": self.same_step[(c, h)].astype(int).tolist(),
                "next_step": self.next_step[(c, h)].astype(int).tolist() if (c, h) in self.next_step else None,
                "health": self.health(c, h),
            }
        return {
            "tokens": self.tokens,
            "forwards": self.forwards,
            "vanilla_layers": self.vanilla_layers,
            "steps": steps,
            "chunks": chains,
            "effective_depth": {"mean": round(self.mean_depth(), 6),
                                "histogram": {f"{d:g}": n for d, n in self.depth_histogram().items()}},
            "module_applications": {"mean": round(self.mean_applications(), 6)},
        }


def _multi_hot(idx_PK: Tensor, n: int) -> Tensor:
    """(P, n) float: how many of a token's K picks chose each index."""
    return torch.zeros(idx_PK.shape[0], n, dtype=torch.float64).scatter_add_(
        1, idx_PK, torch.ones(idx_PK.shape, dtype=torch.float64))


def route_grid(routes: Sequence, row: int = 0, max_tokens: int | None = None):
    """One sequence's route as a grid: (labels, idx_CT, w_CT) with one row per (chunk, step, half, pick) in forward
    order and one column per token. ``idx`` holds the module, with ``-1`` for SKIP (whatever the pool size)."""
    labels, idx_rows, w_rows = [], [], []
    for r in routes:
        idx_TK = r.idx_BTK[row].detach().cpu()
        w_TK = r.w_BTK[row].detach().float().cpu()
        if max_tokens is not None:
            idx_TK, w_TK = idx_TK[:max_tokens], w_TK[:max_tokens]
        for k in range(idx_TK.shape[1]):
            suffix = f" #{k + 1}" if idx_TK.shape[1] > 1 else ""
            labels.append(f"c{r.chunk} h{r.step} {'A' if r.half == 'attn' else 'F'}{suffix}")
            idx_rows.append(torch.where(idx_TK[:, k] >= r.n_modules, -1, idx_TK[:, k]))
            w_rows.append(w_TK[:, k])
    return labels, torch.stack(idx_rows).numpy(), torch.stack(w_rows).numpy()


def token_depths(routes: Sequence, vanilla_layers: int, row: int = 0) -> np.ndarray:
    """(T,) effective depth of every token of sequence ``row`` (see the module docstring)."""
    halves_T = sum((r.idx_BTK[row] < r.n_modules).any(-1).long().cpu() for r in routes)
    return vanilla_layers + halves_T.numpy() / 2


@torch.no_grad()
def collect_stats(model, batches: Iterable[Tensor]) -> tuple[RouteStats, list]:
    """Route statistics of ``model`` over ``batches`` (in eval mode, so nothing is updated; the mode is restored);
    also returns the first batch's route records."""
    stats = RouteStats(vanilla_layers=model.config.n_vanilla_layers)
    first = None
    was_training = model.training
    model.eval()
    try:
        for idx_BT in batches:
            routes = model(idx_BT, return_routes=True).routes
            stats.add(routes)
            first = routes if first is None else first
    finally:
        model.train(was_training)
    return stats, first


# ================================================================================================ measured usage
def usage_from_routes(routes) -> dict[str, float]:
    """Mean real (non-SKIP) modules a token runs per assembly step, per half, over ``routes``.

    ``routes`` is an iterable of :class:`mom.model.model.RouteRecord` (of one forward or of many). Every (chunk, step)
    sees the same tokens in a forward, so the plain mean over records and tokens is exactly the per-step figure
    :func:`count` multiplies by ``chunks · steps``. Halves with no record (no assembled block) are left out, so
    :func:`count` falls back to its own value for them."""
    picks = {"attn": 0.0, "ffn": 0.0}
    slots = {"attn": 0, "ffn": 0}
    for r in routes:
        picks[r.half] += float((r.idx_BTK < r.n_modules).sum())
        slots[r.half] += r.idx_BTK.shape[0] * r.idx_BTK.shape[1]
    return {h: picks[h] / slots[h] for h in picks if slots[h]}
