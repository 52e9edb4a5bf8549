"""The routing report of ``mom routes``: figure (PNG), self-contained HTML page and JSON numbers."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from torch import Tensor

from mom.analysis.routes import HALF_NAMES, RouteStats, route_grid, token_depths
from mom.config.model import HALVES
from mom.errors import MomError

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
        raise MomError("PNG output needs matplotlib: pip install 'mixture-of-modules[plots]' "
                       "(or write .html/.json)") from None
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


def _health_table(st: RouteStats) -> str:
    """Routing health per (chunk, half) with a learned router (:meth:`RouteStats.health`)."""
    def f(v):
        return "–" if v is None else f"{v:.3f}"

    trs = []
    for c in st.chunks():
        for half in HALVES:
            if not any(k[0] == c and k[2] == half for k in st.steps):
                continue
            h = st.health(c, half)
            if h["entropy"] is None and h["skip"] is None:
                continue  # a static half: nothing was decided
            trs.append(f"<tr><td>{c}</td><td>{HALF_NAMES[half]}</td><td>{f(h['entropy'])}</td><td>{f(h['skip'])}</td>"
                       f"<td>{f(h['same_path'])}</td><td>{f(h['step_js_bits'])}</td></tr>")
    return ("<table><caption>Routing health per chunk: usage entropy (0 = one choice takes every pick, 1 = all "
            "allowed choices alike), SKIP share, tokens taking the same choices at every step, mean Jensen–Shannon "
            "divergence between the steps' usage (bits; 0 = every step uses the modules alike)</caption><tr>"
            "<th>chunk</th><th>half</th><th>entropy</th><th>SKIP</th><th>same path</th><th>step JS</th></tr>"
            + "".join(trs) + "</table>")


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
    parts.append(_health_table(st))
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


def report_from(stats: RouteStats, routes: Sequence, ids_T: Tensor, cfg, max_tokens: int, source: str,
                model_name: str, tok=None) -> RouteReport:
    """Assemble a :class:`RouteReport` showing the first sequence of ``routes`` (token ids ``ids_T``), its tokens
    as text when the model's tokenizer ``tok`` is given and covers the model's vocabulary (else as ids)."""
    labels, idx_CT, w_CT = route_grid(routes, 0, max_tokens)
    shown = ids_T[:max_tokens].tolist()
    if tok is not None and cfg.vocab_size >= tok.n_vocab:
        tokens = [tok.decode([t]) if t < tok.n_vocab else f"<{t}>" for t in shown]
    else:
        tokens = [str(t) for t in shown]
    depth_T = token_depths(routes, cfg.n_vanilla_layers)[: len(shown)]
    return RouteReport(stats=stats, labels=labels, idx_CT=idx_CT, w_CT=w_CT, tokens=tokens, depth_T=depth_T,
                       n_modules=max(cfg.n_attn, cfg.n_ffn), source=source, model=model_name, max_depth=cfg.depth)
