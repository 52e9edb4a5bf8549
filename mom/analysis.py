"""Routing analysis: which modules tokens take, how often they SKIP, how deep their paths are.

:class:`RouteStats` accumulates :class:`~mom.model.RouteRecord` lists (``model(idx, return_routes=True).routes``)
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

import argparse
import base64
import html
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from mom.fileio import atomic_write
from mom.errors import CheckpointError, DataError, MomError

HALVES = ("attn", "ffn")
HALF_NAMES = {"attn": "attention", "ffn": "FFN"}
DEFAULT_DATA_DIR = Path("data") / "builtin"


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


# ================================================================================================ rendering
SKIP_COLOUR = "#d9d9d9"


def _palette(n: int) -> list[str]:
    """``n`` distinct colours for modules (matplotlib's tab10/tab20, then evenly spaced hues)."""
    base = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5",
            "#dbdb8d", "#393b79"]
    if n <= len(base):
        return base[:n]
    import colorsys

    return ["#%02x%02x%02x" % tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / n, 0.65, 0.85)) for i in range(n)]


@dataclass
class RouteReport:
    """What ``mom routes`` draws: dataset statistics plus one sequence's route."""

    stats: RouteStats
    labels: list[str]  # grid rows
    idx_CT: np.ndarray  # module per (row, token), -1 = SKIP
    w_CT: np.ndarray
    tokens: list[str]  # the shown tokens, as text
    depth_T: np.ndarray  # their effective depths
    n_modules: int  # largest pool (colour count)
    source: str  # where the tokens came from, in words
    model: str  # the checkpoint, in words
    max_depth: int = 0


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MomError("PNG output needs matplotlib: pip install 'mixture-of-modules[plots]' (or write .html/.json)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(rep: RouteReport):
    """The report as one matplotlib figure."""
    plt = _pyplot()
    from matplotlib.colors import BoundaryNorm, ListedColormap

    st = rep.stats
    chunks = st.chunks()
    c0 = chunks[0]
    n_rows, n_tok = rep.idx_CT.shape
    width = max(12.0, min(0.22 * n_tok + 3, 30))
    heat_h = max(2.5, 0.2 * n_rows + 1.5)
    fig = plt.figure(figsize=(width, heat_h + 11), constrained_layout=True)
    gs = fig.add_gridspec(4, 2, height_ratios=[heat_h, 3.5, 3.5, 3.5])
    fig.suptitle(f"Routes of {rep.model} — {rep.source}", fontsize=11)

    # 1. one sequence: tokens × (chunk, step, half, pick), colour = module, SKIP grey
    ax = fig.add_subplot(gs[0, :])
    colours = [SKIP_COLOUR] + _palette(rep.n_modules)
    cmap = ListedColormap(colours)
    norm = BoundaryNorm(np.arange(-1.5, rep.n_modules, 1.0), cmap.N)
    ax.imshow(rep.idx_CT, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    ax.set_yticks(range(n_rows), rep.labels, fontsize=7)
    ax.set_xticks(range(n_tok), [t if len(t) <= 10 else t[:9] + "…" for t in rep.tokens], rotation=90, fontsize=7)
    if n_rows * n_tok <= 4000:
        for (i, j), m in np.ndenumerate(rep.idx_CT):
            ax.text(j, i, "S" if m < 0 else str(m), ha="center", va="center", fontsize=6, color="#222222")
    ax.set_title(f"module chosen per token and (chunk c, step h, A = attention / F = FFN, pick #); "
                 f"grey S = SKIP; effective depth of these tokens: mean {rep.depth_T.mean():.2f}", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours[: min(len(colours), 13)]]
    ax.legend(handles, ["SKIP"] + [f"module {m}" for m in range(len(handles) - 1)], loc="upper left",
              bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)

    # 2. SKIP rate per step (pooled over chunks in the x labels c·h)
    ax = fig.add_subplot(gs[1, 0])
    keys = sorted({(c, s) for c, s, _ in st.steps})
    x = np.arange(len(keys))
    for off, half in ((-0.2, "attn"), (0.2, "ffn")):
        vals = [st.skip_rate(c, s, half) if (c, s, half) in st.steps else 0.0 for c, s in keys]
        ax.bar(x + off, vals, width=0.4, label=f"{HALF_NAMES[half]} (SKIP share of picks)")
    ax.set_xticks(x, [f"c{c} h{s}" for c, s in keys], fontsize=7, rotation=90 if len(keys) > 16 else 0)
    ax.set_ylim(0, 1)
    ax.set_title(f"SKIP rate per step over {st.tokens:,} tokens", fontsize=9)
    ax.legend(fontsize=7)

    # 3. effective depth over the data
    ax = fig.add_subplot(gs[1, 1])
    hist = st.depth_histogram()
    ax.bar(list(hist), [n / st.tokens for n in hist.values()], width=0.4)
    ax.axvline(st.mean_depth(), color="k", ls="--", lw=1, label=f"mean {st.mean_depth():.2f}")
    if rep.max_depth:
        ax.axvline(rep.max_depth, color="r", ls=":", lw=1, label=f"config depth {rep.max_depth}")
    ax.set_xlabel("effective depth (layers; a half counts 0.5)")
    ax.set_ylabel("fraction of tokens")
    ax.set_title("effective depth per token", fontsize=9)
    ax.legend(fontsize=7)

    # 4. usage per step, per half (chunk c0): rows steps, columns modules + SKIP
    for col, half in enumerate(HALVES):
        ax = fig.add_subplot(gs[2, col])
        rows = [(c, s) for c, s in keys if (c, s, half) in st.steps]
        if not rows:
            ax.axis("off")
            continue
        n = max(st.steps[(c, s, half)].n_modules for c, s in rows)
        mat = np.full((len(rows), n + 1), np.nan)
        for i, (c, s) in enumerate(rows):
            u = st.usage(c, s, half)
            mat[i, : len(u) - 1] = u[:-1]
            mat[i, n] = u[-1]
        im = ax.imshow(mat, aspect="auto", cmap="viridis", vmin=0, vmax=max(np.nanmax(mat), 1e-9))
        ax.set_xticks(range(n + 1), [str(m) for m in range(n)] + ["SKIP"], fontsize=7)
        ax.set_yticks(range(len(rows)), [f"c{c} h{s}" for c, s in rows], fontsize=7)
        ax.set_title(f"{HALF_NAMES[half]} usage: fraction of picks per module", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)

    # 5. co-occurrence (chunk c0): same step, and consecutive steps
    for col, (what, title) in enumerate((("same_step", "picked together at one step"),
                                         ("next_step", "step h → step h+1 (SKIP last)"))):
        ax = fig.add_subplot(gs[3, col])
        mat = getattr(st, what).get((c0, "attn"))
        if mat is None:
            ax.axis("off")
            ax.set_title(f"attention modules {title}: no data (one step, or K = 1)", fontsize=9)
            continue
        im = ax.imshow(mat, cmap="magma")
        n = mat.shape[0]
        names = [str(m) for m in range(n)] if what == "same_step" else [str(m) for m in range(n - 1)] + ["S"]
        ax.set_xticks(range(n), names, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
        more = f" (chunk {c0} of {len(chunks)})" if len(chunks) > 1 else ""
        ax.set_title(f"attention modules {title}{more}", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def render_png(rep: RouteReport) -> bytes:
    plt = _pyplot()
    fig = figure(rep)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _cell(value: int, vmax: float) -> str:
    """A table cell shaded by its value (white → blue), with an inline style (the page stays self-contained)."""
    a = 0.0 if vmax <= 0 else min(1.0, value / vmax)
    return f'<td style="background:rgba(31,119,180,{a:.3f})">{value}</td>'


def _matrix_table(mat: np.ndarray, names: list[str], caption: str) -> str:
    vmax = float(mat.max()) if mat.size else 0.0
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join(f"<tr><th>{html.escape(names[i])}</th>" + "".join(_cell(int(v), vmax) for v in row) + "</tr>"
                   for i, row in enumerate(mat))
    return f"<table><caption>{html.escape(caption)}</caption><tr><th></th>{head}</tr>{body}</table>"


def render_html(rep: RouteReport, embed_png: bool = True) -> str:
    """A self-contained HTML page (inline CSS, no scripts, no external resources; the figure, when matplotlib is
    available, is embedded as a data: URI)."""
    st = rep.stats
    esc = html.escape
    colours = _palette(rep.n_modules)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>mom routes: {esc(rep.model)}</title>",
        "<style>body{font:13px sans-serif;margin:1.5em}table{border-collapse:collapse;margin:0.6em 0 1.4em}"
        "td,th{border:1px solid #ccc;padding:2px 5px;text-align:center}caption{text-align:left;font-weight:bold;"
        "padding:4px 0}.grid td{min-width:1.4em;font-size:11px}.tok{font-family:monospace;font-size:11px;"
        "writing-mode:vertical-rl;white-space:pre}.skip{background:" + SKIP_COLOUR + "}</style></head><body>",
        f"<h1>Routes of {esc(rep.model)}</h1>",
        f"<p>{esc(rep.source)}. {st.tokens:,} tokens over {st.forwards} forward pass(es). Mean effective depth "
        f"{st.mean_depth():.3f} layers (config depth {rep.max_depth}); mean module applications per token "
        f"{st.mean_applications():.3f}.</p>",
    ]
    # one sequence as a coloured grid
    head = "".join(f'<th class="tok">{esc(t)}</th>' for t in rep.tokens)
    rows = []
    for label, idx_T, w_T in zip(rep.labels, rep.idx_CT, rep.w_CT):
        cells = "".join(
            '<td class="skip" title="SKIP">S</td>' if m < 0 else
            f'<td style="background:{colours[m]}" title="module {m}, weight {w:.3f}">{m}</td>'
            for m, w in zip(idx_T.tolist(), w_T.tolist()))
        rows.append(f"<tr><th>{esc(label)}</th>{cells}</tr>")
    depth = "".join(f"<td>{d:g}</td>" for d in rep.depth_T.tolist())
    parts.append(f'<table class="grid"><caption>Module chosen per token (columns) and (chunk c, step h, A = '
                 f'attention / F = FFN, pick #) (rows); S = SKIP; hover for the router weight</caption>'
                 f"<tr><th></th>{head}</tr>{''.join(rows)}<tr><th>effective depth</th>{depth}</tr></table>")
    # per-step table
    trs = []
    for s in st.summary()["steps"]:
        usage = " ".join(f"{u:.2f}" for u in s["usage"])
        trs.append(f"<tr><td>{s['chunk']}</td><td>{s['step']}</td><td>{HALF_NAMES[s['half']]}</td>"
                   f"<td>{s['skip_rate']:.3f}</td><td>{s['skip_all']:.3f}</td><td>{s['modules_per_token']:.3f}</td>"
                   f"<td style='text-align:left'>{usage}</td></tr>")
    parts.append("<table><caption>Per step: SKIP share of picks, tokens that skipped the whole half, real modules "
                 "per token, and the fraction of picks per module (SKIP last)</caption><tr><th>chunk</th><th>step</th>"
                 "<th>half</th><th>SKIP rate</th><th>all-SKIP tokens</th><th>modules/token</th><th>usage</th></tr>"
                 + "".join(trs) + "</table>")
    hist = st.depth_histogram()
    parts.append("<table><caption>Effective depth (layers) over the data</caption><tr><th>depth</th>"
                 + "".join(f"<th>{d:g}</th>" for d in hist) + "</tr><tr><th>tokens</th>"
                 + "".join(f"<td>{n}</td>" for n in hist.values()) + "</tr></table>")
    for (c, h), mat in sorted(st.same_step.items(), key=lambda kv: (kv[0][0], HALVES.index(kv[0][1]))):
        n = mat.shape[0]
        parts.append(_matrix_table(mat, [str(m) for m in range(n)],
                                   f"Chunk {c}, {HALF_NAMES[h]}: tokens picking module i and j at the same step"))
        nxt = st.next_step.get((c, h))
        if nxt is not None:
            parts.append(_matrix_table(nxt, [str(m) for m in range(n)] + ["SKIP"],
                                       f"Chunk {c}, {HALF_NAMES[h]}: picks of module i at step h followed by j at h+1"))
    if embed_png:
        try:
            png = render_png(rep)
        except MomError:  # no matplotlib: the tables above say it all
            png = None
        if png is not None:
            parts.append(f'<h2>Figure</h2><img alt="routing figure" style="max-width:100%" '
                         f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')
    parts.append("</body></html>")
    return "\n".join(parts)


# ================================================================================================ shared CLI helpers
def check_output_file(path: str | os.PathLike, option: str | None = None) -> Path:
    """A file a command will write: not a directory, in a directory that exists and is writable. Commands that write
    at the end of long work call it up front, naming their ``option``; :func:`write_atomic` calls it again."""
    path = Path(path)
    where = f"{option} {path}" if option else str(path)
    if path.is_dir():
        raise MomError(f"{where}: is a directory; give a file name")
    if not path.parent.is_dir():
        state = "is not a directory" if path.parent.exists() else "does not exist"
        raise MomError(f"{where}: directory {path.parent} {state}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise MomError(f"{where}: directory {path.parent} is not writable")
    return path


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """:func:`mom.fileio.atomic_write` with every OS failure turned into one clear user error."""
    path = check_output_file(path)
    try:
        return atomic_write(path, data)
    except OSError as e:
        raise MomError(f"{path}: cannot write ({e.strerror or e})") from None


def pick_device(spec: str | None) -> torch.device:
    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise MomError(f"--device: unknown device '{spec}' (cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MomError("--device cuda: no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise MomError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_model_dir(spec: str | os.PathLike) -> Path:
    """A model directory (``model.safetensors`` + ``config.json``) or a training run's latest checkpoint."""
    path = Path(spec)
    if path.is_file():
        raise CheckpointError(f"{path}: is a file; give the model or run directory that holds it")
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    if (path / "model.safetensors").is_file():
        return path
    from mom.train import read_latest

    latest = read_latest(path)
    if latest is not None:
        return latest[1]
    raise CheckpointError(f"{path}: no model.safetensors and no checkpoint (is it a mom model or run directory?)")


def load_model(spec: str | os.PathLike, device: torch.device | str = "cpu", **overrides):
    """Load a checkpoint for measuring (eval mode)."""
    from mom.model import MoM

    return MoM.from_pretrained(resolve_model_dir(spec), map_location=device, **overrides).eval()


def resolve_data_dir(spec: str | None, measure: str = "routing",
                     accepts: str = "DIR (a directory with val.bin, from 'mom prepare --out DIR')") -> Path:
    """``--data`` if given, else the built-in corpus when it has been prepared under data/builtin. Without either,
    the error says what the command would ``measure`` and which ``--data`` forms it ``accepts``."""
    if spec is not None:
        path = Path(spec)
        if not path.exists():
            raise DataError(f"{path}: no such data directory or token file")
        return path
    if (DEFAULT_DATA_DIR / "val.bin").is_file():
        return DEFAULT_DATA_DIR
    raise DataError(f"no data to measure {measure} on: pass --data {accepts}, or prepare the built-in corpus with "
                    f"'mom prepare --out {DEFAULT_DATA_DIR}'")


def val_windows(data: str | os.PathLike, vocab_size: int, seq_len: int, windows: int) -> Tensor:
    """(W, T) consecutive validation windows from the start of the split (deterministic; token ids checked
    against the model's vocabulary)."""
    from mom.data import load_tokens

    tokens = load_tokens(data, "val", vocab_size=vocab_size)
    if len(tokens) < seq_len:
        raise DataError(f"{data}: the val split holds {len(tokens):,} tokens, fewer than --seq-len {seq_len}")
    w = max(1, min(windows, len(tokens) // seq_len))
    return torch.from_numpy(np.asarray(tokens[: w * seq_len], dtype=np.int64).reshape(w, seq_len))


def iter_batches(windows_WT: Tensor, batch_size: int, device: torch.device) -> Iterator[Tensor]:
    for i in range(0, windows_WT.shape[0], batch_size):
        yield windows_WT[i:i + batch_size].to(device)


def check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise MomError(f"{name} must be ≥ 1, got {value}")


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


# ================================================================================================ mom routes
OUT_FORMATS = (".png", ".html", ".json")


def add_routes_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--ckpt", required=True, metavar="DIR", help="a mom model directory (or a training run)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="analyse this text (GPT-2 tokens, truncated to the context length)")
    src.add_argument("--data", metavar="DIR", help="analyse validation windows of this dataset (val.bin)")
    p.add_argument("--out", required=True, metavar="FILE", help="report file: .png (figure), .html (self-contained "
                                                                "page with tables and the figure) or .json (numbers)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per window with --data (default: n_ctx, ≤ 256)")
    p.add_argument("--windows", type=int, default=16, help="validation windows with --data (default 16)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=64, help="tokens shown in the route heatmap (default 64)")
    p.add_argument("--device", default="auto", help="cpu, cuda (default: cuda if available)")
    return p


def cli_routes(args: argparse.Namespace, overrides: dict[str, dict[str, str]]) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in OUT_FORMATS:
        raise MomError(f"--out {out}: unsupported extension '{out.suffix}' (use .png, .html or .json)")
    check_output_file(out, "--out")
    for name in ("seq_len", "windows", "batch_size", "max_tokens"):
        check_positive("--" + name.replace("_", "-"), getattr(args, name))
    device = pick_device(args.device)
    model = load_model(args.ckpt, device, **overrides.get("model", {}))
    cfg = model.config
    if cfg.is_vanilla:
        raise MomError(f"{args.ckpt}: '{cfg.name}' is a vanilla model (no assembled block): nothing is routed")
    from mom.tokenizer import tokenizer

    if args.text is not None:
        if not args.text.strip():
            raise MomError("--text is empty")
        ids = tokenizer().encode_ordinary(args.text)[: cfg.n_ctx]
        if max(ids) >= cfg.vocab_size:
            raise MomError(f"--text: GPT-2 token id {max(ids)} is outside this model's vocabulary ({cfg.vocab_size}); "
                           "use --data with tokens of its vocabulary")
        windows = torch.tensor([ids], dtype=torch.long)
        source = f"--text ({len(ids)} tokens{', truncated to n_ctx' if len(ids) == cfg.n_ctx else ''})"
    else:
        seq_len = args.seq_len or min(cfg.n_ctx, 256)
        if seq_len > cfg.n_ctx:
            raise MomError(f"--seq-len {seq_len} exceeds the model's context length {cfg.n_ctx}")
        windows = val_windows(args.data, cfg.vocab_size, seq_len, args.windows)
        source = f"{windows.shape[0]} validation windows × {seq_len} tokens of {args.data}"
    stats, first = collect_stats(model, iter_batches(windows, args.batch_size, device))
    rep = report_from(stats, first, windows[0], cfg, args.max_tokens, source, str(args.ckpt))
    suffix = out.suffix.lower()
    if suffix == ".json":
        payload = json.dumps({"model": str(args.ckpt), "source": source, **stats.summary()}, indent=1)
    elif suffix == ".html":
        payload = render_html(rep)
    else:
        payload = render_png(rep)
    write_atomic(out, payload)
    print(f"{stats.tokens:,} tokens: mean effective depth {stats.mean_depth():.2f} of {cfg.depth} layers, "
          f"{stats.mean_applications():.2f} module applications per token; wrote {out}")
    return 0


def report_from(stats: RouteStats, routes: Sequence, ids_T: Tensor, cfg, max_tokens: int, source: str,
                model_name: str) -> RouteReport:
    """Assemble a :class:`RouteReport` showing the first sequence of ``routes`` (token ids ``ids_T``)."""
    labels, idx_CT, w_CT = route_grid(routes, 0, max_tokens)
    shown = ids_T[:max_tokens].tolist()
    if cfg.vocab_size >= 50257:
        from mom.tokenizer import tokenizer

        enc = tokenizer()
        tokens = [enc.decode([t]) if t < enc.n_vocab else f"<{t}>" for t in shown]
    else:
        tokens = [str(t) for t in shown]
    depth_T = token_depths(routes, cfg.n_vanilla_layers)[: len(shown)]
    return RouteReport(stats=stats, labels=labels, idx_CT=idx_CT, w_CT=w_CT, tokens=tokens, depth_T=depth_T,
                       n_modules=max(cfg.n_attn, cfg.n_ffn), source=source, model=model_name, max_depth=cfg.depth)
