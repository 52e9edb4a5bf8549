"""The reproduction's markdown report, generated from its results JSON alone (and the gpu setting's, when there is
one): per claim the paper's number, ours, and a verdict read only above the seed noise and only in the regime the
claim needs; then every experiment's table, each loss beside its bits per byte and the unigram yardstick."""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable

from scripts.reproduce.experiments import CLAIMS, REGIME_NATS, RT_MARGIN, Claim


# ================================================================================================ numbers
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

    def paired(self, a: str, b: str, get: Callable[[dict], float | None], relative: bool = False) -> list[float]:
        """Per-seed differences a − b (``relative``: a / b − 1) over the seeds both have."""
        seeds = sorted(set(self.by.get(a, {})) & set(self.by.get(b, {})))
        out = []
        for s in seeds:
            x, y = get(self.by[a][s]), get(self.by[b][s])
            if x is not None and y is not None:
                out.append(x / y - 1 if relative else x - y)
        return out

    def seeds(self, name: str) -> int:
        return len(self.by.get(name, {}))

    def label(self, name: str) -> str:
        return next(iter(self.by[name].values()))["label"] if name in self.by else name


def val(r):
    return r.get("val_loss")


def _proxy(task: str, key: str):
    return lambda r: ((r.get("proxies") or {}).get(task) or {}).get(key)


def _mem(key: str):
    return lambda r: (r.get("memory") or {}).get(key)


# metric → (value of a record, relative?, unit, scale, decimals)
METRICS: dict[str, tuple[Callable[[dict], float | None], bool, str, float, int]] = {
    "val_loss": (val, False, " nats", 1.0, 4),
    "rt-polarity": (_proxy("rt-polarity", "accuracy"), False, " accuracy points", 100.0, 1),
    "news-xsum": (_proxy("news-xsum", "rouge_avg"), False, " ROUGE points (mean of R-1/2/L)", 100.0, 2),
    "fwd_flops": (lambda r: r.get("fwd_flops_per_token"), True, "% forward FLOPs/token", 100.0, 1),
    "mem_cache": (_mem("cache_prefill_peak_bytes"), True, "% peak (KV-cache prefill)", 100.0, 1),
    "mem_train": (_mem("train_peak_bytes"), True, "% peak (training step)", 100.0, 1),
    "mem_forward": (_mem("forward_peak_bytes"), True, "% peak (no-grad forward)", 100.0, 1),
}


def verdict(diffs: list[float], better: str, tolerance: float = 0.0, scale: float = 1.0, nd: int = 3,
            unit: str = "") -> str:
    """The verdict of a paired comparison (a − b per seed). ``better``: which sign supports the claim (``lower``,
    ``higher``) or ``match`` (a is not worse than b by more than ``tolerance``, lower being better). A difference
    is read when its mean exceeds two standard errors of the paired differences."""
    if not diffs:
        return "no paired runs"
    if len(diffs) < 2:
        return "one seed: not read"
    m, s = _mean_sd(diffs)
    se = s / math.sqrt(len(diffs))
    if better == "match":
        worst = m + 2 * se
        if worst <= tolerance:
            return (f"**reproduces**: at most {worst * scale:.{nd}f}{unit} worse (mean + 2 se), within the "
                    f"{tolerance * scale:.{nd}f}{unit} allowed")
        if m - 2 * se > tolerance:
            return f"**does not reproduce**: worse by more than {tolerance * scale:.{nd}f}{unit} beyond the noise"
        return "within the noise of the tolerance: not read"
    clear = abs(m) > 2 * se
    supports = m != 0 and (m < 0) == (better == "lower")
    if supports and clear:
        return "**reproduces** (above the seed noise)"
    if clear:
        return "**does not reproduce**: the opposite holds, above the seed noise"
    return "within the seed noise: not read"


def regime(tb: Table, which: str) -> tuple[bool, str]:
    """Whether the claim can be read in this setting, and why (see experiments.Claim.regime)."""
    if which == "none":
        return True, "no regime needed"
    van = "vanilla-cont" if tb.has("vanilla-cont") else "phase1"
    if which == "lm":
        gaps = tb.vals(van, lambda r: r["unigram_loss"] - r["val_loss"] if r.get("unigram_loss") else None)
        if not gaps:
            return False, "no vanilla run"
        ok = min(gaps) >= REGIME_NATS
        span = f"{-max(gaps):+.2f}" if max(gaps) == min(gaps) else f"{-max(gaps):+.2f} to {-min(gaps):+.2f}"
        return ok, (f"vanilla's loss − the unigram yardstick = {span} nats over seeds (needs ≤ {-REGIME_NATS:+.1f})")
    base = tb.res.get("proxy_baselines") or {}
    get = METRICS[which][0]
    v = tb.vals(van, get)
    if not v or which not in base:
        return False, "no proxy scores"
    m = statistics.fmean(v)
    if which == "rt-polarity":
        ref = base["rt-polarity"]["constant_accuracy"]
        ok = m >= ref + RT_MARGIN
        return ok, (f"vanilla {100 * m:.1f}% vs the constant predictor's {100 * ref:.1f}% "
                    f"({'≥' if ok else '<'} {100 * RT_MARGIN:.0f} points above)")
    ref = base["news-xsum"]["lead-1"]["rouge_avg"]
    ok = m > ref
    return ok, f"vanilla ROUGE {100 * m:.2f} vs LEAD-1's {100 * ref:.2f} ({'above' if ok else 'not above'})"


def claim_cell(tb: Table | None, c: Claim) -> tuple[str, str]:
    """(ours, verdict) of a claim in one setting's results."""
    if tb is None:
        return "not run", "not run"
    get, rel, unit, scale, nd = METRICS[c.metric]
    d = tb.paired(c.a, c.b, get, relative=rel)
    if not d:
        return "not run", "not run"
    ours = f"{fmt(d, nd, scale)}{unit} ({len(d)} seed{'s' if len(d) > 1 else ''})"
    if c.metric == "val_loss":
        ours += f"; {fmt(tb.paired(c.a, c.b, lambda r: r.get('val_bpb')), 4)} bpb"
    ok, why = regime(tb, c.regime)
    if not ok:
        return ours, f"not read: {why}"
    return ours, verdict(d, c.better, c.tolerance, scale, nd, unit)


# ================================================================================================ markdown
def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(cells: list[str], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(cells) - 1)
    return [_row(cells), _row(["---:" if a == "r" else "---" for a in align])]


def mib(b: float) -> float:
    return b / 2 ** 20


def loss_cells(tb: Table, n: str) -> list[str]:
    """Validation loss (nats), its bits per byte, and the unigram yardstick of the same windows (nats / bpb)."""
    return [fmt(tb.vals(n, val), 4), fmt(tb.vals(n, lambda r: r.get("val_bpb")), 4),
            f"{fmt(tb.vals(n, lambda r: r.get('unigram_loss')), 3)} / "
            f"{fmt(tb.vals(n, lambda r: r.get('unigram_bpb')), 3)}"]


LOSS_HEAD = ["val loss (nats)", "val bpb", "unigram yardstick (nats / bpb)"]


def build_report(res: dict[str, Any], others: dict[str, dict[str, Any]] | None = None) -> str:
    """The markdown report from the results JSON ``res`` alone (same JSON → same text); ``others``: results of
    other settings by name (the gpu setting's, when run) for the claims table's other column."""
    st = res["setting"]
    tb = Table(res)
    cols = [st["name"]] + ([] if st["name"] == "gpu" else ["gpu"])
    tables = {st["name"]: tb, **{k: Table(v) for k, v in (others or {}).items() if k != st["name"]}}
    L = _preamble(res, tb)
    L += ["## Claims", "",
          "Δ = the claim's first model − its second, paired by seed (mean ± sample sd over seeds). A claim is read "
          "only when the mean exceeds two standard errors of the paired differences and the regime check passes "
          f"(language modelling: vanilla ≥ {REGIME_NATS} nats below the unigram yardstick; rt-polarity: vanilla "
          f"≥ {100 * RT_MARGIN:.0f} points above the constant predictor; news-xsum: vanilla above LEAD-1). \"Keeps "
          "performance\" / \"matches\": not worse by more than the claim's tolerance.", ""]
    L += _header(["claim", "compared at", "paper", *[f"ours ({c})" for c in cols], "verdict"], "lll" + "l" * len(cols)
                 + "l")
    for c in CLAIMS:
        cells = {name: claim_cell(tables.get(name), c) for name in cols}
        verdicts = "; ".join(f"{name}: {cells[name][1]}" for name in cols)
        L.append(_row([f"{c.text} [{c.a} vs {c.b}]", c.basis, c.paper, *[cells[name][0] for name in cols],
                       verdicts]))
    L.append("")
    for section in (_section_models, _section_efficiency, _section_grid, _section_chunking, _section_pruning,
                    _section_runs):
        L += section(tb)
    return "\n".join(L).rstrip() + "\n"


def _preamble(res: dict[str, Any], tb: Table) -> list[str]:
    st = res["setting"]
    invs = res.get("invocations", [])
    wall_runs = sum(r.get("wall_seconds", 0.0) for r in res["runs"])
    last = invs[-1] if invs else {}
    mach = last.get("machine", {})
    commits = sorted({r.get("commit") or "?" for r in res["runs"]})
    seeds = sorted({r["seed"] for r in res["runs"]})
    ok, why = regime(tb, "lm")
    van = next(iter(tb.by.get("phase1", {}).values()), {}).get("config", {})
    base = res.get("proxy_baselines") or {}
    sizes = {t: next((r["proxies"][t]["sizes"] for r in res["runs"] if (r.get("proxies") or {}).get(t)), {})
             for t in ("rt-polarity", "news-xsum")}
    return [
        f"# Reproduction of Mixture-of-Modules at small scale (`{st['name']}` setting)", "",
        f"Generated by `python -m scripts.reproduce` from `docs/results/{st['name']}.json` (every number below is "
        f"read from that file; regenerate with `python -m scripts.reproduce --setting {st['name']} --report-only`). "
        "Paper numbers are the ones stated in Gong et al., EMNLP 2024 (as summarised in the design brief).", "",
        f"- **Machine:** {mach.get('processor', '?')}, {mach.get('cpus', '?')} CPU cores"
        f"{', GPU ' + mach['gpu'] if mach.get('gpu') else ''}, torch {mach.get('torch', '?')}, "
        f"{mach.get('threads', '?')} torch thread(s) per run, {last.get('jobs', 1)} run(s) at a time; shared with "
        "other work while it ran.",
        f"- **Dates:** {invs[0].get('started', '?') if invs else '?'} → {last.get('finished', 'unfinished')} "
        f"({len(invs)} invocation(s)); wall time of all runs together {wall_runs / 60:.1f} min.",
        f"- **Code:** commit(s) {', '.join(commits)} (each run's commit and configs are in the JSON).",
        f"- **Data:** the built-in offline corpus (unless `--data` named another) tokenised with `{st['tokenizer']}` "
        f"(vocabulary "
        f"{van.get('vocab_size', '?')}); models: 6 vanilla layers, d = {van.get('d_model', '?')}; seeds "
        f"{', '.join(map(str, seeds))}. Phase 1: {st['phase1_steps']} steps (warm-up {st['phase1_warmup']}), phase 2: "
        f"{st['phase2_steps']} steps (warm-up {st['phase2_warmup']}), further training after pruning: "
        f"{st['finetune_steps']} steps, each step {st['batch']} × {st['seq_len']} tokens; lr {st['phase1_lr']:g} "
        f"(phase 1 and from scratch) / {st['phase2_lr']:g} (phase 2), cosine, the paper's AdamW. Validation: mean "
        f"cross-entropy on the first {st['eval_tokens']:,} tokens of `val.bin` (the same windows for every model), in "
        "nats and bits per byte, beside the unigram yardstick (a model knowing only the train split's token "
        "frequencies) of the same windows.",
        f"- **Learning regime:** {'passes' if ok else '**fails**'}: {why}.",
        "- **Proxies, not GLUE/XSUM:** `rt-polarity` (SST-2-like, accuracy; train "
        f"{sizes['rt-polarity'].get('train', '?')}"
        f" examples, dev {sizes['rt-polarity'].get('dev', '?')}) and `news-xsum` (the XSUM recipe on "
        f"news articles; ROUGE F1, greedy summaries ≤ {st['xsum_new_tokens']} tokens, documents cut to "
        f"{st['xsum_doc_tokens']} tokens; train {sizes['news-xsum'].get('train', '?')}, test "
        f"{sizes['news-xsum'].get('test', '?')}), fine-tuned {st['proxy_epochs']} epoch(s) at lr {st['finetune_lr']:g} "
        "with the run's seed. References: constant predictor "
        f"{fmt([(base.get('rt-polarity') or {}).get('constant_accuracy')], 1, 100)}% accuracy, LEAD-1 ROUGE "
        f"{fmt([((base.get('news-xsum') or {}).get('lead-1') or {}).get('rouge_avg')], 2, 100)}.",
        "",
        "Honest scale note: these models have a few million parameters and see a few million tokens; the paper "
        "trains GPT-2 small…large for 20k + 5k steps of 524,288 tokens. A claim that does not reproduce here is "
        "not refuted at the paper's scale, and one that does is not confirmed at it.", ""]


MODELS = ("phase1", "vanilla-cont", "vanilla-flops", "mom-p", "mom-e", "layerskip", "mod", "moe", "universal",
          "mom-p-scratch")


def _section_models(tb: Table) -> list[str]:
    names = [n for n in MODELS if tb.has(n)]
    if not names:
        return []
    L = ["## 1. Models: main comparison, baselines, two-phase", "",
         "Phase-2 runs start from their seed's phase-1 vanilla model (decomposed by the layer map; MoE experts carved "
         "from its FFNs); from-scratch runs see phase 1 + phase 2 steps. FLOPs: the nanoGPT/PaLM count (2 × active "
         "matmul parameters + the attention term) with the modules the routers picked on validation windows.", ""]
    L += _header(["model", "params", "depth", "tokens", "train TFLOP", "fwd MFLOP/token", "val loss at start",
                  *LOSS_HEAD, "rt-polarity acc", "news-xsum ROUGE", "seeds"])
    for n in names:
        L.append(_row([tb.label(n), fmt(tb.vals(n, lambda r: r["params"] / 1e6), 3) + "M",
                       fmt(tb.vals(n, lambda r: r["depth"]), 0), fmt(tb.vals(n, lambda r: r["tokens"]), 0),
                       fmt(tb.vals(n, lambda r: r["train_flops_per_token"] * r["tokens"] / 1e12), 2),
                       fmt(tb.vals(n, lambda r: r["fwd_flops_per_token"] / 1e6), 2),
                       fmt(tb.vals(n, lambda r: r.get("val_loss_start")), 4), *loss_cells(tb, n),
                       fmt(tb.vals(n, METRICS["rt-polarity"][0]), 1, 100),
                       fmt(tb.vals(n, METRICS["news-xsum"][0]), 2, 100), str(tb.seeds(n))]))
    return L + [""]


def _section_efficiency(tb: Table) -> list[str]:
    names = [n for n in ("vanilla-cont", "mom-p", "mom-e") if tb.has(n) and tb.vals(n, _mem("forward_peak_bytes"))]
    ps = tb.res.get("paper_scale")
    if not names and not ps:
        return []
    L = ["## 2. FLOPs and memory (MoM_E vs vanilla)", ""]
    if names:
        r0 = next(iter(tb.by[names[0]].values()))["memory"]
        L += [f"Measured on one {r0['shape'][0]} × {r0['shape'][1]} batch ({r0['method']}), trained models, fp32: "
              "generation with a KV cache (weights + every attention core's keys and values + the prefill), a "
              "training step (AdamW), a no-grad forward (docs/analysis.md).", ""]
        L += _header(["model", "depth", "attention cores", "fwd MFLOP/token", "KV-cache prefill peak MiB",
                      "training step peak MiB", "no-grad forward peak MiB"])
        for n in names:
            L.append(_row([tb.label(n), fmt(tb.vals(n, lambda r: r["depth"]), 0),
                           fmt(tb.vals(n, _mem("attention_cores")), 0),
                           fmt(tb.vals(n, lambda r: r["fwd_flops_per_token"] / 1e6), 2),
                           fmt(tb.vals(n, lambda r: mib(r["memory"]["cache_prefill_peak_bytes"])), 2),
                           fmt(tb.vals(n, lambda r: mib(r["memory"]["train_peak_bytes"])), 2),
                           fmt(tb.vals(n, lambda r: mib(r["memory"]["forward_peak_bytes"])), 2)]))
        L.append("")
    if ps:
        g, e = ps["gpt2-large"], ps["mom-e-large"]
        L += ["At the paper's size (config level: our MoM_E-large layout vs GPT-2-large, random weights; FLOPs "
              f"analytic with no SKIP picks, an upper bound for MoM_E; forward peak "
              f"measured on {ps['batch']} × {ps['seq_len']} "
              f"tokens on {ps['device']}; KV cache counted for 16 × 1024 tokens in bf16):", ""]
        L += _header(["model", "params", "depth", "fwd GFLOP/token", "fwd peak MiB", "weights + KV cache MiB"])
        for name, r in (("GPT-2-large", g), ("MoM_E-large (ours)", e)):
            L.append(_row([name, f"{r['params'] / 1e6:.1f}M", str(r["depth"]), f"{r['fwd_flops_per_token'] / 1e9:.3f}",
                           f"{mib(r['fwd_peak_bytes']):.0f}",
                           f"{mib(r['cache_16x1024_bf16']['weights_plus_cache_bytes']):.0f}"]))
        kv = e["cache_16x1024_bf16"]["weights_plus_cache_bytes"] / g["cache_16x1024_bf16"]["weights_plus_cache_bytes"]
        L += ["", f"MoM_E-large vs GPT-2-large: forward FLOPs "
              f"{e['fwd_flops_per_token'] / g['fwd_flops_per_token'] - 1:+.1%} (paper −16%), no-grad forward peak "
              f"{e['fwd_peak_bytes'] / g['fwd_peak_bytes'] - 1:+.1%}, weights + KV cache {kv - 1:+.1%} (paper −42% "
              "forward memory).", ""]
    return L


def _section_grid(tb: Table) -> list[str]:
    if not any(tb.has(f"grid-K{k}H{h}") for k in (1, 2, 3) for h in (1, 2, 4)):
        return []
    L = ["## 3. K × H grid (MoM_P layout, phase 2 from the same phase-1 model; MoM_P itself is K = 2, H = 6)", "",
         "Validation loss (nats), mean ± sd over seeds; in brackets the forward MFLOP/token with the routing measured.",
         ""]
    L += _header(["K \\ H", "H = 1", "H = 2", "H = 4"])
    for k in (1, 2, 3):
        cells = [f"K = {k}"]
        for h in (1, 2, 4):
            n = f"grid-K{k}H{h}"
            v = tb.vals(n, val)
            cells.append(f"{fmt(v, 4)} [{fmt(tb.vals(n, lambda r: r['fwd_flops_per_token'] / 1e6), 1)}]" if v else "—")
        L.append(_row(cells))
    return L + [""]


def _section_chunking(tb: Table) -> list[str]:
    names = [n for n in ("mom-p", "chunks1-noanchor", "chunks2-anchor", "chunks2-noanchor") if tb.has(n)]
    if len(names) < 2:
        return []
    L = ["## 4. Chunking strategies (equal depth 8, the same 6 decomposed layers)", ""]
    L += _header(["layout", "layers → chunks", "params", *LOSS_HEAD, "Δ vs MoM_P (nats)"])
    for n in names:
        c = next(iter(tb.by[n].values()))["config"]
        lay = (f"{c['bottom']} + {c['chunks']}×[{c['n_attn']} mod, H{c['steps']}]"
               f"{'+anchor' if c['anchor'] else ''} + {c['top']}")
        d = tb.paired(n, "mom-p", val) if n != "mom-p" else []
        L.append(_row(["MoM_P (1 chunk, anchor)" if n == "mom-p" else tb.label(n), lay,
                       fmt(tb.vals(n, lambda r: r["params"] / 1e6), 3) + "M", *loss_cells(tb, n), fmt(d, 4)]))
    return L + [""]


def _section_pruning(tb: Table) -> list[str]:
    names = [n for n in ("mom-p", "mom-p-ft", "prune-a50-f75", "prune-a50-f75-ft", "pools-a50-f75", "prune-a50",
                         "prune-f50") if tb.has(n)]
    if not any(n.startswith(("prune", "pools")) for n in names):
        return []
    L = ["## 5. Pruning vs smaller pools", "",
         "Modules ranked by the router weight they received on 32 training windows (the removed modules' share of "
         "that weight beside). Smaller pools: phase 2 from phase 1 with pools of 2 attention / 3 FFN modules "
         "decomposed from the same layers (the official ablation), trained as many phase-2 steps as the pruned model "
         "with its further training.", ""]
    L += _header(["model", "params", "attn / FFN modules", "removed weight share (attn / FFN)", *LOSS_HEAD])
    for n in names:
        c = next(iter(tb.by[n].values()))["config"]
        share = [tb.vals(n, lambda r, h=h: (r.get("removed_weight_share") or {}).get(h)) for h in ("attn", "ffn")]
        L.append(_row([tb.label(n), fmt(tb.vals(n, lambda r: r["params"] / 1e6), 3) + "M",
                       f"{c['n_attn']} / {c['n_ffn']}",
                       f"{fmt(share[0], 1, 100)}% / {fmt(share[1], 1, 100)}%" if share[0] else "—",
                       *loss_cells(tb, n)]))
    return L + [""]


def _section_runs(tb: Table) -> list[str]:
    L = ["## Appendix: every run", "", "One row per run and seed (wall time includes measuring and proxy "
         "fine-tuning).", ""]
    L += _header(["run", "seed", "kind", "init", "steps", "val loss", "val bpb", "commit", "wall s"], "lrllrrrlr")
    for r in sorted(tb.res["runs"], key=lambda r: (r["name"], r["seed"])):
        L.append(_row([r["name"], str(r["seed"]), r["kind"], r.get("init") or "scratch", str(r["steps"]),
                       f"{r['val_loss']:.4f}", f"{r['val_bpb']:.4f}" if r.get("val_bpb") is not None else "—",
                       str(r.get("commit")), f"{r['wall_seconds']:.0f}"]))
    return L + [""]
