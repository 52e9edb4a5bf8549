"""The reproduction's markdown report, generated from its results JSON alone."""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable

from scripts.reproduce.experiments import PAPER


# ================================================================================================ report
def _mean_sd(xs: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def fmt(xs: list[float], nd: int = 3, scale: float = 1.0) -> str:
    """``mean ± sd`` of a list (sample sd over seeds), or the single value; "—" for none."""
    xs = [x * scale for x in xs if x is not None]
    if not xs:
        return "—"
    m, s = _mean_sd(xs)
    return f"{m:.{nd}f}" if s is None else f"{m:.{nd}f} ± {s:.{nd}f}"


class Table:
    """Records of one setting, by run name and seed."""

    def __init__(self, res: dict[str, Any]):
        self.res = res
        self.by: dict[str, dict[int, dict]] = {}
        for r in res["runs"]:
            self.by.setdefault(r["name"], {})[r["seed"]] = r

    def has(self, name: str) -> bool:
        return name in self.by

    def vals(self, name: str, get: Callable[[dict], float | None]) -> list[float]:
        return [v for s in sorted(self.by.get(name, {})) if (v := get(self.by[name][s])) is not None]

    def paired(self, a: str, b: str, get: Callable[[dict], float | None]) -> list[float]:
        """Per-seed differences a − b over the seeds both have."""
        seeds = sorted(set(self.by.get(a, {})) & set(self.by.get(b, {})))
        out = []
        for s in seeds:
            x, y = get(self.by[a][s]), get(self.by[b][s])
            if x is not None and y is not None:
                out.append(x - y)
        return out

    def seeds(self, name: str) -> int:
        return len(self.by.get(name, {}))

    def label(self, name: str) -> str:
        return next(iter(self.by[name].values()))["label"] if name in self.by else name


def val(r):
    return r.get("val_loss")


def proxy(task: str, key: str):
    return lambda r: (r.get("proxies") or {}).get(task, {}).get(key)


def glue_avg(r):
    p = r.get("proxies")
    if not p:
        return None
    return (p["rt-polarity"]["score"] + p["bible-para"]["score"]) / 2


def rouge_avg(r):
    p = (r.get("proxies") or {}).get("news-xsum")
    return None if not p else (p["rouge1"] + p["rouge2"] + p["rougeL"]) / 3


def verdict(diffs: list[float], better: str, what: str, a: str, b: str, unit: str = "", nd: int = 3,
            scale: float = 1.0, *, neutral: bool = False, pairs: str = "paired seed(s)", bare: bool = False) -> str:
    """One plain sentence about a paired comparison: a − b per seed; ``better`` says which sign supports the claim
    ("lower" or "higher"). A difference counts as a result when its mean exceeds two standard errors. ``neutral``:
    there is no claim of the paper to test, only say whether the difference is clear."""
    d = [x * scale for x in diffs]
    if not d:
        return f"{a} vs {b}: no paired runs."
    m, s = _mean_sd(d)
    n = len(d)
    direction = "lower" if m < 0 else "higher"
    supports = (m < 0) == (better == "lower") and m != 0
    spread = f" ± {s:.{nd}f}" if s is not None else ""
    text = f"{a}'s {what} is {direction} than {b}'s by {abs(m):.{nd}f}{spread}{unit} (mean ± sd of {n} {pairs})"
    if bare:  # the caller gives the verdict
        return text
    if s is None or n < 2:
        return text + ": one seed, no verdict."
    se = s / math.sqrt(n) if s > 0 else 0.0
    clear = abs(m) > 2 * se
    if neutral:
        return text + (": a clear difference at this scale." if clear else ": within the seed noise.")
    if supports and clear:
        return text + ": **reproduces at this scale**."
    if supports:
        return text + ": same direction as the claim but within the seed noise (not a result either way)."
    if clear:
        return text + ": **does not reproduce at this scale** (the opposite holds)."
    return text + ": **does not reproduce at this scale** (no clear difference; opposite direction on average)."


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(cells: list[str], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(cells) - 1)
    return [_row(cells), _row(["---:" if a == "r" else "---" for a in align])]


def router_flops(cfg_dict: dict) -> float:
    """Forward FLOPs per token of a config's routers (2 × their matmul weights, every step of every chunk)."""
    from mom.config.model import MoMConfig
    from mom.model.flops import router_matmul_params

    cfg = MoMConfig.from_dict(cfg_dict)
    if cfg.is_vanilla:
        return 0.0
    return 2.0 * cfg.chunks * cfg.steps * sum(router_matmul_params(cfg, h) for h in ("attn", "ffn"))


def mib(b: float) -> float:
    return b / 2 ** 20


def build_report(res: dict[str, Any]) -> str:
    """The markdown report, from the results JSON alone (same JSON → same text)."""
    st = res["setting"]
    tb = Table(res)
    invs = res.get("invocations", [])
    wall_runs = sum(r.get("wall_seconds", 0.0) for r in res["runs"])
    last = invs[-1] if invs else {}
    mach = last.get("machine", {})
    commits = sorted({r.get("commit") or "?" for r in res["runs"]})
    seeds = sorted({r["seed"] for r in res["runs"]})
    L: list[str] = [
        f"# Reproduction of Mixture-of-Modules at small scale (`{st['name']}` setting)",
        "",
        "Generated by `scripts/reproduce.py` from "
        f"`docs/results/{st['name']}.json` (every number below is read from that file; regenerate with "
        f"`python scripts/reproduce.py --setting {st['name']} --report-only`). Paper numbers are the ones stated in "
        "Gong et al., EMNLP 2024 and are labelled as the paper's.",
        "",
        f"- **Machine:** {mach.get('processor', '?')}, {mach.get('cpus', '?')} CPU cores"
        f"{', GPU ' + mach['gpu'] if mach.get('gpu') else ''}, torch {mach.get('torch', '?')}, "
        f"{mach.get('threads', '?')} torch thread(s); shared with other work while it ran.",
        f"- **Dates:** {invs[0].get('started', '?') if invs else '?'} → {last.get('finished', 'unfinished')}"
        f" ({len(invs)} invocation(s)); **wall time** of all runs together {wall_runs / 60:.1f} min"
        + "".join(f"; invocation {i + 1}: {inv['wall_seconds'] / 60:.1f} min" for i, inv in enumerate(invs)
                  if inv.get("wall_seconds") is not None) + ".",
        f"- **Code:** commit(s) {', '.join(commits)}"
        + (" (\"+uncommitted changes\": the shared checkout had uncommitted edits under `mom/` or in the script "
           "when the run started)" if any("+" in c for c in commits) else "") + ".",
        f"- **Scale:** `{st['scale']}` models (tiny: 6-layer d=128 GPT-2, 7.7M parameters of which 6.4M are the "
        "embedding / tied LM head), the built-in offline corpus (~4.9M GPT-2 tokens: Wikipedia leads, Gutenberg "
        f"books, news), seeds {', '.join(map(str, seeds))}. Phase 1: {st['phase1_steps']} steps, phase 2: "
        f"{st['phase2_steps']} steps, further training after pruning: {st['finetune_steps']} steps, each step "
        f"{st['batch']} × {st['seq_len']} tokens; lr {st['phase1_lr']:g} (phase 1 and from scratch) / "
        f"{st['phase2_lr']:g} (phase 2), warm-up 10% then cosine, the paper's AdamW. Validation loss: mean LM "
        f"cross-entropy (nats) on the first {st['eval_tokens']:,} tokens of `val.bin`, the same windows for every "
        "model.",
        f"- **Proxies, not GLUE/XSUM:** `rt-polarity` (SST-2-like, accuracy) and `bible-para` (MRPC-like, mean of "
        f"F1 and accuracy), each fine-tuned 1 epoch on the first {st['glue_train']} training examples and scored on "
        f"the first {st['glue_eval']} dev examples; \"GLUE-proxy avg\" is their mean. `news-xsum` (XSUM recipe on "
        f"news articles): fine-tuned 1 epoch on {st['xsum_train']} pairs, greedy summaries of {st['xsum_eval']} "
        f"test documents (≤ {st['xsum_new_tokens']} tokens), ROUGE F1. All ×100. One fine-tuning per model and "
        "seed (the seed of the run), so the ± includes both pretraining and fine-tuning variance.",
        "- **Statistics:** mean ± sample standard deviation over seeds. A comparison is called a result when the "
        "mean of the per-seed paired differences exceeds two standard errors; otherwise it is reported as within "
        "noise.",
        "",
        "What was shrunk: nothing of the experiment list was dropped; every experiment runs on every seed. To fit "
        "the setting's time budget, step counts, batch, validation tokens and the proxies' training and evaluation "
        "sets were shrunk (numbers above), the proxies are fine-tuned once per model and seed for one epoch, "
        "summaries are greedy (no beam search), and the paper-scale FLOPs/memory comparison is config level (random "
        "weights) rather than of trained GPT-2-large models.",
        "",
        "Honest scale note: these are models of a few million parameters trained for a few hundred thousand "
        "tokens; the paper trains GPT-2 small…large for 20k + 5k steps of 524,288 tokens. A claim that does not "
        "reproduce here is not refuted at the paper's scale, and one that does is not confirmed at it.",
        "",
    ]
    L += _section_main(tb, st)
    L += _section_efficiency(tb, res)
    L += _section_grid(tb)
    L += _section_chunking(tb)
    L += _section_two_phase(tb, st)
    L += _section_pruning(tb)
    L += _section_router(tb)
    L += _section_runs(tb)
    return "\n".join(L).rstrip() + "\n"


MAIN = ("vanilla-cont", "mom-p", "mom-e", "layerskip", "mod", "moe", "universal")


SHORT = {"vanilla-cont": "vanilla", "mom-p": "MoM_P", "mom-e": "MoM_E", "layerskip": "layer-skip", "mod": "MoD",
         "moe": "MoE", "universal": "parameter sharing"}


def _section_main(tb: Table, st: dict) -> list[str]:
    names = [n for n in MAIN if tb.has(n)]
    if not names:
        return []
    L = ["## 1. Main comparison: MoM_P and MoM_E vs vanilla and the baselines", "",
         f"Every model sees the same tokens: phase 1 ({st['phase1_steps']} steps of vanilla) + "
         f"{st['phase2_steps']} phase-2 steps from the phase-1 weights (decomposed per the layer map; MoE experts "
         f"upcycled), except parameter sharing, trained from scratch for {st['phase1_steps'] + st['phase2_steps']}"
         " steps (one shared module cannot take six layers' weights).", ""]
    L += _header(["model", "params", "depth", "fwd MFLOP/token", "val loss", "rt-polarity acc", "bible-para",
                  "GLUE-proxy avg", "ROUGE-1", "ROUGE-2", "ROUGE-L", "seeds"])
    for n in names:
        L.append(_row([tb.label(n), fmt(tb.vals(n, lambda r: r["params"] / 1e6), 2) + "M",
                       fmt(tb.vals(n, lambda r: r["depth"]), 0),
                       fmt(tb.vals(n, lambda r: r["fwd_flops_per_token"] / 1e6), 2), fmt(tb.vals(n, val), 4),
                       fmt(tb.vals(n, proxy("rt-polarity", "accuracy")), 1, 100),
                       fmt(tb.vals(n, proxy("bible-para", "score")), 1, 100), fmt(tb.vals(n, glue_avg), 1, 100),
                       fmt(tb.vals(n, proxy("news-xsum", "rouge1")), 2, 100),
                       fmt(tb.vals(n, proxy("news-xsum", "rouge2")), 2, 100),
                       fmt(tb.vals(n, proxy("news-xsum", "rougeL")), 2, 100), str(tb.seeds(n))]))
    L += ["", "FLOPs: 2 × active matmul parameters + 4·d·T per attention core (T = the training sequence length), "
              "with the modules per token the routers actually picked on validation windows.", ""]
    L += _baseline_note(tb, names)
    L += ["### Claims", ""]
    L += _header(["claim", "paper", "ours (Δ = model − vanilla, paired by seed)", "verdict"], "llll")
    if tb.has("mom-p") and tb.has("vanilla-cont"):
        pair = ("mom-p", "vanilla-cont")
        # (claim, paper key, metric, its name, its label in the "ours" column, decimals, reference kind, why it is
        # untestable when neither model beats the no-learning reference)
        for claim, paper, metric, what, label, nd, ref, untestable in (
                ("GLUE", "glue", glue_avg, "GLUE-proxy avg", "GLUE-proxy avg points", 1, "glue",
                 ", but neither model's fine-tuning beats a constant prediction on either proxy, so this is a "
                 "difference between two classifiers that learned nothing: **not testable at this scale**."),
                ("XSUM", "rouge", rouge_avg, "ROUGE (mean of R-1/2/L)", "ROUGE (mean of R-1/2/L)", 2, "xsum",
                 ", but neither model's summaries beat LEAD-1 (the document's first sentence) on ROUGE-1: "
                 "**not testable at this scale**.")):
            d = tb.paired(*pair, metric)
            testable = any(_beats_reference(tb, n, ref) for n in pair)
            text = verdict(d, "higher", what, "MoM_P", "vanilla", " points", nd, 100, bare=not testable)
            L.append(_row([f"MoM_P vs vanilla: {claim}", PAPER[paper], f"{fmt(d, nd, 100)} {label}",
                           text if testable else text + untestable]))
    for n, who in (("mom-p", "MoM_P"), ("mom-e", "MoM_E")):
        if tb.has(n) and tb.has("vanilla-cont"):
            d = tb.paired(n, "vanilla-cont", val)
            L.append(_row([f"{who} beats vanilla (val loss)", PAPER["beats_vanilla"] + " (one size here)",
                           f"{fmt(d, 4)} nats", verdict(d, "lower", "val loss", who, "vanilla", " nats", 4)]))
    for b in ("layerskip", "mod", "moe", "universal"):
        if tb.has("mom-p") and tb.has(b):
            d = tb.paired("mom-p", b, val)
            claim = "—" if b == "universal" else "MoM beats the MoD, MoE and layer-skip baselines"
            L.append(_row([f"MoM_P beats {SHORT[b]} (val loss)", claim, f"{fmt(d, 4)} nats (MoM_P − baseline)",
                           verdict(d, "lower", "val loss", "MoM_P", SHORT[b], " nats", 4)]))
    return L + [""]


def _beats_reference(tb: Table, name: str, which: str) -> bool:
    """Whether a model's mean proxy score is above the no-learning reference (see proxy_baselines): on either
    classification proxy by more than 1 point, or LEAD-1's ROUGE-1 for summaries. True when there is no reference."""
    b = tb.res.get("proxy_baselines")
    if not b:
        return True
    if which == "glue":
        for task, key in (("rt-polarity", "accuracy"), ("bible-para", "score")):
            ref = max(v[key] for v in b[task].values())
            v = tb.vals(name, proxy(task, key))
            if v and statistics.fmean(v) > ref + 0.01:
                return True
        return False
    v = tb.vals(name, proxy("news-xsum", "rouge1"))
    return bool(v) and statistics.fmean(v) > b["news-xsum"]["lead-1"]["rouge1"]


def _baseline_note(tb: Table, names: list[str]) -> list[str]:
    """The untrained references of the proxies, and which models' proxy scores do not beat them."""
    b = tb.res.get("proxy_baselines")
    if not b:
        return []
    rt = max(v["accuracy"] for v in b["rt-polarity"].values())
    bp = max(v["score"] for v in b["bible-para"].values())
    lead = b["news-xsum"]["lead-1"]
    text = (f"References without learning, on the same evaluation subsets: rt-polarity accuracy of the better "
            f"constant prediction {100 * rt:.1f}; bible-para score of the better constant prediction "
            f"{100 * bp:.1f}; news-xsum LEAD-1 (the document's first sentence) ROUGE-1/2/L "
            f"{100 * lead['rouge1']:.2f} / {100 * lead['rouge2']:.2f} / {100 * lead['rougeL']:.2f}.")
    flat = []
    for task, key, ref in (("rt-polarity", "accuracy", rt), ("bible-para", "score", bp)):
        at = [SHORT.get(n, n) for n in names
              if (v := tb.vals(n, proxy(task, key))) and statistics.fmean(v) <= ref + 0.01]
        if at:
            flat.append(f"{task}: {', '.join(at)}")
    if flat:
        text += (" Models whose mean proxy score is not above the constant prediction (+1 point), i.e. whose "
                 "fine-tuning learned nothing measurable at this size — " + "; ".join(flat) + ".")
    return [text, ""]


def _section_efficiency(tb: Table, res: dict) -> list[str]:
    names = [n for n in ("vanilla-cont", "mom-p", "mom-e") if tb.has(n)]
    ps = res.get("paper_scale")
    if len(names) < 2 and not ps:
        return []
    L = ["## 2. FLOPs and memory vs vanilla", ""]
    if names:
        r0 = next(iter(tb.by[names[0]].values()))
        b, t = r0["memory_shape"]
        L += [f"Trained models of this reproduction; forward peak memory measured on a {b} × {t} batch of validation "
              f"tokens ({r0['memory_method']}: parameters + every live tensor, fp32). At this size the {b} × {t} × "
              f"{r0['config']['vocab_size']} logits ({mib(r0['logits_bytes']):.0f} MiB) dominate the peak, so the "
              "last column subtracts them (what is left is parameters and the model's own activations).", ""]
        L += _header(["model", "params", "fwd MFLOP/token", "of which routers", "Δ FLOPs vs vanilla", "fwd peak MiB",
                      "Δ memory vs vanilla", "fwd activations MiB", "peak − logits MiB"])
        for n in names:
            dfl = tb.paired(n, "vanilla-cont", lambda r: r["fwd_flops_per_token"])
            base = tb.vals("vanilla-cont", lambda r: r["fwd_flops_per_token"])
            dmem = tb.paired(n, "vanilla-cont", lambda r: r["fwd_peak_bytes"])
            bmem = tb.vals("vanilla-cont", lambda r: r["fwd_peak_bytes"])
            rel_f = [x / y for x, y in zip(dfl, base)] if n != "vanilla-cont" else []
            rel_m = [x / y for x, y in zip(dmem, bmem)] if n != "vanilla-cont" else []
            L.append(_row([tb.label(n), fmt(tb.vals(n, lambda r: r["params"] / 1e6), 2) + "M",
                           fmt(tb.vals(n, lambda r: r["fwd_flops_per_token"] / 1e6), 2),
                           fmt(tb.vals(n, lambda r: router_flops(r["config"]) / 1e6), 2),
                           (fmt(rel_f, 1, 100) + "%") if rel_f else "—",
                           fmt(tb.vals(n, lambda r: mib(r["fwd_peak_bytes"])), 1),
                           (fmt(rel_m, 1, 100) + "%") if rel_m else "—",
                           fmt(tb.vals(n, lambda r: mib(r["fwd_activation_bytes"])), 1),
                           fmt(tb.vals(n, lambda r: mib(r["fwd_peak_bytes"] - r["logits_bytes"])), 1)]))
        L.append("")
    if ps:
        g, e = ps["gpt2-large"], ps["mom-e-large"]
        df = e["fwd_flops_per_token"] / g["fwd_flops_per_token"] - 1
        dm = e["fwd_peak_bytes"] / g["fwd_peak_bytes"] - 1
        da = e["fwd_activation_bytes"] / g["fwd_activation_bytes"] - 1
        L += [f"At the paper's size (config level: our MoM_E-large layout vs GPT-2-large, random weights, one forward "
              f"of {ps['batch']} × {ps['seq_len']} tokens on {ps['device']}, {g['memory_method']}; FLOPs analytic "
              "assuming no SKIP picks, an upper bound for MoM_E):", ""]
        L += _header(["model", "params", "depth", "fwd GFLOP/token", "fwd peak MiB", "fwd activations MiB"])
        for name, r in (("GPT-2-large", g), ("MoM_E-large (ours)", e)):
            L.append(_row([name, f"{r['params'] / 1e6:.1f}M", str(r["depth"]), f"{r['fwd_flops_per_token'] / 1e9:.3f}",
                           f"{mib(r['fwd_peak_bytes']):.0f}", f"{mib(r['fwd_activation_bytes']):.1f}"]))
        L += ["", f"In an inference forward the layers' activations are freed as the pass goes, so the peak is the "
                  f"parameters ({100 * g['param_bytes'] / g['fwd_peak_bytes']:.1f}% of GPT-2-large's peak here) plus "
                  "the largest transient tensor (the logits); at equal parameters the peak cannot differ much. The "
                  "brief does not say how the paper measured its forward memory (batch, length, what is counted).",
              "", "### Claims", ""]
        L += _header(["claim", "paper", "ours", "verdict"], "llll")
        L.append(_row(["MoM_E forward FLOPs vs GPT-2-large", PAPER["flops"], f"{df:+.1%} (config level)",
                       _plain_rel(df, -0.16, "forward FLOPs")]))
        L.append(_row(["MoM_E forward memory vs GPT-2-large", PAPER["memory"],
                       f"{dm:+.1%} peak (activations {da:+.1%})", _plain_rel(dm, -0.42, "forward peak memory")]))
    if names and "mom-e" in names and "vanilla-cont" in names:
        e = statistics.fmean(tb.vals("mom-e", lambda r: r["fwd_flops_per_token"]))
        rt = statistics.fmean(tb.vals("mom-e", lambda r: router_flops(r["config"])))
        v = statistics.fmean(tb.vals("vanilla-cont", lambda r: r["fwd_flops_per_token"]))
        c = next(iter(tb.by["mom-e"].values()))["config"]
        note = (f"At this width the routers are not small: MoM_E's GRU routers (hidden size {c['router_hidden']} "
                f"for d = {c['d_model']}) cost {rt / 1e6:.2f} of its {e / 1e6:.2f} MFLOP/token; without them it "
                f"would be at {(e - rt) / v - 1:+.1%} vs vanilla.")
    if names and "mom-e" in names:
        dfl = tb.paired("mom-e", "vanilla-cont", lambda r: r["fwd_flops_per_token"])
        dmem = tb.paired("mom-e", "vanilla-cont", lambda r: r["fwd_peak_bytes"])
        if not ps:
            L += ["### Claims", ""] + _header(["claim", "paper", "ours", "verdict"], "llll")
        L.append(_row(["MoM_E forward FLOPs vs vanilla (tiny, trained)", PAPER["flops"],
                       f"{fmt(dfl, 2, 1e-6)} MFLOP/token",
                       verdict(dfl, "lower", "forward FLOPs/token", "MoM_E", "vanilla", " MFLOP", 2, 1e-6)]))
        L.append(_row(["MoM_E forward memory vs vanilla (tiny, trained)", PAPER["memory"],
                       f"{fmt(dmem, 2, 1 / 2**20)} MiB",
                       verdict(dmem, "lower", "forward peak memory", "MoM_E", "vanilla", " MiB", 2, 1 / 2 ** 20)]))
        L += ["", note]
    return L + [""]


def _plain_rel(ours: float, paper: float, what: str) -> str:
    if ours < 0 and paper < 0:
        return (f"{what} is lower, as in the paper ({ours:+.1%} vs the paper's {paper:+.0%}): **reproduces in "
                f"direction**{'' if ours <= paper / 2 else ', smaller in size'}.")
    return f"{what} is not lower ({ours:+.1%}; paper {paper:+.0%}): **does not reproduce**."


def _section_grid(tb: Table) -> list[str]:
    if not any(tb.has(f"grid-K{k}H{h}") for k in (1, 2, 3) for h in (1, 2, 4)):
        return []
    L = ["## 3. K × H grid (MoM_P layout, phase 2 from the same phase-1 model)", "",
         "Validation loss (nats), mean ± sd over seeds; in brackets the forward MFLOP/token with measured routing. "
         "The paper searches the same grid at GPT-2 scale (no single number for it in the brief: —).", ""]
    L += _header(["K \\ H", "H = 1", "H = 2", "H = 4"])
    best = []
    for k in (1, 2, 3):
        cells = [f"K = {k}"]
        for h in (1, 2, 4):
            n = f"grid-K{k}H{h}"
            v = tb.vals(n, val)
            cells.append(f"{fmt(v, 4)} [{fmt(tb.vals(n, lambda r: r['fwd_flops_per_token'] / 1e6), 1)}]"
                         if v else "—")
            if v:
                best.append((statistics.fmean(v), k, h))
        L.append(_row(cells))
    L.append("")
    if best:
        m, k, h = min(best)
        L.append(f"Lowest mean validation loss: K = {k}, H = {h} ({m:.4f}).")
        L.append("")
        deeper = [tb.paired(f"grid-K{kk}H4", f"grid-K{kk}H1", val) for kk in (1, 2, 3)]
        flat = [x for d in deeper for x in d]
        if flat:
            L.append("Deeper assembly (H = 4 vs H = 1, pooled over K, paired by seed; MoM_P rests on depth helping): "
                     + verdict(flat, "lower", "val loss", "H = 4", "H = 1", " nats", 4, neutral=True,
                               pairs="(seed, K) pairs"))
        wider = [x for hh in (1, 2, 4) for x in tb.paired(f"grid-K3H{hh}", f"grid-K1H{hh}", val)]
        if wider:
            L.append("")
            L.append("More modules per step (K = 3 vs K = 1, pooled over H, paired by seed): "
                     + verdict(wider, "lower", "val loss", "K = 3", "K = 1", " nats", 4, neutral=True,
                               pairs="(seed, H) pairs"))
    return L + [""]


def _section_chunking(tb: Table) -> list[str]:
    names = [(n, "MoM_P" if n == "mom-p" else tb.label(n))
             for n in ["mom-p"] + [f"chunks{c}-{a}" for c in (1, 2) for a in ("anchor", "noanchor")] if tb.has(n)]
    if len(names) < 2:
        return []
    L = ["## 4. Chunking strategies (equal depth, equal parameters)", "",
         "All decompose the same phase-1 model and have the same depth; they differ in how its layers are grouped "
         "into chunks and whether a vanilla anchor layer follows each chunk. Paper: no number in the brief (—).", ""]
    L += _header(["layout", "layers → chunks", "depth", "val loss", "Δ vs MoM_P"])
    for n, lab in names:
        c = next(iter(tb.by[n].values()))["config"]
        lay = (f"{c['bottom']} + {c['chunks']}×[{c['n_attn']} mod, H{c['steps']}]"
               f"{'+anchor' if c['anchor'] else ''} + {c['top']}")
        d = tb.paired(n, "mom-p", val) if n != "mom-p" else []
        L.append(_row([lab, lay, fmt(tb.vals(n, lambda r: r["depth"]), 0), fmt(tb.vals(n, val), 4),
                       fmt(d, 4) if d else "—"]))
    L.append("")
    for n, lab in names[1:]:
        L.append("- " + verdict(tb.paired(n, "mom-p", val), "lower", "val loss", lab, "MoM_P", " nats", 4,
                                neutral=True))
    return L + [""]


def _section_two_phase(tb: Table, st: dict) -> list[str]:
    names = [n for n in ("phase1", "vanilla-cont", "vanilla-flops", "mom-p", "mom-p-scratch") if tb.has(n)]
    if len(names) < 3:
        return []
    L = ["## 5. Two-phase training vs from scratch vs compute-matched vanilla", ""]
    L += _header(["run", "init", "steps", "tokens", "train TFLOP (this run)", "val loss at start", "final val loss"])
    for n in names:
        L.append(_row([tb.label(n), next(iter(tb.by[n].values())).get("init") or "scratch",
                       fmt(tb.vals(n, lambda r: r["steps"]), 0), fmt(tb.vals(n, lambda r: r["tokens"]), 0),
                       fmt(tb.vals(n, lambda r: r["train_flops_per_token"] * r["tokens"] / 1e12), 3),
                       fmt(tb.vals(n, lambda r: r.get("val_loss_start")), 4), fmt(tb.vals(n, val), 4)]))
    L += ["", "Phase-2 runs start from phase 1's weights, so their total is phase 1 + this run; the from-scratch "
              "MoM_P gets the same total number of tokens.", "", "### Claims", ""]
    L += _header(["claim", "paper", "ours", "verdict"], "llll")
    if tb.has("mom-p-scratch"):
        d = tb.paired("mom-p", "mom-p-scratch", val)
        L.append(_row(["two-phase beats the same MoM from scratch", "two-phase training is better (ablation)",
                       f"{fmt(d, 4)} nats", verdict(d, "lower", "val loss", "MoM_P (two-phase)",
                                                    "MoM_P (from scratch)", " nats", 4)]))
    for n, what in (("vanilla-cont", "the same extra tokens"), ("vanilla-flops", "the same extra training FLOPs")):
        if tb.has(n):
            d = tb.paired("mom-p", n, val)
            L.append(_row([f"MoM_P beats vanilla continued for {what}", "MoM beats the compute-matched vanilla",
                           f"{fmt(d, 4)} nats", verdict(d, "lower", "val loss", "MoM_P", f"vanilla ({what})",
                                                        " nats", 4)]))
    if tb.has("mom-p") and tb.has("phase1"):
        d = tb.paired("mom-p", "phase1", lambda r: r.get("val_loss_start") if r["name"] == "mom-p" else r["val_loss"])
        L += ["", "Decomposition with fresh routers: MoM_P's step-0 validation loss minus phase 1's final one, "
                  f"{fmt(d, 4)} nats — the routers' random picks change the function phase 2 starts from."]
    return L + [""]


def _section_pruning(tb: Table) -> list[str]:
    names = [n for n in ("mom-p", "mom-p-ft", "prune-a50-f75", "prune-a50-f75-ft", "prune-a50", "prune-f50")
             if tb.has(n)]
    if not any(n.startswith("prune") for n in names):
        return []
    L = ["## 6. Module pruning", "",
         "Modules ranked by the router weight they received on 32 training windows; the kept ones keep their "
         "order. \"Further training\" continues for the same steps as the control, which continues the unpruned "
         "MoM_P.", ""]
    L += _header(["model", "params", "attn / FFN modules", "router weight the removed modules had (attn / FFN)",
                  "val loss", "Δ vs MoM_P", "GLUE-proxy avg", "ROUGE-L"])
    for n in names:
        r0 = next(iter(tb.by[n].values()))
        c = r0["config"]
        base = "mom-p-ft" if n == "prune-a50-f75-ft" else "mom-p"
        d = tb.paired(n, base, val) if n != "mom-p" else []
        share = [tb.vals(n, lambda r, h=h: (r.get("removed_weight_share") or {}).get(h)) for h in ("attn", "ffn")]
        L.append(_row([tb.label(n), fmt(tb.vals(n, lambda r: r["params"] / 1e6), 2) + "M",
                       f"{c['n_attn']} / {c['n_ffn']}",
                       f"{fmt(share[0], 2, 100)}% / {fmt(share[1], 2, 100)}%" if share[0] else "—",
                       fmt(tb.vals(n, val), 4),
                       (fmt(d, 4) + (" (vs control)" if base != "mom-p" else "")) if d else "—",
                       fmt(tb.vals(n, glue_avg), 1, 100), fmt(tb.vals(n, proxy("news-xsum", "rougeL")), 2, 100)]))
    shares = [x for h in ("attn", "ffn") for x in tb.vals("prune-a50-f75", lambda r, h=h: (r.get("removed_weight_share")
                                                                                       or {}).get(h))]
    if shares:
        L += ["", f"The modules removed by the paper's recipe had received at most {100 * max(shares):.2f}% of their "
                  "half's router weight (per seed and half): a small share means the routers had concentrated on the "
                  "kept modules, so removing the others barely changes the function, and the claim is then about "
                  "how concentrated routing is rather than about redundancy of trained modules."]
    L += ["", "### Claims", "",
          "\"Keeps performance\" is read here as: the pruned model's validation loss is no more than 1% above "
          "the unpruned one's (mean over seeds).", ""]
    L += _header(["claim", "paper", "ours", "verdict"], "llll")
    for n, base, what in (("prune-a50-f75", "mom-p", "without further training"),
                          ("prune-a50-f75-ft", "mom-p-ft", "with further training (vs the equally trained control)")):
        if tb.has(n) and tb.has(base):
            rel = [d / b for d, b in zip(tb.paired(n, base, val), tb.vals(base, val))]
            m = statistics.fmean(rel) if rel else float("nan")
            kept = m <= 0.01
            L.append(_row([f"pruning 50% attn / 25% FFN keeps performance, {what}", PAPER["pruning"],
                           f"val loss {fmt(rel, 2, 100)}% vs unpruned",
                           f"{'**reproduces at this scale**' if kept else '**does not reproduce at this scale**'}: "
                           f"the val loss changes by {m:+.2%} on average"
                           + (f" (the removed modules had carried ≤ {100 * max(shares):.1f}% of the router weight)."
                              if shares else ".")]))
    if tb.has("prune-a50") and tb.has("prune-f50"):
        d = tb.paired("prune-a50", "prune-f50", val)
        L.append(_row(["removing half the attention modules hurts less than removing half the FFN modules",
                       PAPER["attn_redundant"], f"{fmt(d, 4)} nats (attention-pruned − FFN-pruned)",
                       verdict(d, "lower", "val loss", "MoM_P − 50% attention", "MoM_P − 50% FFN", " nats", 4)]))
    return L + [""]


def _section_router(tb: Table) -> list[str]:
    if not (tb.has("router-mlp") and tb.has("mom-p")):
        return []
    L = ["## 7. GRU router vs MLP router", ""]
    L += _header(["router", "params", "val loss", "fwd MFLOP/token"])
    for n, lab in (("mom-p", "GRU (the paper's; MoM_P)"), ("router-mlp", "MLP")):
        L.append(_row([lab, fmt(tb.vals(n, lambda r: r["params"] / 1e6), 3) + "M", fmt(tb.vals(n, val), 4),
                       fmt(tb.vals(n, lambda r: r["fwd_flops_per_token"] / 1e6), 2)]))
    d = tb.paired("mom-p", "router-mlp", val)
    L += ["", "The paper uses the GRU router (state carried across the H steps); no number for the MLP alternative "
              "in the brief (—). " + verdict(d, "lower", "val loss", "The GRU router", "the MLP router", " nats", 4,
                                              neutral=True)]
    return L + [""]


def _section_runs(tb: Table) -> list[str]:
    L = ["## Appendix: every run", "", "One row per run and seed (wall time includes measuring and proxy "
         "fine-tuning).", ""]
    L += _header(["run", "seed", "kind", "init", "steps", "val loss", "wall s"], "lrllrrr")
    for r in sorted(tb.res["runs"], key=lambda r: (r["name"], r["seed"])):
        L.append(_row([r["name"], str(r["seed"]), r["kind"], r.get("init") or "scratch", str(r["steps"]),
                       f"{r['val_loss']:.4f}", f"{r['wall_seconds']:.0f}"]))
    return L + [""]
