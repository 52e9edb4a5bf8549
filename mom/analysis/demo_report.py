"""``OUT/report.md`` of ``mom demo``, built from ``OUT/demo.json`` alone (so ``mom demo --report-only`` can
regenerate it): per-model tables in nats, bits per byte and perplexity beside the unigram yardstick, the pairing of
MoM and vanilla continuation by seed against the seed noise, the loss figure, the MoM's routing health, fixed-prompt
generations, the phase-2 start, wall times, the machine and the exact commands.

The verdict never reads a difference smaller than the seed noise as a result: with one seed it compares against
:data:`SEED_SPREAD` (measured by a colleague at step 400 of this demo's phase 1); with several it needs at least
:data:`MIN_SEEDS` seeds, the same sign on every seed and a mean difference beyond two standard errors.
"""

from __future__ import annotations

import math
import shlex
import statistics
from pathlib import Path
from typing import Any

from mom.errors import MomError
from mom.fileio import atomic_write, read_json

FORMAT = "mom-demo"
FORMAT_VERSION = 1
SEED_SPREAD = 0.04  # nats: seed-to-seed spread of the demo's phase 1 at step 400 (see docs/log.md)
MIN_SEEDS = 3
STAGES = ("phase1", "mom", "vanilla")
LABELS = {"phase1": "phase 1: vanilla `tiny` from scratch", "mom": "phase 2: MoM (`tiny-mom`, init: phase 1)",
          "vanilla": "vanilla continuation (`tiny`, init: phase 1)"}
SHORT = {"phase1": "phase 1", "mom": "MoM", "vanilla": "vanilla cont."}


# ============================================================================================== reading
def load_demo(out: str | Path) -> dict[str, Any]:
    """``OUT/demo.json``, checked to be a demo file this version reads."""
    path = Path(out) / "demo.json"
    if not path.is_file():
        raise MomError(f"{path}: not found (run mom demo --out {out} first)")
    doc = read_json(path, "demo results", MomError)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise MomError(f"{path}: not a mom demo results file")
    if doc.get("format_version") != FORMAT_VERSION:
        raise MomError(f"{path}: format version {doc.get('format_version')!r} is not supported (this mom reads "
                       f"{FORMAT_VERSION}); run mom demo again")
    return doc


def final(run: dict[str, Any], key: str = "val_loss") -> float | None:
    return run["val"][-1].get(key) if run.get("val") else None


def start(run: dict[str, Any], key: str = "val_loss") -> float | None:
    return run["val"][0].get(key) if run.get("val") else None


def yardstick(doc: dict[str, Any]) -> tuple[float | None, float | None]:
    """(nats, bits per byte) of the unigram yardstick on the validation windows every run scored."""
    for s in doc["seeds"]:
        for name in STAGES:
            for r in s["stages"][name].get("val", []):
                if r.get("unigram_loss") is not None:
                    return r["unigram_loss"], r.get("unigram_bpb")
    return None, None


def pairs(doc: dict[str, Any]) -> list[tuple[int, float, float]]:
    """(seed, MoM final val loss, vanilla continuation final val loss) of every seed that has both."""
    out = []
    for s in doc["seeds"]:
        m, v = final(s["stages"]["mom"]), final(s["stages"]["vanilla"])
        if m is not None and v is not None:
            out.append((s["seed"], m, v))
    return out


# ============================================================================================== verdict
def verdict(doc: dict[str, Any]) -> str:
    """Who ended lower, by how much, against the seed noise, in a few sentences (the first one bold)."""
    ps = pairs(doc)
    if not ps:
        return "**No final validation loss for a MoM / vanilla pair: a run did not finish.**"
    basis = "after the same extra tokens" if doc["settings"]["match"] == "tokens" else "at matched training FLOPs"
    diffs = [m - v for _, m, v in ps]
    n = len(diffs)
    if n == 1:
        d, (_, m, v) = diffs[0], ps[0]
        if abs(d) < SEED_SPREAD:
            text = (f"**One seed, {basis}: MoM {m:.4f} vs vanilla continuation {v:.4f} nats, Δ = {d:+.4f} (MoM − "
                    f"vanilla). That is below ~{SEED_SPREAD} nats, the seed-to-seed spread measured at step 400: it "
                    "cannot be read as a win for either model — a tie at this scale.**")
        else:
            who = "the MoM" if d < 0 else "the vanilla continuation"
            text = (f"**One seed, {basis}: {who} ends lower, MoM {m:.4f} vs vanilla continuation {v:.4f} nats, Δ = "
                    f"{d:+.4f} (MoM − vanilla).** That is beyond the ~{SEED_SPREAD}-nat seed-to-seed spread measured "
                    f"at step 400, but it is one seed: rerun with `--seeds {MIN_SEEDS}` before calling it a result.")
    else:
        mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
        se = sd / math.sqrt(n)
        lower = sum(d < 0 for d in diffs)
        same_sign = lower in (0, n)
        who = "the MoM" if mean < 0 else "the vanilla continuation"
        stats = (f"mean Δ = {mean:+.4f} nats (MoM − vanilla) over {n} seeds, sd {sd:.4f}, standard error "
                 f"{se:.4f}; the MoM is lower on {lower} of {n} seeds")
        if n >= MIN_SEEDS and same_sign and abs(mean) > 2 * se:
            text = f"**{who[0].upper() + who[1:]} ends lower {basis}: {stats}.**"
        elif n < MIN_SEEDS:
            text = (f"**No verdict from {n} seeds ({basis}): {stats}.** The project reads a comparison from "
                    f"≥ {MIN_SEEDS} seeds.")
        else:
            text = (f"**No clear winner {basis}: {stats} — within the seed noise (the difference is not beyond two "
                    "standard errors on every seed's side).**")
    return text + " " + _cost(doc)


def _cost(doc: dict[str, Any]) -> str:
    s0 = doc["seeds"][0]["stages"]
    mm, vv = s0["mom"], s0["vanilla"]
    if not vv.get("train_flops"):
        return ""
    ratio = mm["train_flops"] / vv["train_flops"]
    if doc["settings"]["match"] == "tokens":
        return (f"The MoM spent {ratio:.2f}× the vanilla continuation's training FLOPs on the same tokens (its H = "
                f"{mm['assembly_steps']} assembly steps each run up to K = {mm['top_k']} modules); "
                "`mom demo --match flops` gives the vanilla run the MoM's FLOPs instead.")
    return f"Training FLOPs of the two continuations: MoM {ratio:.2f}× the vanilla run's."


# ============================================================================================== tables
def _f(x: float | None, nd: int = 4) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _ppl(x: float | None) -> str:
    return "–" if x is None else f"{math.exp(min(x, 50)):,.1f}"


def _below(x: float | None, uni: float | None) -> str:
    return "–" if x is None or uni is None else f"{uni - x:+.3f}"


def model_table(doc: dict[str, Any], seed_doc: dict[str, Any]) -> list[str]:
    """One seed's three models: final validation in nats, bits per byte, perplexity, distance below the yardstick,
    size, depth and the stage's training tokens and FLOPs."""
    uni, _ = yardstick(doc)
    lines = ["| model | val loss (nats) | bits per byte | perplexity | below yardstick (nats) | params | depth | "
             "steps | tokens | train MFLOP/token | train TFLOP | wall |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in STAGES:
        r = seed_doc["stages"][name]
        reused = " (*reused*)" if r.get("mode") == "resumed/reused" else ""
        lines.append(f"| {LABELS[name]} | {_f(final(r))} | {_f(final(r, 'val_bpb'), 3)} | {_ppl(final(r))} | "
                     f"{_below(final(r), uni)} | {r['params'] / 1e6:.2f}M | {r['depth']} | {r['steps']} | "
                     f"{r['tokens']:,} | {r['flops_per_token'] / 1e6:.1f} | {r['train_flops'] / 1e12:.3f} | "
                     f"{r.get('wall_s', 0):.0f} s{reused} |")
    return lines


def seed_table(doc: dict[str, Any]) -> list[str]:
    """MoM vs vanilla continuation paired by seed, with the mean and the spread."""
    ps = pairs(doc)
    lines = ["| seed | MoM val loss | vanilla cont. val loss | Δ (MoM − vanilla) |", "|---:|---:|---:|---:|"]
    lines += [f"| {s} | {m:.4f} | {v:.4f} | {m - v:+.4f} |" for s, m, v in ps]
    diffs = [m - v for _, m, v in ps]
    if len(diffs) >= 2:
        col = list(zip(*[(m, v) for _, m, v in ps]))
        lines.append(f"| mean | {statistics.fmean(col[0]):.4f} | {statistics.fmean(col[1]):.4f} | "
                     f"{statistics.fmean(diffs):+.4f} |")
        lines.append(f"| sd across seeds | {statistics.stdev(col[0]):.4f} | {statistics.stdev(col[1]):.4f} | "
                     f"{statistics.stdev(diffs):.4f} |")
        lines += ["", f"{len(diffs)} seeds; the differences' standard error is "
                  f"{statistics.stdev(diffs) / math.sqrt(len(diffs)):.4f} nats."]
    elif diffs:
        lines += ["", f"**This is one seed.** No spread can be measured from one seed; a colleague measured a "
                  f"seed-to-seed spread of ~{SEED_SPREAD} nats at step 400 of this phase 1, so a difference below "
                  f"that cannot be read. `mom demo --seeds {MIN_SEEDS}` runs the comparison on {MIN_SEEDS} seeds."]
    return lines


def start_section(doc: dict[str, Any]) -> list[str]:
    """Val loss at phase-2 step 0 against the end of phase 1, per seed (the cost of the decomposition)."""
    lines = ["| seed | phase 1 end | MoM at phase-2 step 0 | gap | vanilla cont. at step 0 |",
             "|---:|---:|---:|---:|---:|"]
    for s in doc["seeds"]:
        st = s["stages"]
        p1, m0, v0 = final(st["phase1"]), start(st["mom"]), start(st["vanilla"])
        gap = None if p1 is None or m0 is None else m0 - p1
        lines.append(f"| {s['seed']} | {_f(p1)} | {_f(m0)} | {'–' if gap is None else f'{gap:+.4f}'} | {_f(v0)} |")
    mm = doc["seeds"][0]["stages"]["mom"]
    lines += ["", f"The MoM at its step 0 is the phase-1 model decomposed into pools of {mm['n_modules']} modules "
              f"routed top-{mm['top_k']} at each of {mm['assembly_steps']} steps ({mm.get('init') or 'decomposed'}), "
              "with the routers as the `tiny-mom` preset starts them: the gap is what the decomposition costs before "
              "phase 2 trains anything. The vanilla continuation starts exactly where phase 1 ended."]
    return lines


def routing_section(doc: dict[str, Any]) -> list[str]:
    """The MoM's routing health at the end of phase 2, per seed and half."""
    lines = ["Measured over the validation windows with the final MoM (`mom.analysis.routes.collect_stats`); in "
             "brackets the last training row's value (`routing_health` in metrics.jsonl, one training batch). "
             "*same path*: share of tokens taking the same modules at every assembly step (near 1: the routers mix "
             "rather than assemble); *SKIP*: share of picks that skip; *entropy*: usage entropy over the allowed "
             "choices, normalised to 0…1; *step divergence*: mean Jensen–Shannon divergence between the steps' "
             "usage, in bits (0: every step uses the modules alike).", "",
             "| seed | half | same path | SKIP | entropy | step divergence (bits) |", "|---:|---|---:|---:|---:|---:|"]
    for s in doc["seeds"]:
        val, last = s.get("routing") or {}, s["stages"]["mom"].get("routing_health_last_train_row") or {}
        for half in ("attn", "ffn"):
            h, t = val.get(half) or {}, last.get(half) or {}
            cells = [f"{_f(h.get(k), 3)} ({_f(t.get(k), 3)})" for k in ("same_path", "skip", "entropy",
                                                                         "step_js_bits")]
            lines.append(f"| {s['seed']} | {'attention' if half == 'attn' else 'FFN'} | " + " | ".join(cells) + " |")
    tokens = (doc["seeds"][0].get("routing") or {}).get("tokens")
    if tokens:
        lines += ["", f"Validation pass: {tokens:,} tokens per seed."]
    return lines


def generations_section(doc: dict[str, Any]) -> list[str]:
    g = doc.get("generations")
    if not g:
        return ["(no generations recorded)"]
    sp = g["sampling"]
    lines = [f"Seed {g.get('seed', 0)}'s models, through the inference engine with the model's own tokenizer (as "
             f"`mom generate`): up to {g['max_new_tokens']} new tokens, greedy and sampled (temperature "
             f"{sp['temperature']}, top-k {sp['top_k']}, seed {sp['seed']}). The prompt is in brackets.", ""]
    for i, prompt in enumerate(g["prompts"]):
        lines += [f"**Prompt {i + 1}:** `{prompt}`", "", "```text"]
        for name in STAGES:
            rows = g["models"].get(name)
            if not rows:
                continue
            for kind in ("greedy", "sampled"):
                text = " ".join(rows[i][kind].split())
                lines.append(f"{SHORT[name]:>14} {kind:>7}: [{prompt}]{text}")
        lines += ["```", ""]
    return lines


def timing_section(doc: dict[str, Any]) -> list[str]:
    m, t = doc["machine"], doc["timings_s"]
    lines = ["| stage | how it ran | wall |", "|---|---|---:|", f"| prepare the data | "
             f"{'prepared now' if doc['data'].get('prepared_now') else 'reused'} | {t.get('prepare', 0):.0f} s |"]
    for s in doc["seeds"]:
        for name in STAGES:
            r = s["stages"][name]
            lines.append(f"| seed {s['seed']}: {LABELS[name]} | {r.get('mode', '?')} | {r.get('wall_s', 0):.0f} s |")
    lines += [f"| routing health and generations | | {t.get('measure', 0):.0f} s |",
              f"| **total** | | **{t.get('total', 0) / 60:.1f} min** |", "",
              f"Machine: {m['cpu_cores']} CPU cores ({m['processor']}, {m['platform']}), Python {m['python']}, "
              f"torch {m['torch']}{', CUDA available' if m.get('cuda') else ', no CUDA'}. Load average (1, 5, 15 "
              f"min) at the start: {m.get('load_before')}, at the end: {m.get('load_after')} — the machine may be "
              "shared, so wall times are upper bounds of an idle run. A reused stage's time is that of this "
              "invocation (reading it back), not of its training."]
    return lines


def commands_section(doc: dict[str, Any]) -> list[str]:
    d = doc["data"]
    lines = ["```sh"]
    if d.get("command"):
        lines.append(d["command"])
    for s in doc["seeds"]:
        for name in STAGES:
            lines.append(" ".join(shlex.quote(a) for a in s["stages"][name]["command"]))
    return lines + ["```", "", "The demo adds `--resume` (a stage already there) or `--force` (`mom demo --force`) "
                    "as each run's state asks. Every run directory holds `config.json`, `train_config.json`, "
                    "`run.json` (command, data, init), `metrics.jsonl`, `checkpoints/`, the final "
                    "`model.safetensors`, `tokenizer.json` and its plots. Rerunning `mom demo` reuses finished stages; "
                    "`mom demo --force` starts over; "
                    "`mom demo --report-only` rebuilds this report from `demo.json`."]


# ============================================================================================== the report
def render(doc: dict[str, Any], figure: str | None) -> str:
    """The whole report.md from ``demo.json``'s contents; ``figure``: the loss figure's file name, or None."""
    uni, uni_bpb = yardstick(doc)
    d, st = doc["data"], doc["settings"]
    n = len(doc["seeds"])
    lines = [
        "# `mom demo` report", "",
        "The paper's two-phase recipe (Gong et al., EMNLP 2024) at toy scale on the built-in offline corpus: "
        "pretrain a vanilla GPT-2 (`tiny`: 6 layers, d = 128), decompose its layers into module pools (`tiny-mom`: "
        "1 layer + 4 attention and 4 FFN modules assembled for 6 steps + an anchor layer: depth 8 from the same "
        "layers, plus the routers' parameters), train routers and modules together, and compare with the vanilla "
        "model trained on the same "
        f"extra data. {n} seed{'s' if n > 1 else ''}.", "",
        f"Data: `{d['dir']}`, tokenizer {d.get('tokenizer', '?')} ({_count(d.get('train_tokens'))} train / "
        f"{_count(d.get('val_tokens'))} validation tokens"
        + (f", {d['val_bytes'] / d['val_tokens']:.2f} bytes per token" if d.get("val_bytes") and d.get("val_tokens")
           else "") + "). Validation: "
        + ("the whole val split" if not st["eval_tokens"] else f"the first {st['eval_tokens']:,} tokens of val")
        + f" as consecutive {st['seq_len']}-token windows, the same windows at every evaluation of every run.", "",
        f"**Unigram yardstick** (a model that knows only the train split's token frequencies, add-one smoothed) on "
        f"these windows: **{_f(uni)} nats per token = {_f(uni_bpb, 3)} bits per byte**. A model must get well "
        "below it before its text is more than word salad.", "",
        "## Verdict", "", verdict(doc), "",
        "## Models", "",
    ]
    for s in doc["seeds"]:
        if n > 1:
            lines += [f"### Seed {s['seed']}", ""]
        lines += model_table(doc, s) + [""]
    lines += ["Val loss: LM cross-entropy in nats at the end of the stage (aux losses excluded); bits per byte = "
              "nats × tokens / (bytes × ln 2); perplexity = exp(nats); *below yardstick*: unigram yardstick minus "
              "val loss. Train FLOPs of the stage follow the nanoGPT/PaLM convention (6 × active matmul parameters "
              "+ attention); the MoM's uses the modules per token its routers actually picked (last quarter of "
              "phase 2). Params count the tied embedding once.", "",
              "## MoM vs vanilla continuation, by seed", ""] + seed_table(doc) + [""]
    lines += ["## Where phase 2 starts", ""] + start_section(doc) + [""]
    if figure:
        lines += ["## Loss curves", "", f"![train and validation loss of every stage]({figure})", "",
                  "Train (thin) and validation (dots) loss of every stage over tokens seen, phase 2 shifted by "
                  "the phase-1 tokens; the dashed line is the unigram yardstick. Each run directory also has its own "
                  "`loss.png`; the MoM's `routing.png` shows its routing over training.", ""]
    lines += ["## Routing health of the MoM at the end of phase 2", ""] + routing_section(doc) + [""]
    lines += ["## Generations", ""] + generations_section(doc)
    p1, mm = doc["seeds"][0]["stages"]["phase1"], doc["seeds"][0]["stages"]["mom"]
    lines += ["## What this does and does not show", "",
              f"A ~{p1['params'] / 1e6:.1f}M-parameter model trained on {_count(p1['tokens'])} tokens, then "
              f"{_count(mm['tokens'])} more. The paper trains GPT-2 small to large for 20k + 5k steps of 524,288 "
              "tokens. "
              "This demo exercises the whole pipeline (a corpus BPE, phase-1 pretraining, the decomposition into a "
              "deeper MoM from the same layers, phase-2 training with routers, the compute-matched baseline, "
              "checkpoints, metrics, generation) and reports what it measured; it is not evidence for or against "
              "the paper's claims at scale.", "",
              "## Wall time and machine", ""] + timing_section(doc) + [""]
    lines += ["## Commands", ""] + commands_section(doc) + [""]
    return "\n".join(lines)


def _count(x: int | None) -> str:
    return "?" if x is None else f"{x:,}"


def curves(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every stage of every seed as :func:`mom.analysis.plots.plot_demo` draws it."""
    out = []
    for i, s in enumerate(doc["seeds"]):
        offset = s["stages"]["phase1"]["tokens"]
        for c, name in enumerate(STAGES):
            r = s["stages"][name]
            out.append({"label": SHORT[name], "color": c, "offset": 0 if name == "phase1" else offset,
                        "val": r["val"], "train": r["train"], "first": i == 0})
    return out


def write_report(out: str | Path, doc: dict[str, Any]) -> Path:
    """``OUT/loss.png`` (when matplotlib is there) and ``OUT/report.md`` from ``doc``; returns the report's path."""
    out = Path(out)
    figure = None
    try:
        from mom.analysis import plots  # the optional matplotlib extra
    except ImportError:
        plots = None
    if plots is not None:
        uni, _ = yardstick(doc)
        figure = plots.plot_demo(curves(doc), out / "loss.png", yardstick=uni,
                                 title="tiny → tiny-mom vs vanilla continuation").name
    return atomic_write(out / "report.md", render(doc, figure))


def console_summary(doc: dict[str, Any]) -> str:
    """The summary table and the verdict as plain text for the end of the console output."""
    uni, uni_bpb = yardstick(doc)
    lines = [f"unigram yardstick: {_f(uni)} nats = {_f(uni_bpb, 3)} bits per byte",
             f"{'seed':>4}  {'model':<22} {'val nats':>9} {'bpb':>6} {'ppl':>8} {'below yardstick':>16}"]
    for s in doc["seeds"]:
        for name in STAGES:
            r = s["stages"][name]
            lines.append(f"{s['seed']:>4}  {SHORT[name] + (' (' + r['config'] + ')'):<22} {_f(final(r)):>9} "
                         f"{_f(final(r, 'val_bpb'), 3):>6} {_ppl(final(r)):>8} {_below(final(r), uni):>16}")
    return "\n".join(lines + ["", verdict(doc).replace("**", "")])
