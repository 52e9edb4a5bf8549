#!/usr/bin/env python
"""The router experiment of issue #18: which router options make `tiny-mom` assemble without collapsing.

    python scripts/routers_experiment.py --out runs/routers --jobs 2        # ≈ 1 h on the 2-core box
    python scripts/routers_experiment.py --out runs/routers --report-only   # the report from the JSON alone

Four arms, each a set of `mom train` flags on top of `tiny-mom` (docs/training.md "Routers"):

* ``plain``  the paper's GRU router (the defaults before this experiment: no step signal, raw input, fresh init);
* ``step``   + the step index reaching the router (``router_step both``: per-step logit bias and step embedding);
* ``norm``   + the router's own RMSNorm of its input;
* ``init``   + the function-preserving phase-2 start (``router_init layer_map``);
* ``map``    ``step`` + the function-preserving start, without the input norm (added after seed 0 showed the
             norm arm collapsing from scratch as often as ``plain``);
* ``bal``    ``step`` with a 5× balance coefficient (0.05; added after ``step`` collapsed from scratch on seed 2);
* ``tau1``   ``step`` with the router temperature 1.0 (the paper's τ is 0.2), ``tau05`` with 0.5;
* ``rlr``    ``step`` with the routers' learning rate × 0.1 (``--train.router_lr_mult``);
* ``tb``     ``tau1`` with the 0.05 balance coefficient; ``trlr`` ``tau1`` with ``router_lr_mult`` 0.3;
* ``z``      ``step`` with the router z-loss at 0.001 (ST-MoE's coefficient);
* ``cent``   ``step`` with the router input centred (``router_norm centered``: a running mean over tokens removed,
             then RMSNorm), the option the from-scratch diagnosis points to (docs/log.md); ``cmap`` = ``cent`` with
             the layer-map start (its phase-2 form, ``map`` + centring); ``cfast`` = ``cent`` with the running mean
             moving 0.5 of the way to each batch's mean (``router_center_momentum``; ``cent``: 0.1).

The arms from ``bal`` on were added for the from-scratch collapse question (2026-12-03, second and third sessions);
an arm that warned on one seed is not run on the others (the question is whether a setting is collapse-free on
every seed). ``tau05`` and ``z`` are defined but not run; ``cfast`` was stopped after a warning (docs/log.md).

Each arm is trained twice per seed, on the built-in corpus tokenised with a 4,096-token BPE (the small-vocabulary
regime of issue #22):

* **phase 2** from one vanilla phase-1 model (the demo's phase 1: ``tiny``, 800 steps × 16 × 256 tokens), the
  validation loss at phase-2 step 0 (how far the start is from where phase 1 ended) and at the end, and the
  routing health (same-path share, step divergence) at the end; and the vanilla continuation for the same tokens;
* **from scratch** (the collapse check): 300 steps × 8 × 128 tokens at lr 3e-3, the number of router-collapse
  warnings and the largest share of tokens one real module took at the end; and the same over a 1,000-step
  schedule (``--only long``, run for ``step`` and ``cent``: does centring's early cost close, does it stay
  collapse-free), with the paired gap at every validation.

Every run is an ordinary ``mom train`` command (one thread each, ``--jobs`` at a time); a finished run is reused, an
interrupted one resumed. The results JSON (``--json``) is written from the runs' metrics.jsonl files; the markdown
report (``--report``) is generated from the JSON alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MOM = [sys.executable, "-m", "mom.cli"]
SEEDS = (0, 1, 2)
def router_flags(step: str = "both", norm: str = "none", init: str = "random", *more: str) -> list[str]:
    """An arm: the three router options of issue #18, then any further ``mom train`` flags."""
    return ["--model.router_step", step, "--model.router_norm", norm, "--model.router_init", init, *more]


ARMS = {
    "plain": router_flags("none"),
    "step": router_flags(),
    "norm": router_flags(norm="rmsnorm"),
    "init": router_flags(norm="rmsnorm", init="layer_map"),
    "map": router_flags(init="layer_map"),
    "bal": router_flags("both", "none", "random", "--model.balance_coef", "0.05"),
    "tau1": router_flags("both", "none", "random", "--model.temperature", "1.0"),
    "tau05": router_flags("both", "none", "random", "--model.temperature", "0.5"),
    "rlr": router_flags("both", "none", "random", "--train.router_lr_mult", "0.1"),
    "tb": router_flags("both", "none", "random", "--model.temperature", "1.0", "--model.balance_coef", "0.05"),
    "trlr": router_flags("both", "none", "random", "--model.temperature", "1.0", "--train.router_lr_mult", "0.3"),
    "cent": router_flags(norm="centered"),
    "cmap": router_flags(norm="centered", init="layer_map"),
    "z": router_flags("both", "none", "random", "--model.z_coef", "0.001"),
    "cfast": router_flags("both", "centered", "random", "--model.router_center_momentum", "0.5"),
}
PHASE1 = ["--config", "tiny", "--model.n_ctx", "256", "--train.max_steps", "800", "--train.batch_size", "16",
          "--train.seq_len", "256", "--train.tokens_per_step", "4096", "--train.lr", "3e-3",
          "--train.warmup_steps", "40", "--train.eval_interval", "200", "--train.ckpt_interval", "200"]
PHASE2 = ["--model.n_ctx", "256", "--train.max_steps", "100", "--train.batch_size", "16", "--train.seq_len", "256",
          "--train.tokens_per_step", "4096", "--train.lr", "1e-3", "--train.warmup_steps", "10",
          "--train.eval_interval", "50", "--train.ckpt_interval", "50", "--train.log_interval", "10"]
# From-scratch run families, name → steps: the collapse check, and the same runs longer (does ``cent``'s early cost
# close with training?); only the schedule's length differs (``from_scratch``)
FROM_SCRATCH = {"scratch": 300, "long": 1000}


def from_scratch(steps: int) -> list[str]:
    return ["--config", "tiny-mom", "--model.n_ctx", "128", "--train.max_steps", str(steps), "--train.batch_size", "8",
            "--train.seq_len", "128", "--train.tokens_per_step", "1024", "--train.lr", "3e-3",
            "--train.warmup_steps", "30", "--train.eval_interval", "150", "--train.ckpt_interval", "100",
            "--train.log_interval", "10"]


COMMON = ["--train.eval_tokens", "0", "--no-progress"]


@dataclass
class Run:
    name: str
    argv: list[str]
    steps: int
    dep: str | None = None


def plan(out: Path, data: Path, p1: Path) -> dict[str, Run]:
    runs: dict[str, Run] = {}
    runs["phase1"] = Run("phase1", [*PHASE1, "--train.seed", "0"], 800)
    for s in SEEDS:
        for arm, flags in ARMS.items():
            runs[f"p2-{arm}-s{s}"] = Run(f"p2-{arm}-s{s}", ["--config", "tiny-mom", "--init-from", str(p1), *PHASE2,
                                                            *flags, "--train.seed", str(s)], 100, "phase1")
            for family, steps in FROM_SCRATCH.items():
                name = f"{family}-{arm}-s{s}"
                runs[name] = Run(name, [*from_scratch(steps), *flags, "--train.seed", str(s)], steps)
        runs[f"p2-vanilla-s{s}"] = Run(f"p2-vanilla-s{s}", ["--config", "tiny", "--init-from", str(p1), *PHASE2,
                                                            "--train.seed", str(s)], 100, "phase1")
    for r in runs.values():
        r.argv = [*r.argv, *COMMON, "--data", str(data), "--out", str(run_dir(out, r.name, p1))]
    return runs


def run_dir(out: Path, name: str, p1: Path) -> Path:
    return p1 if name == "phase1" else out / name


# ------------------------------------------------------------------------------------------------ running
def finished_step(run_dir: Path) -> int | None:
    """The step of the run's latest complete checkpoint (None: no run there)."""
    from mom.runs import read_latest

    latest = read_latest(run_dir) if run_dir.is_dir() else None
    return None if latest is None else latest[0]


def train(run: Run, out: Path, p1: Path, log) -> None:
    step = finished_step(run_dir(out, run.name, p1))
    if step is not None and step >= run.steps:
        return
    argv = [*MOM, "train", *run.argv, *(["--resume"] if step is not None else ["--force"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    t0 = time.time()
    log(f"start {run.name}" + (f" (resume from step {step})" if step is not None else ""))
    with open(out / f"{run.name}.log", "a", encoding="utf-8") as f:
        rc = subprocess.run(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    log(f"{'done' if rc == 0 else f'FAILED (rc {rc})'} {run.name} in {time.time() - t0:.0f} s")
    if rc != 0:
        raise SystemExit(f"{run.name} failed: see {out / run.name}.log")


def run_all(runs: dict[str, Run], out: Path, p1: Path, jobs: int, only: str | None, arms: list[str] | None,
            seeds: list[int] | None) -> None:
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        line = f"{datetime.datetime.now():%H:%M:%S} {msg}"
        print(line, flush=True)
        with open(out / "progress.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    todo = [r for r in runs.values() if (only is None or r.name.startswith(only))
            and (arms is None or r.name == "phase1" or r.name.split("-")[1] in arms)
            and (seeds is None or r.name == "phase1" or int(r.name.rsplit("-s", 1)[1]) in seeds)]
    todo = [runs[d] for d in sorted({r.dep for r in todo if r.dep} - {r.name for r in todo})] + todo
    first = [r for r in todo if r.dep is None]
    later = [r for r in todo if r.dep is not None]
    # phase 1 first in one slot while the from-scratch runs use the others; phase-2 runs after phase 1
    first.sort(key=lambda r: r.name != "phase1")
    with ThreadPoolExecutor(jobs) as pool:
        for fut in [pool.submit(train, r, out, p1, log) for r in first]:
            fut.result()
        for fut in [pool.submit(train, r, out, p1, log) for r in later]:
            fut.result()


# ------------------------------------------------------------------------------------------------ results
def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            pass
    return rows


def summarise(run_dir: Path) -> dict[str, Any]:
    rows = read_rows(run_dir)
    vals = {}
    for r in rows:  # a resumed run logs its redone steps again: the last row of a step wins
        if r.get("type") == "val":
            vals[r["step"]] = r
    train_rows = [r for r in rows if r.get("type") == "train"]
    last = train_rows[-1] if train_rows else {}
    first_val, last_val = vals[min(vals)], vals[max(vals)]
    # per (chunk, half), each real module's largest token share over the steps that could collapse (more real
    # modules than picks; SKIP is the last share): the largest of all, and the least-used module's (a module no
    # step uses is dead weight, the harm a collapse does)
    best: dict[tuple, list[float]] = {}
    for e in last.get("routing", []):
        if e["choices"] > e["picks"]:
            shares = e["token_share"][:-1]
            best[(e["chunk"], e["half"])] = [max(a, b) for a, b in zip(best.get((e["chunk"], e["half"]), shares),
                                                                       shares)]
    top_share = max((max(v) for v in best.values()), default=None)
    least_used = min((min(v) for v in best.values()), default=None)
    # a resumed run logs the steps it redoes again (bit-exact, so the same warnings): count each episode once
    collapses = list({(r["step"], r["chunk"], r["routing_step"], r["half"], r["module"]): r for r in rows
                      if r.get("type") == "warning" and r.get("kind") == "router_collapse"}.values())
    return {
        "step0_val": first_val["val_loss"], "step0_bpb": first_val.get("val_bpb"),
        "val": last_val["val_loss"], "bpb": last_val.get("val_bpb"), "val_step": last_val["step"],
        "unigram": last_val.get("unigram_loss"), "unigram_bpb": last_val.get("unigram_bpb"),
        "collapse_warnings": len(collapses),
        "first_collapse_step": collapses[0]["step"] if collapses else None,
        "top_module_share": top_share,
        "least_used_share": least_used,
        "health": last.get("routing_health"),
        "val_by_step": {str(k): v["val_loss"] for k, v in sorted(vals.items())},
    }


def collect(runs: dict[str, Run], out: Path, p1: Path) -> dict[str, Any]:
    results = {}
    for name in runs:
        step = finished_step(run_dir(out, name, p1))
        if step is not None and step >= runs[name].steps:
            results[name] = summarise(run_dir(out, name, p1))
    return {
        "format": 1,
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {_torch_version()}, one thread per run",
        "arms": {k: " ".join(v) for k, v in ARMS.items()},
        "phase1": " ".join(PHASE1), "phase2": " ".join(PHASE2),
        **{family: " ".join(from_scratch(steps)) for family, steps in FROM_SCRATCH.items()},
        "seeds": list(SEEDS),
        "defaults": _router_defaults(),
        "runs": results,
    }


def _router_defaults() -> dict[str, Any]:
    from mom.config.model import MOM_ROUTER_DEFAULTS

    return dict(MOM_ROUTER_DEFAULTS)


def _torch_version() -> str:
    import torch

    return torch.__version__


# ------------------------------------------------------------------------------------------------ report
def _ms(xs: list[float], nd: int = 4) -> str:
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:.{nd}f} (1 seed)"
    return f"{statistics.mean(xs):.{nd}f} ± {statistics.stdev(xs):.{nd}f}"


def _get(res: dict, name: str, key: str, half: str | None = None) -> float | None:
    r = res["runs"].get(name)
    if r is None:
        return None
    if half is not None:
        h = (r.get("health") or {}).get(half) or {}
        return h.get(key)
    return r.get(key)


def _vals(res: dict, prefix: str, key: str, half: str | None = None) -> list[float]:
    xs = [_get(res, f"{prefix}-s{s}", key, half) for s in res["seeds"]]
    return [x for x in xs if x is not None]


def _paired(res: dict, a: str, b: str, key: str) -> list[float]:
    out = []
    for s in res["seeds"]:
        x, y = _get(res, f"{a}-s{s}", key), _get(res, f"{b}-s{s}", key)
        if x is not None and y is not None:
            out.append(x - y)
    return out


def verdict(diffs: list[float]) -> str:
    """A paired difference is read only when its mean exceeds twice its standard error (and 3 seeds exist)."""
    if len(diffs) < 3:
        return f"{len(diffs)} seed(s): not read"
    m, sd = statistics.mean(diffs), statistics.stdev(diffs)
    se = sd / math.sqrt(len(diffs))
    if abs(m) > 2 * se:
        return ("better" if m < 0 else "worse") + f" (mean {m:+.4f}, 2·SE {2 * se:.4f})"
    return f"within noise (mean {m:+.4f}, 2·SE {2 * se:.4f})"


def scratch_table(res: dict[str, Any], family: str, steps: int) -> list[str]:
    """The from-scratch table of one run family (``scratch``: 300 steps, ``long``: 1,000), or nothing if none ran."""
    arms = [arm for arm in ARMS if _vals(res, f"{family}-{arm}", "val")]
    if not arms:
        return []
    lines = [
        "",
        f"## From scratch: does it collapse? ({steps:,} steps × 8 × 128 tokens, lr 3e-3)",
        "",
        "A collapse warning: one real module took > 90% of the tokens at 3 metrics rows in a row (every 10 steps), "
        "at a step that allows more modules than picks (under `layer_map`, a step's own layer-map module does not "
        "count). Δ: paired by seed against `step` (negative = lower loss).",
        "",
        "| arm | seeds with a collapse warning | warnings (per seed) | first warning at step | largest module share "
        "at the end | least-used module's largest step share at the end | val at end (nats) | bpb at end | "
        "Δ vs step | verdict | attn same-path | attn step JS (bits) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        pre = f"{family}-{arm}"
        w = _warnings(res, pre)
        first = [_get(res, f"{pre}-s{s}", "first_collapse_step") for s in res["seeds"] if f"{pre}-s{s}" in res["runs"]]
        diffs = _paired(res, pre, f"{family}-step", "val") if arm != "step" else []
        lines.append("| " + " | ".join([
            f"`{arm}`", f"{sum(1 for x in w if x)} of {len(w)}", ", ".join(str(x) for x in w) or "—",
            ", ".join("—" if x is None else str(x) for x in first), _ms(_vals(res, pre, "top_module_share"), 2),
            _ms(_vals(res, pre, "least_used_share"), 2), _ms(_vals(res, pre, "val")), _ms(_vals(res, pre, "bpb")),
            _ms(diffs) if diffs else "—", verdict(diffs) if diffs else "—",
            _ms(_vals(res, pre, "same_path", "attn"), 3), _ms(_vals(res, pre, "step_js_bits", "attn"), 3)]) + " |")
    # the longer runs ask whether a gap to `step` closes with training: their paired gap at every validation
    curves = {arm: _paired_curve(res, family, arm) for arm in arms if arm != "step"} if family == "long" else {}
    for arm, by_step in curves.items():
        if by_step:
            lines += ["", f"`{arm}` − `step` by validation step (paired by seed, nats): " + "; ".join(
                f"{k}: {_ms(v)}" for k, v in by_step.items()) + "."]
    return lines


def _warnings(res: dict, prefix: str) -> list[int]:
    """Collapse warnings per seed of the runs of ``prefix`` that finished."""
    return [x for s in res["seeds"] if (x := _get(res, f"{prefix}-s{s}", "collapse_warnings")) is not None]


def _paired_curve(res: dict, family: str, arm: str) -> dict[int, list[float]]:
    """Per validation step both arms logged, the paired differences arm − step over the seeds that have both."""
    out: dict[int, list[float]] = {}
    for s in res["seeds"]:
        a, b = res["runs"].get(f"{family}-{arm}-s{s}"), res["runs"].get(f"{family}-step-s{s}")
        if not a or not b or "val_by_step" not in a or "val_by_step" not in b:
            continue
        for k, v in a["val_by_step"].items():
            if k in b["val_by_step"]:
                out.setdefault(int(k), []).append(v - b["val_by_step"][k])
    return dict(sorted(out.items()))


# Two phase-2 arms whose paired difference is below this many nats are called level even when it is above the noise
# (the reproduction's tolerance for "matches" is 0.05 nats; a tenth of it)
LEVEL = 0.005


def verdicts(res: dict[str, Any]) -> list[str]:
    """The rules the presets' router options were chosen by, applied to the numbers above: in phase 2 the arms
    with 3 seeds that no arm beats above the noise, from scratch the arms collapse-free on every one of 3 seeds."""
    full = [a for a in ARMS if len(_vals(res, f"p2-{a}", "val")) == len(res["seeds"]) >= 3]

    def beats(b: str, a: str) -> bool:  # b ends lower than a above the noise and by more than the level margin
        d = _paired(res, f"p2-{a}", f"p2-{b}", "val")
        return verdict(d).startswith("worse") and statistics.mean(d) > LEVEL

    unbeaten = [a for a in full if not any(beats(b, a) for b in full if b != a)]
    lines = ["", "## Verdict (rules applied to the tables above)", ""]
    if full:
        lines.append(f"- Phase 2, arms with every seed that no other arm beats by more than {LEVEL} nats above the "
                     "noise (paired): " + (", ".join(f"`{a}`" for a in unbeaten) or "none")
                     + f" (of {', '.join(f'`{a}`' for a in full)}).")
        for i, a in enumerate(unbeaten):
            for b in unbeaten[i + 1:]:
                d = _paired(res, f"p2-{b}", f"p2-{a}", "val")
                lines.append(f"  `{b}` − `{a}`: {_ms(d)} nats, {verdict(d)}.")
    for family, steps in FROM_SCRATCH.items():
        free = [a for a in ARMS if len(w := _warnings(res, f"{family}-{a}")) >= 3 and not any(w)]
        if any(_vals(res, f"{family}-{a}", "val") for a in ARMS):
            lines.append(f"- From scratch, {steps:,} steps: arms without a collapse warning on any of 3 seeds: "
                         + (", ".join(f"`{a}`" for a in free) or "none") + ".")
    defaults = res.get("defaults")
    if defaults:
        step, norm = defaults.get("router_step", "none"), defaults.get("router_norm", "none")
        names = {" ".join(v): k for k, v in ARMS.items()}
        p2 = names.get(" ".join(router_flags(step, norm, "layer_map")), "no arm")
        scratch = names.get(" ".join(router_flags(step, norm, "random")), "no arm")
        options = ", ".join(f"{k}={v}" for k, v in defaults.items())
        lines.append(f"- The MoM presets' router options when this JSON was written ({options}) are `{p2}` in phase 2 "
                     f"(`auto` = the layer-map start when decomposed) and `{scratch}` from scratch.")
    return lines


def report(res: dict[str, Any]) -> str:
    runs = res["runs"]
    uni = next((r["unigram"] for r in runs.values() if r.get("unigram")), None)
    uni_bpb = next((r["unigram_bpb"] for r in runs.values() if r.get("unigram_bpb")), None)
    p1 = runs.get("phase1")
    lines = [
        "# The router experiment (issue #18): ours, measured",
        "",
        f"Generated {res['generated']} from `docs/results/routers.json` by `python scripts/routers_experiment.py "
        f"--report-only`. Machine: {res['machine']}. Data: the built-in corpus with a 4,096-token BPE; validation = "
        "the whole val split (60,266 tokens).",
        "",
        f"Unigram yardstick (knowing only token frequencies): **{uni:.4f} nats = {uni_bpb:.4f} bpb**."
        if uni else "",
        f"Phase 1 (`tiny`, one model, seed 0): val **{p1['val']:.4f} nats = {p1['bpb']:.4f} bpb**, "
        f"{uni - p1['val']:.2f} nats below the yardstick." if p1 and uni else "Phase 1: not finished.",
        "",
        "Arms (flags on top of `--config tiny-mom`):",
        "",
        *[f"- `{k}`: `{v}`" for k, v in res["arms"].items()],
        "",
        f"## Phase 2 from the phase-1 model ({len(res['seeds'])} seeds: the seed sets the routers' initialisation "
        "and the data order; the phase-1 model is shared)",
        "",
        "Mean ± sd over seeds. Δ: paired by seed against `plain` (negative = lower loss); a difference is read when "
        "|mean| > 2 standard errors.",
        "",
        "| arm | val at step 0 (nats) | − phase-1 end | val at end (nats) | bpb at end | Δ vs plain | verdict | "
        "attn same-path | ffn same-path | attn step JS (bits) | ffn step JS (bits) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    missing = []
    for arm in [*ARMS, "vanilla"]:
        pre = f"p2-{arm}"
        if not _vals(res, pre, "val"):
            missing.append(arm)
            continue
        s0 = _vals(res, pre, "step0_val")
        start = [x - p1["val"] for x in s0] if p1 else []
        diffs = _paired(res, pre, "p2-plain", "val") if arm != "plain" else []
        row = [f"`{arm}`" if arm != "vanilla" else "vanilla continuation (`tiny`)", _ms(s0), _ms(start, 3),
               _ms(_vals(res, pre, "val")), _ms(_vals(res, pre, "bpb")), _ms(diffs) if diffs else "—",
               verdict(diffs) if diffs else "—"]
        for key in ("same_path", "step_js_bits"):
            for half in ("attn", "ffn"):
                row.append(_ms(_vals(res, pre, key, half), 3) if arm != "vanilla" else "—")
        row = row[:7] + [row[7], row[8], row[9], row[10]]
        lines.append("| " + " | ".join(row) + " |")
    if missing:
        lines += ["", "Not run in phase 2: " + ", ".join(f"`{a}`" for a in missing) + "."]
    for arm in ARMS:
        diffs = _paired(res, f"p2-{arm}", "p2-vanilla", "val")
        if diffs and arm in ("plain", "map"):
            lines += ["", f"`{arm}` against the vanilla continuation (`tiny` from the same phase-1 model, the same "
                      f"tokens; equal parameters up to the routers, not equal FLOPs): Δ {_ms(diffs)} nats, "
                      f"{verdict(diffs)}."]
    for family, steps in FROM_SCRATCH.items():
        lines += scratch_table(res, family, steps)
    lines += verdicts(res)
    lines += ["", f"Runs finished: {len(runs)}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/routers", help="where the runs go")
    p.add_argument("--data", default="data/bpe4096", help="a dataset prepared with --tokenizer bpe:4096")
    p.add_argument("--phase1", help="the phase-1 run (default OUT/phase1; trained there if absent)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--only", help="only runs whose name starts with this (and phase 1)")
    p.add_argument("--arms", help="only these arms, comma-separated (plain, step, norm, init, vanilla)")
    p.add_argument("--seeds", help="only these seeds, comma-separated")
    p.add_argument("--json", default=str(REPO / "docs" / "results" / "routers.json"))
    p.add_argument("--report", default=str(REPO / "docs" / "results-routers.md"))
    p.add_argument("--report-only", action="store_true", help="regenerate the report from the JSON")
    p.add_argument("--collect-only", action="store_true",
                   help="write the JSON from the finished runs in --out and the report, training nothing")
    args = p.parse_args(argv)
    out, data = Path(args.out).resolve(), Path(args.data).resolve()
    p1 = Path(args.phase1).resolve() if args.phase1 else out / "phase1"
    runs = plan(out, data, p1)
    if not args.report_only:
        if not (data / "train.bin").is_file():
            subprocess.run([*MOM, "prepare", "--tokenizer", "bpe:4096", "--out", str(data)], check=True, cwd=REPO)
        if not args.collect_only:
            run_all(runs, out, p1, args.jobs, args.only, args.arms.split(",") if args.arms else None,
                    [int(x) for x in args.seeds.split(",")] if args.seeds else None)
        res = collect(runs, out, p1)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.json + ".tmp")
        tmp.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
        tmp.replace(args.json)
    res = json.loads(Path(args.json).read_text(encoding="utf-8"))
    tmp = Path(args.report + ".tmp")
    tmp.write_text(report(res), encoding="utf-8")
    tmp.replace(args.report)
    print(f"wrote {args.json} and {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
