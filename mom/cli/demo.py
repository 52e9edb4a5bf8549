"""``mom demo`` (what ``make demo`` runs): the paper's two-phase recipe end to end, at a size a laptop CPU finishes
in about ten minutes.

1. prepare the built-in corpus (Wikipedia leads + Gutenberg books + news, ~4.9M GPT-2 tokens) into ``data/builtin``
   unless it is there already;
2. phase 1: ``mom train --config tiny`` — a 6-layer vanilla GPT-2 (d = 128) from scratch;
3. phase 2: ``mom train --config tiny-mom --init-from PHASE1`` — the same 6 layers decomposed into 1 bottom layer
   + a pool of 4 attention and 4 FFN modules assembled for H = 6 steps with top-2 GRU routing + an anchor layer
   (depth 8 at equal parameters), routers fresh;
4. the compute-matched baseline: ``mom train --config tiny --init-from PHASE1`` for the same extra tokens (the
   paper's "same extra steps"; ``--match flops`` gives the vanilla model the MoM's training FLOPs instead);
5. ``runs/demo/report.md``: validation loss and perplexity of both, how they got there, the plots, the exact
   commands, the wall time of every stage.

Each stage is an ordinary ``mom train`` command run in this process (the report lists them, so any stage can be
rerun by hand). Stages that already finished with the same settings are reused, interrupted ones resumed;
``--force`` starts everything over.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

from mom.cli.train import train_from_argv
from mom.config.model import MoMConfig, preset
from mom.config.train import TrainConfig
from mom.data.prepare import prepare
from mom.data.tokens import DEFAULT_DATA_DIR, read_meta
from mom.errors import ConfigError, MomError
from mom.extras import import_extra
from mom.fileio import atomic_write, read_json, write_json_atomic
from mom.model.flops import count
from mom.runs import RUN_FILES, read_latest, read_metrics

# Sized so that the whole demo (prepare included) takes ≲ 10 minutes on 2 CPU cores: see docs/training.md.
PHASE1_STEPS = 250
PHASE2_STEPS = 80
BATCH_SIZE = 16
SEQ_LEN = 128
PHASE1_LR = 3e-3
PHASE2_LR = 1e-3
EVAL_TOKENS = 16384


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="where the runs and report.md go "
                                                                      "(default: runs/demo)")
    p.add_argument("--data", metavar="DIR", help="dataset directory (default: the built-in corpus in data/builtin, "
                                                 "prepared on first use)")
    p.add_argument("--phase1-steps", type=int, default=PHASE1_STEPS, metavar="N",
                   help="steps of the vanilla phase 1")
    p.add_argument("--phase2-steps", type=int, default=PHASE2_STEPS, metavar="N",
                   help="steps of the MoM phase 2 (the vanilla continuation gets the same tokens, or FLOPs)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, metavar="B", help="sequences per step")
    p.add_argument("--seq-len", type=int, default=SEQ_LEN, metavar="T", help="tokens per sequence")
    p.add_argument("--eval-tokens", type=int, default=EVAL_TOKENS, metavar="N",
                   help="validation tokens per evaluation (0 = the whole val split)")
    p.add_argument("--match", choices=("tokens", "flops"), default="tokens",
                   help="what the vanilla continuation matches: the MoM's extra tokens (the paper's same extra "
                        "steps; default) or its training FLOPs")
    p.add_argument("--model-overrides", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="model fields set on all three runs (e.g. n_ctx=64 for a faster smoke test)")
    p.add_argument("--force", action="store_true", help="start every stage over")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo, overrides=())


def _stage_argv(base: list[str], out: Path, force: bool) -> tuple[list[str], str]:
    """Fresh; resumed (a checkpoint is there: reused if finished, continued if not); or forced."""
    if force:
        return base + ["--force"], "fresh (--force)"
    latest = read_latest(out) if out.is_dir() else None
    if latest is not None:
        # mom train --resume would extend a run to another max_steps; the demo's later stages were built on this
        # run as it is, so a changed step count is a changed setting (start the demo over).
        had = TrainConfig.load(latest[1] / "train_config.json").max_steps
        want = int(base[base.index("--train.max_steps") + 1])
        if had != want:
            raise ConfigError(f"--resume: {out} was trained with a different train config (max_steps: {had} in the "
                              f"run, {want} now)")
        return base + ["--resume"], "resumed/reused"
    if out.is_dir() and any((out / f).exists() for f in RUN_FILES):
        return base + ["--force"], "restarted (killed before its first checkpoint)"
    return base, "fresh"


def run_demo(args: argparse.Namespace, overrides: dict[str, dict[str, str]]) -> int:
    for name in ("phase1_steps", "phase2_steps", "batch_size", "seq_len"):
        if getattr(args, name) < 1:
            raise MomError(f"--{name.replace('_', '-')} must be ≥ 1")
    import_extra("matplotlib", "plots", "mom demo (the figures of its report)")  # now, not after minutes of training
    out = Path(args.out)
    data = args.data or str(DEFAULT_DATA_DIR)
    model_over: list[str] = []
    for item in args.model_overrides:
        k, eq, v = item.partition("=")
        if not eq:
            raise MomError(f"--model-overrides takes FIELD=VALUE, got {item!r}")
        model_over += [f"--model.{k}", v]
    t_all = time.perf_counter()
    timings: dict[str, float] = {}

    # ---- data
    t0 = time.perf_counter()
    if args.data is None and not (DEFAULT_DATA_DIR / "train.bin").is_file():
        print(f"[demo] preparing the built-in corpus into {DEFAULT_DATA_DIR}", flush=True)
        prepare(["builtin"], DEFAULT_DATA_DIR, progress=not args.no_progress)
    timings["prepare"] = time.perf_counter() - t0

    # ---- sizes: phase 2 tokens for both continuations, or FLOP-matched vanilla steps
    T, B = args.seq_len, args.batch_size
    mom_cfg, van_cfg = preset("tiny-mom"), preset("tiny")
    if model_over:
        pairs = dict(zip(model_over[::2], model_over[1::2]))
        over = {k.removeprefix("--model."): v for k, v in pairs.items()}
        mom_cfg, van_cfg = mom_cfg.replace(**over), van_cfg.replace(**over)
    mom_flops_tok = count(mom_cfg, T).train_flops_per_token
    van_flops_tok = count(van_cfg, T).train_flops_per_token
    vanilla_steps = args.phase2_steps
    if args.match == "flops":
        vanilla_steps = max(1, round(args.phase2_steps * mom_flops_tok / van_flops_tok))

    common = ["--data", data, "--train.batch_size", str(B), "--train.seq_len", str(T),
              "--train.eval_tokens", str(args.eval_tokens), "--train.log_interval", "5", *model_over]
    if args.no_progress:
        common.append("--no-progress")

    def phase2_args(steps: int) -> list[str]:
        return ["--train.max_steps", str(steps), "--train.lr", str(PHASE2_LR),
                "--train.warmup_steps", str(max(1, steps // 10)), "--train.eval_interval", str(-(-steps // 2)),
                "--train.ckpt_interval", str(-(-steps // 2))]

    runs = {
        "phase1": ["--config", "tiny", "--out", str(out / "phase1"), *common,
                   "--train.max_steps", str(args.phase1_steps), "--train.lr", str(PHASE1_LR),
                   "--train.warmup_steps", str(max(1, args.phase1_steps // 10)),
                   "--train.eval_interval", str(-(-args.phase1_steps // 3)),
                   "--train.ckpt_interval", str(-(-args.phase1_steps // 3))],
        "mom": ["--config", "tiny-mom", "--init-from", str(out / "phase1"), "--out", str(out / "mom"), *common,
                *phase2_args(args.phase2_steps)],
        "vanilla": ["--config", "tiny", "--init-from", str(out / "phase1"), "--out", str(out / "vanilla"),
                    *common, *phase2_args(vanilla_steps)],
    }
    titles = {"phase1": "phase 1: vanilla tiny from scratch",
              "mom": "phase 2: tiny-mom initialised from phase 1",
              "vanilla": "baseline: vanilla tiny continued from phase 1"}
    modes = {}
    for name, argv in runs.items():
        t0 = time.perf_counter()
        try:
            argv, mode = _stage_argv(["train", *argv], out / name, args.force)
            modes[name] = mode
            print(f"\n[demo] {titles[name]} ({mode})\n[demo] $ mom {' '.join(argv)}", flush=True)
            train_from_argv(argv[1:])
        except MomError as e:
            hint = ""
            if "--resume" in str(e) and "different" in str(e):
                hint = " (the demo's settings changed since that run: pass --force to start the demo over)"
            elif "already holds" in str(e) or "exists and is not empty" in str(e):
                hint = " (an unfinished or foreign run is in the way: pass --force to start the demo over)"
            raise MomError(f"demo stage '{name}': {e}{hint}") from None
        timings[name] = time.perf_counter() - t0

    from mom.analysis import plots  # the optional matplotlib extra

    comparison = plots.plot_comparison(
        [("phase 1 (tiny)", out / "phase1", 0),
         ("phase 2: tiny-mom", out / "mom", _final_tokens(out / "phase1")),
         ("vanilla continuation", out / "vanilla", _final_tokens(out / "phase1"))],
        out / "comparison.png", title="tiny vanilla → tiny-mom vs vanilla continuation")
    timings["total"] = time.perf_counter() - t_all
    commands = {k: ["mom", "train", *v] for k, v in runs.items()}
    report = write_report(out, data, commands, timings, modes, args, comparison)
    print(f"\n[demo] finished in {timings['total'] / 60:.1f} min; report: {report}")
    return 0


def _final_tokens(run_dir: Path) -> int:
    rows = read_metrics(run_dir)
    return max((r["tokens"] for r in rows), default=0)


def _summary(run_dir: Path, seq_len: int) -> dict[str, Any]:
    """What the report says about one run, read back from its files."""
    cfg = MoMConfig.load(run_dir / "config.json")
    rows = read_metrics(run_dir)
    val = [r for r in rows if r["type"] == "val"]
    train = [r for r in rows if r["type"] == "train"]
    info = read_json(run_dir / "run.json", "run info")
    routed = [r for r in train if r.get("routing")]
    usage = None
    if routed:
        tail = routed[-max(1, len(routed) // 4):]
        usage = {}
        for half in ("attn", "ffn"):
            vals = [e["modules_per_token"] for r in tail for e in r["routing"] if e["half"] == half]
            if vals:
                usage[half] = sum(vals) / len(vals)
    bound = count(cfg, seq_len)
    measured = count(cfg, seq_len, usage=usage) if usage else bound
    tokens = max((r["tokens"] for r in rows), default=0)
    return {
        "cfg": cfg, "info": info, "steps": max((r["step"] for r in rows), default=0), "tokens": tokens,
        "val_start": val[0]["val_loss"] if val else None, "val_end": val[-1]["val_loss"] if val else None,
        "train_end": train[-1]["loss"] if train else None, "usage": usage,
        "flops_tok": measured.train_flops_per_token, "flops_tok_bound": bound.train_flops_per_token,
        "train_flops": measured.train_flops_per_token * tokens, "params": bound.params,
        "tok_s": (sum(r["tokens_per_s"] for r in train) / len(train)) if train else None,
        "routing": routed[-1]["routing"] if routed else None,
    }


def _fmt(x: float | None, nd: int = 4) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _ppl(x: float | None) -> str:
    import math

    return "–" if x is None else f"{math.exp(x):,.1f}"


def write_report(out: Path, data: str, commands: dict[str, list[str]], timings: dict[str, float],
                 modes: dict[str, str], args: argparse.Namespace, comparison: Path) -> Path:
    import torch


    T = args.seq_len
    s = {k: _summary(out / k, T) for k in ("phase1", "mom", "vanilla")}
    meta = read_meta(data) or {}
    n_val = (Path(data) / "val.bin").stat().st_size // 2
    n_train = (Path(data) / "train.bin").stat().st_size // 2
    p1, mm, vv = s["phase1"], s["mom"], s["vanilla"]

    def row(label: str, r: dict[str, Any], stage: str) -> str:
        c = r["cfg"]
        return (f"| {label} | `{c.name}` | {r['params'] / 1e6:.2f}M | {c.depth} | {r['steps']} | {r['tokens']:,} | "
                f"{r['flops_tok'] / 1e6:.1f} | {r['train_flops'] / 1e12:.2f} | {_fmt(r['val_start'])} | "
                f"{_fmt(r['val_end'])} | {_ppl(r['val_end'])} | {timings.get(stage, 0.0):.0f} s"
                f"{' (*resumed/reused*)' if modes.get(stage) == 'resumed/reused' else ''} |")

    lines = [
        "# `mom demo` report",
        "",
        "The paper's two-phase recipe (Gong et al., EMNLP 2024) at toy scale on the built-in offline corpus: "
        "pretrain a vanilla GPT-2, decompose its layers into modules, train routers and modules together, and "
        "compare with the vanilla model trained on the same extra data.",
        "",
        f"Total wall time: **{timings['total'] / 60:.1f} min** on {os.cpu_count()} CPU core(s) "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}"
        f"{', CUDA' if torch.cuda.is_available() else ''}); stages: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "total")
        + ". " + ("Stages marked *resumed/reused* came from an earlier `mom demo`; their time is the time of "
                  "this invocation only." if any(m == "resumed/reused" for m in modes.values())
                  else ""),
        "",
        "## Result",
        "",
        "| run | config | params | depth | steps | tokens | train MFLOP/token | train TFLOP | val loss at start "
        "| final val loss | val ppl | wall |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        row("phase 1 (from scratch)", p1, "phase1"),
        row("**phase 2: MoM** (init: phase 1)", mm, "mom"),
        row("**vanilla continuation** (init: phase 1)", vv, "vanilla"),
        "",
        f"Validation: the first {args.eval_tokens:,} tokens of `val.bin` "
        f"({n_val:,} in all) as consecutive {T}-token windows, the same windows for every "
        "evaluation of every run; loss is the LM cross-entropy in nats (aux losses excluded), perplexity its exp."
        if args.eval_tokens else
        f"Validation: the whole of `val.bin` ({n_val:,} tokens) as consecutive {T}-token "
        "windows; loss is the LM cross-entropy in nats (aux losses excluded), perplexity its exp.",
        "",
        _verdict(mm, vv, args.match),
        "",
        "Train FLOPs follow the nanoGPT/PaLM convention (6 × active matmul parameters + attention, see "
        "`mom configs`); the MoM's figure uses the modules per token its routers actually picked "
        + (f"(attention {mm['usage'].get('attn', 0):.2f}, FFN {mm['usage'].get('ffn', 0):.2f} of K = "
           f"{mm['cfg'].top_k} per step, averaged over the last quarter of phase 2), "
           f"the no-SKIP upper bound being {mm['flops_tok_bound'] / 1e6:.1f} MFLOP/token. "
           if mm["usage"] else "")
        + f"Throughput here: phase 1 {p1['tok_s'] or 0:,.0f}, MoM {mm['tok_s'] or 0:,.0f}, vanilla "
        f"{vv['tok_s'] or 0:,.0f} tokens/s (training, mean over logged windows).",
        "",
        _start_note(p1, mm),
        "",
        "## What this does and does not show",
        "",
        f"- Scale: a {p1['params'] / 1e6:.1f}M-parameter model (6.4M of them the embedding / tied LM head) trained "
        f"on {p1['tokens']:,} tokens in phase 1 and {mm['tokens']:,} in phase 2, one seed. The paper trains "
        "GPT-2 small-to-large for 20k + 5k steps of 524,288 tokens. The phase-1 model here is weak "
        f"(perplexity {_ppl(p1['val_end'])}) and the comparison is a smoke test of the pipeline, not evidence "
        "for or against the paper's claims: differences of a few hundredths of a nat are within the noise of a "
        "single short run.",
        "- Everything the real experiment needs is exercised: corpus preparation, phase-1 pretraining, "
        "decomposition into a deeper MoM at equal parameters, phase-2 training with GRU routers, balance loss and "
        "SKIP, the compute-matched baseline, checkpoints, metrics and plots. For a real run use the "
        "`official-phase1`/`official-phase2` train presets on OpenWebText (see docs/training.md).",
        "",
        "## Plots",
        "",
        f"![validation loss of the three runs]({comparison.name})",
        "",
        "Phase 1: ![phase-1 loss](phase1/loss.png)",
        "",
        "Phase 2, MoM: ![MoM loss](mom/loss.png)",
        "",
        "Routing of the MoM (share of picks per module and SKIP at each assembly step, and its entropy and SKIP "
        "share over training): ![MoM routing](mom/routing.png)",
        "",
        "Vanilla continuation: ![vanilla loss](vanilla/loss.png)",
        "",
    ]
    if mm["routing"]:
        lines += ["## Routing at the end of phase 2", "",
                  "Share of picks per choice (modules m0…, then SKIP), usage entropy (nats), modules run per token:",
                  "", "| step | half | usage (m0 … SKIP) | entropy | modules/token |", "|---:|---|---|---:|---:|"]
        for e in mm["routing"]:
            lines.append(f"| {e['step']} | {e['half']} | {' '.join(f'{u:.2f}' for u in e['usage'])} | "
                         f"{e['entropy']:.3f} | {e['modules_per_token']:.2f} |")
        lines.append("")
    lines += ["## Commands", "",
              "Data: " + (f"`mom prepare --out {data}` (done by the demo on first use)" if meta else f"`{data}`")
              + f": {n_train:,} train / {n_val:,} validation tokens.",
              "", "```sh"]
    for k in ("phase1", "mom", "vanilla"):
        lines.append(" ".join(_quote(a) for a in commands[k]))
    lines += ["```", "",
              "Every run directory holds `config.json`, `train_config.json`, `run.json` (command, data, init), "
              "`metrics.jsonl`, `checkpoints/`, the final `model.safetensors` and its plots. Rerunning `mom demo` "
              "reuses finished stages; `mom demo --force` starts over.", ""]
    path = atomic_write(out / "report.md", "\n".join(lines))
    write_json_atomic(out / "summary.json", {
        k: {"config": v["cfg"].name, "steps": v["steps"], "tokens": v["tokens"], "val_loss_start": v["val_start"],
            "val_loss": v["val_end"], "train_flops": v["train_flops"], "params": v["params"]} for k, v in s.items()
    } | {"timings_s": timings, "match": args.match})
    return path


def _verdict(mm: dict[str, Any], vv: dict[str, Any], match: str) -> str:
    """The comparison in one bold sentence plus what it cost, without claiming more than one short run shows."""
    if mm["val_end"] is None or vv["val_end"] is None:
        return "**No final validation loss: a run did not finish.**"
    delta = mm["val_end"] - vv["val_end"]
    who = "the MoM" if delta < 0 else "the vanilla continuation" if delta > 0 else "neither run"
    basis = "After the same extra tokens" if match == "tokens" else "At matched training FLOPs"
    text = (f"**{basis}, {who} has the lower validation loss: {mm['val_end']:.4f} (MoM) vs {vv['val_end']:.4f} "
            f"(vanilla), Δ = {delta:+.4f} nats.**")
    if abs(delta) < 0.05:
        text += (" From one seed and this few tokens we do not read a difference under 0.05 nats as a result either "
                 "way: call it a tie.")
    ratio = mm["train_flops"] / vv["train_flops"] if vv["train_flops"] else float("nan")
    text += (f" The MoM spent {ratio:.2f}× the vanilla continuation's training FLOPs"
             + (f" on the same tokens (its H = {mm['cfg'].steps} assembly steps each run up to K = "
                f"{mm['cfg'].top_k} modules); `mom demo --match flops` gives the vanilla run the MoM's FLOPs instead."
                if match == "tokens" else "."))
    return text


def _start_note(p1: dict[str, Any], mm: dict[str, Any]) -> str:
    """What the MoM's step-0 validation loss says about the decomposition (numbers from this run)."""
    if p1["val_end"] is None or mm["val_start"] is None:
        return ""
    gap = mm["val_start"] - p1["val_end"]
    return (f"The MoM's \"val loss at start\" ({mm['val_start']:.4f}) is the phase-1 model ({p1['val_end']:.4f}) "
            f"decomposed into modules with fresh, random routers, {gap:+.4f} nats away: routing top-{mm['cfg'].top_k}"
            f" of {mm['cfg'].n_attn} modules (+ SKIP) at each of {mm['cfg'].steps} steps instead of layer h at step h"
            " computes a different function, which phase 2 starts from. With `router=\"fixed\"` and one module "
            "per step the decomposition is exact: a test (tests/test_train.py) shows it reproduces the phase-1 "
            "validation loss bit for bit.")


def _quote(a: str) -> str:
    import shlex

    return shlex.quote(a)
