"""Training plots from a run's ``metrics.jsonl`` (matplotlib, Agg backend: no display needed).

* ``loss.png`` — training loss (per logged window, with an exponential moving average) and validation loss
  against tokens seen, plus the learning rate;
* ``routing.png`` — for a routed model: per (chunk, step), the share of tokens taking each choice as one heatmap
  per half (attention, FFN), the columns being modules 0 … N-1 and SKIP, averaged over the last quarter of the
  logged rows, on a fixed 0 … 1 scale where a module every token takes (a collapsed router) reads 1.0; and over
  training, per half, the routing health (:mod:`mom.model.route_health`): usage entropy normalised to [0, 1] and
  SKIP share of each (chunk, step), the share of tokens taking the same choices at every step, the mean divergence
  between the steps' usage;
* :func:`plot_comparison` — several runs' validation (and smoothed training) loss on one tokens axis, each run
  shifted by the tokens it started from (the demo's phase 1 → phase 2 picture).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mom.config.model import MoMConfig  # noqa: E402
from mom.config.train import TrainConfig  # noqa: E402
from mom.errors import MomError  # noqa: E402
from mom.fileio import atomic_write  # noqa: E402
from mom.model.flops import count  # noqa: E402
from mom.runs import METRICS, read_metrics  # noqa: E402

SMOOTH_ABOVE = 100  # rows: shorter training curves are drawn as logged (each row already averages its steps)


def _ema(values: Sequence[float], alpha: float = 0.05) -> list[float]:
    """Exponential moving average (only drawn for curves of more than SMOOTH_ABOVE rows: on short curves its lag
    would put the training loss visibly above the validation loss where the loss falls fast)."""
    out, acc = [], None
    for v in values:
        acc = v if acc is None else (1 - alpha) * acc + alpha * v
        out.append(acc)
    return out


def _smooth(values: Sequence[float]) -> list[float]:
    return _ema(values) if len(values) > SMOOTH_ABOVE else list(values)


def _save(fig, path: Path) -> Path:
    """Write a PNG atomically (a temporary file renamed into place)."""
    try:
        return atomic_write(path, writer=lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def plot_loss(run_dir: str | os.PathLike, rows: list[dict[str, Any]] | None = None) -> Path | None:
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir) if rows is None else rows
    train = [r for r in rows if r["type"] == "train"]
    val = [r for r in rows if r["type"] == "val"]
    if not train and not val:
        return None
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]},
                                    layout="constrained")
    if train:
        x = [r["tokens"] for r in train]
        y = [r["loss"] for r in train]
        if len(y) > SMOOTH_ABOVE:
            ax.plot(x, y, color="tab:blue", alpha=0.3, lw=1, label="train (per log window)")
            ax.plot(x, _ema(y), color="tab:blue", lw=1.8, label="train (EMA)")
        else:
            ax.plot(x, y, color="tab:blue", lw=1.5, label="train (mean over each log window)")
        ax_lr.plot(x, [r["lr"] for r in train], color="tab:gray")
    if val:
        ax.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o-", color="tab:red", lw=1.5,
                ms=4, label="validation")
    ax.set_ylabel("LM cross-entropy (nats)")
    ax.set_title(f"{run_dir.name}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("tokens seen")
    ax_lr.grid(alpha=0.3)
    return _save(fig, run_dir / "loss.png")


def _routing_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["type"] == "train" and r.get("routing")]


def _share(e: dict[str, Any]) -> list[float]:
    """A step's share of tokens per choice (metrics written before ``token_share`` existed: the share of picks)."""
    return e.get("token_share") or e["usage"]


def plot_routing(run_dir: str | os.PathLike, rows: list[dict[str, Any]] | None = None) -> Path | None:
    """The routing figure; None for a model without learned routing."""
    run_dir = Path(run_dir)
    rows = _routing_rows(read_metrics(run_dir) if rows is None else rows)
    if not rows:
        return None
    tail = rows[-max(1, len(rows) // 4):]
    halves = [h for h in ("attn", "ffn") if any(e["half"] == h for e in rows[-1]["routing"])]
    fig, axes = plt.subplots(2, max(2, len(halves)), figsize=(6.5 * max(2, len(halves)), 8.5), squeeze=False,
                             layout="constrained")
    for col, half in enumerate(halves):
        keys = sorted({(e["chunk"], e["step"]) for e in rows[-1]["routing"] if e["half"] == half})
        width = max(len(e["usage"]) for e in rows[-1]["routing"] if e["half"] == half)
        grid = [[0.0] * width for _ in keys]
        for r in tail:
            for e in r["routing"]:
                if e["half"] == half and (e["chunk"], e["step"]) in keys:
                    i = keys.index((e["chunk"], e["step"]))
                    for j, u in enumerate(_share(e)):
                        grid[i][j] += u / len(tail)
        ax = axes[0][col]
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
        for i, line in enumerate(grid):
            for j, u in enumerate(line):
                ax.text(j, i, f"{u:.2f}", ha="center", va="center", fontsize=8, color="white" if u < 0.6 else "black")
        ax.set_xticks(range(width), [f"m{j}" for j in range(width - 1)] + ["SKIP"])
        ax.set_yticks(range(len(keys)), [f"chunk {c} step {h}" for c, h in keys])
        ax.set_title(f"{'attention' if half == 'attn' else 'FFN'}: share of tokens taking each choice (1.0 = every "
                     f"token)\nlast {len(tail)} log rows, step {tail[0]['step']}–{tail[-1]['step']}", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.04)
        _plot_health(axes[1][col], rows, half, keys)
    for col in range(len(halves), axes.shape[1]):
        axes[0][col].axis("off")
        axes[1][col].axis("off")
    fig.suptitle(f"{run_dir.name}: routing", fontsize=12)
    return _save(fig, run_dir / "routing.png")


def _plot_health(ax, rows: list[dict[str, Any]], half: str, keys: list[tuple[int, int]]) -> None:
    """Over training: each (chunk, step)'s normalised usage entropy (solid) and SKIP share (dashed), and the half's
    same-path share (black) and step divergence (grey), all on 0 … 1."""
    x = [r["tokens"] for r in rows]

    def series(c: int, h: int, field: str) -> list[float]:
        out = []
        for r in rows:
            e = next((e for e in r["routing"] if e["half"] == half and (e["chunk"], e["step"]) == (c, h)), None)
            v = None if e is None else e.get(field)
            out.append(float("nan") if v is None else v)
        return out

    for c, h in keys:
        line, = ax.plot(x, series(c, h, "entropy_norm"), lw=1.2, label=f"c{c} h{h}")
        ax.plot(x, series(c, h, "skip"), lw=1.0, ls="--", color=line.get_color())
    for field, colour, label in (("same_path", "black", "same path at every step"),
                                 ("step_js_bits", "tab:gray", "step divergence (JS bits)")):
        ys = [(r.get("routing_health") or {}).get(half, {}).get(field) for r in rows]
        if any(y is not None for y in ys):
            ax.plot(x, [float("nan") if y is None else y for y in ys], lw=2.0, color=colour, label=label)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("usage entropy / ln(choices) (solid), SKIP share (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def plot_run(run_dir: str | os.PathLike) -> list[Path]:
    """Both figures of a run (the routing one only for routed models); returns the files written."""
    rows = read_metrics(run_dir)
    return [p for p in (plot_loss(run_dir, rows), plot_routing(run_dir, rows)) if p is not None]


def _two_phase_axis(ax, title: str, legend_size: int) -> None:
    """Labels, grid and legend of a loss panel over the tokens of phase 1 and phase 2 together."""
    ax.set_xlabel("tokens seen (phase 1 + phase 2)")
    ax.set_ylabel("LM cross-entropy (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def plot_comparison(runs: Sequence[tuple[str, str | os.PathLike, int]], path: str | os.PathLike,
                    title: str = "validation loss") -> Path:
    """``runs``: (label, run directory, tokens it started from). Left: every run on one tokens axis; right: a zoom
    on the runs that start later (the phase-2 continuations), whose differences the full scale hides."""
    data = []
    for label, run_dir, offset in runs:
        rows = read_metrics(run_dir)
        val = [r for r in rows if r["type"] == "val"]
        train = [r for r in rows if r["type"] == "train"]
        data.append((label, offset, [offset + r["tokens"] for r in val], [r["val_loss"] for r in val],
                     [offset + r["tokens"] for r in train], _smooth([r["loss"] for r in train])))
    later = [d for d in data if d[1] > 0]
    fig, axes = plt.subplots(1, 2 if later else 1, figsize=(13 if later else 7.5, 4.8), squeeze=False,
                             layout="constrained")
    for ax, subset, sub_title in ((axes[0][0], data, title), *(((axes[0][1], later, "zoom: after phase 1"),)
                                                                 if later else ())):
        for label, _, vx, vy, tx, ty in subset:
            color = f"C{[d[0] for d in data].index(label)}"
            ax.plot(vx, vy, "o-", ms=4, lw=1.6, color=color, label=f"{label} (val)")
            if tx:
                ax.plot(tx, ty, lw=1.0, alpha=0.45, color=color, label=f"{label} (train)")
        _two_phase_axis(ax, sub_title, legend_size=8)
    return _save(fig, Path(path))


# ================================================================================================ mom plot
class RunCurves:
    """What ``mom plot`` draws of one run: its metrics rows and its training FLOPs per token (analytic, see
    :func:`mom.model.flops.count`; None when the run's configs are not there)."""
    def __init__(self, run_dir: str | os.PathLike, label: str):

        self.dir, self.label = Path(run_dir), label
        if not self.dir.is_dir():
            raise MomError(f"{self.dir}: no such run directory")
        if not (self.dir / METRICS).is_file():
            raise MomError(f"{self.dir}: not a training run (no {METRICS}; give the --out directory of mom train)")
        self.rows = read_metrics(self.dir)
        self.train = [r for r in self.rows if r.get("type") == "train"]
        self.val = [r for r in self.rows if r.get("type") == "val"]
        if not self.train and not self.val:
            raise MomError(f"{self.dir}: no metrics rows yet (the run has not logged a step or an evaluation)")
        self.flops_per_token = None
        if (self.dir / "config.json").is_file() and (self.dir / "train_config.json").is_file():
            mcfg = MoMConfig.load(self.dir / "config.json")
            seq_len = TrainConfig.load(self.dir / "train_config.json").seq_len or mcfg.n_ctx
            self.flops_per_token = count(mcfg, seq_len).train_flops_per_token

    def routing(self) -> tuple[list[int], list[float], list[float]]:
        """Tokens, mean real modules per token and mean SKIP share over the routed (chunk, step, half)s, per row."""
        rows = _routing_rows(self.train)
        return ([r["tokens"] for r in rows],
                [sum(e["modules_per_token"] for e in r["routing"]) / len(r["routing"]) for r in rows],
                [sum(e["skip"] for e in r["routing"]) / len(r["routing"]) for r in rows])


def run_labels(run_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """Each run's directory name, or its path where two runs share a name."""
    names = [Path(d).name or str(d) for d in run_dirs]
    return [str(d) if names.count(n) > 1 else n for n, d in zip(names, run_dirs)]


def _curves(ax, runs: list[RunCurves], x_of, key: str, with_train: bool) -> bool:
    """Validation ``key`` (and the smoothed training loss) of each run against ``x_of(run, row)``; False when no
    run has the values."""
    drew = False
    for i, run in enumerate(runs):
        val = [r for r in run.val if key in r and x_of(run, r) is not None]
        if val:
            ax.plot([x_of(run, r) for r in val], [r[key] for r in val], "o-", ms=3.5, lw=1.5, color=f"C{i}",
                    label=f"{run.label} (val)")
            drew = True
        train = [r for r in run.train if x_of(run, r) is not None]
        if with_train and train:
            ax.plot([x_of(run, r) for r in train], _smooth([r["loss"] for r in train]), lw=1.0, alpha=0.45,
                    color=f"C{i}", label=f"{run.label} (train)")
            drew = True
    ax.grid(alpha=0.3)
    if drew:
        ax.legend(fontsize=7)
    return drew


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_runs(run_dirs: Sequence[str | os.PathLike], path: str | os.PathLike) -> Path:
    """``mom plot``: runs compared on one figure: loss against tokens and against training FLOPs, validation bits
    per byte (rows with ``val_bpb``), and routing (real modules per token and SKIP share) of routed runs."""
    runs = [RunCurves(d, label) for d, label in zip(run_dirs, run_labels(run_dirs))]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), layout="constrained")
    (ax_tok, ax_flops), (ax_bpb, ax_route) = axes
    _curves(ax_tok, runs, lambda run, r: r["tokens"], "val_loss", with_train=True)
    ax_tok.set(xlabel="tokens seen", ylabel="LM cross-entropy (nats)", title="loss against tokens")
    flops = lambda run, r: r["tokens"] * run.flops_per_token if run.flops_per_token else None  # noqa: E731
    if _curves(ax_flops, runs, flops, "val_loss", with_train=True):
        ax_flops.set(xlabel="training FLOPs (analytic: tokens × train FLOPs per token)",
                     ylabel="LM cross-entropy (nats)", title="loss against training compute")
        ax_flops.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    else:
        _no_data(ax_flops, "no run has its config.json and train_config.json")
    if _curves(ax_bpb, runs, lambda run, r: r["tokens"], "val_bpb", with_train=False):
        ax_bpb.set(xlabel="tokens seen", ylabel="bits per byte", title="validation bits per byte")
    else:
        _no_data(ax_bpb, "no val_bpb in these runs' metrics")
    routed = [(i, run) for i, run in enumerate(runs) if _routing_rows(run.train)]
    for i, run in routed:
        x, modules, skip = run.routing()
        ax_route.plot(x, modules, lw=1.5, color=f"C{i}", label=f"{run.label}: modules per token")
        ax_route.plot(x, skip, lw=1.0, ls="--", color=f"C{i}", label=f"{run.label}: SKIP share")
    if routed:
        ax_route.set(xlabel="tokens seen", ylabel="mean over routed steps",
                     title="routing: real modules per token (solid), SKIP share of picks (dashed)")
        ax_route.grid(alpha=0.3)
        ax_route.legend(fontsize=7)
    else:
        _no_data(ax_route, "no routed run (vanilla models route nothing)")
    fig.suptitle(", ".join(run.label for run in runs), fontsize=11)
    return _save(fig, Path(path))


# ================================================================================================ mom demo
def plot_demo(curves: Sequence[dict[str, Any]], path: str | os.PathLike, yardstick: float | None = None,
              title: str = "mom demo") -> Path:
    """The demo's loss figure from plain numbers (its ``demo.json``, so it can be redrawn without the runs).
    ``curves``: dicts with ``label``, ``color`` (an index), ``offset`` (tokens the stage started from),
    ``val`` and ``train`` (lists of {tokens, val_loss | loss}) and ``first`` (whether to put it in the legend:
    the first seed of each stage). Left: every stage on one tokens axis; right: a zoom on phase 2. A dashed
    horizontal line marks the unigram yardstick (knowing only token frequencies)."""
    later = [c for c in curves if c["offset"] > 0]
    fig, axes = plt.subplots(1, 2 if later else 1, figsize=(13 if later else 7.5, 4.8), squeeze=False,
                             layout="constrained")
    panels = [(axes[0][0], curves, title)] + ([(axes[0][1], later, "zoom: phase 2")] if later else [])
    for ax, subset, sub_title in panels:
        for c in subset:
            color, off = f"C{c['color']}", c["offset"]
            label = c["label"] if c.get("first", True) else None
            if c["train"]:
                ax.plot([off + r["tokens"] for r in c["train"]], _smooth([r["loss"] for r in c["train"]]), lw=1.0,
                        alpha=0.4, color=color, label=f"{label} (train)" if label else None)
            if c["val"]:
                ax.plot([off + r["tokens"] for r in c["val"]], [r["val_loss"] for r in c["val"]], "o-", ms=4,
                        lw=1.6, color=color, label=f"{label} (val)" if label else None)
        if yardstick is not None and ax is axes[0][0]:
            ax.axhline(yardstick, color="gray", ls="--", lw=1.2,
                       label=f"unigram yardstick {yardstick:.3f} (token frequencies only)")
        _two_phase_axis(ax, sub_title, legend_size=7)
    return _save(fig, Path(path))
