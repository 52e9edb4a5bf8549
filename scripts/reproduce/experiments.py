"""What a reproduction runs: its settings, the paper's claims, the layouts compared and the runs of each experiment.

Sizing of the ``cpu`` setting (the 2-core dev box, one torch thread per run, two runs at a time: ``--jobs 2``).
Training speeds measured on 2026-12-03 with ``python -m scripts.reproduce --setting cpu --time-layouts 30`` (30 steps
of 16 × 256 tokens per layout, one thread, the box shared with three other training processes, load average 5–6;
docs/log.md), in tokens/s: vanilla ``tiny`` 4,212; MoM_P 2,117; MoM_E 4,644; layer-skip 3,607; MoD 5,216; MoE 4,112;
parameter sharing 4,270; grid K1H1…K3H4 5,928 / 4,856 / 3,826, 4,981 / 3,585 / 2,698, 4,578 / 3,260 / 2,147;
chunkings 1,586 (1 chunk, no anchor), 1,900 (2 chunks, anchors), 1,712 (2, none); smaller pools 2,113. Per seed:

* phase 1, 600 steps = 2.46M tokens: 583 s (`tiny` at lr 3e-3 reaches ≈ 5.2 nats there against the 6.94-nat
  yardstick: ≥ 1.5 nats below it, the learning regime);
* 19 phase-2 arms of 70 steps (287K tokens; the FLOP-matched vanilla 142 steps, smaller pools 105, the two further
  trainings after pruning 35): 2,330 s together;
* from scratch for 600 + 70 steps: MoM_P 1,260 s, parameter sharing 625 s;

≈ 4,680 s of training a seed, 234 core-minutes for three (``training_seconds``). Proxies (vanilla and MoM_P:
``rt-polarity``'s 11,639 training snippets × 2 epochs ≈ 0.6M tokens, ``news-xsum``'s 365 pairs × 2 epochs with
documents cut to 192 tokens, then 91 greedy summaries) ≈ 11 core-minutes a seed, evaluation and measuring ≈ 5:
≈ 285 core-minutes in all, ≈ 143 minutes of wall time with ``--jobs 2`` when the two cores are the runs' (phase 1
runs first, the from-scratch runs beside the phase-2 arms so they do not trail), inside the 150-minute budget. On a
busier box it takes longer: measure with ``--time-layouts`` first (it prints the plan's training core-minutes).
Measured 2026-12-03: 127.4 minutes with ``--jobs 2`` (84 runs, 3 seeds) while the box also ran ~60 core-minutes of
other work (docs/log.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

RESULTS_FORMAT = 2


EXPERIMENTS = ("main", "baselines", "efficiency", "grid", "chunking", "pruning", "two-phase")
PROXY_TASKS = ("rt-polarity", "news-xsum")


# ================================================================================================ settings
@dataclass(frozen=True)
class Setting:
    """How big every run of a reproduction is. Steps are optimiser steps of ``batch × seq_len`` tokens.

    The layouts are the tiny presets (6 vanilla layers; ``layouts``) with ``shape`` applied: the ``cpu`` setting
    keeps d = 128 with the corpus BPE's 4,096 tokens, the ``gpu`` one widens them to d = 512 with GPT-2's BPE."""

    name: str
    tokenizer: str  # what `mom prepare --tokenizer` makes the data with; the data directory must use it
    seeds: tuple[int, ...]
    experiments: tuple[str, ...]
    phase1_steps: int
    phase2_steps: int
    finetune_steps: int  # further training after pruning (and its unpruned control)
    batch: int
    seq_len: int
    phase1_lr: float
    phase2_lr: float
    phase1_warmup: int
    phase2_warmup: int
    eval_tokens: int  # validation tokens (the same consecutive windows for every model)
    shape: dict[str, Any] = field(default_factory=dict)  # model field overrides for every layout
    # proxies: epochs over the whole training set (max_train None) and the whole evaluation split (max_eval None)
    proxy_epochs: int = 2
    proxy_max_train: int | None = None
    proxy_max_eval: int | None = None
    glue_max_len: int = 64
    xsum_new_tokens: int = 32
    xsum_doc_tokens: int = 192
    finetune_lr: float = 5e-4
    proxy_batch: int = 32
    memory_batch: int = 8
    paper_scale: bool = True  # the config-level GPT-2-large vs MoM_E-large comparison (random weights, ~3 CPU-minutes)
    paper_scale_seq: int = 256  # its sequence length
    ckpt_interval: int = 100  # steps between checkpoints: an interrupted run resumes from its last one
    device: str = "cpu"
    compile: bool = False
    default_data: str = "data/bpe4096"


SETTINGS: dict[str, Setting] = {
    # A few steps of a d=32 model on a 512-token BPE: every piece runs and the report is consistent (tests).
    "smoke": Setting(name="smoke", tokenizer="bpe:512", seeds=(0,), experiments=EXPERIMENTS,
                     phase1_steps=4, phase2_steps=2, finetune_steps=2, batch=2, seq_len=32, phase1_lr=3e-3,
                     phase2_lr=1e-3, phase1_warmup=1, phase2_warmup=1, eval_tokens=128,
                     shape=dict(d_model=32, n_head=2, n_ctx=64, router_hidden=16, vocab_size=512),
                     proxy_epochs=1, proxy_max_train=8, proxy_max_eval=4, glue_max_len=32, xsum_new_tokens=4,
                     xsum_doc_tokens=24, proxy_batch=4, memory_batch=2, ckpt_interval=2, paper_scale=False,
                     default_data="data/smoke-bpe512"),
    # Every claim, 3 seeds, in the learning regime (sizing: module docstring).
    # Router hidden size 64, not the preset's 256: the paper's r = 256 sits beside d = 768 (r/d = 1/3); at d = 128
    # r = 256 makes the GRU routers ~60% of MoM_P's training FLOPs (44 vs 26 MFLOP/token) and the setting ~1.5x
    # longer. r = 64 keeps the routers smaller than the model (r/d = 1/2). Router input not centred:
    # docs/results/cpu.json was measured (2026-12-03) while the MoM presets' router_norm was still `none`; pinned so
    # a rerun reproduces it.
    "cpu": Setting(name="cpu", tokenizer="bpe:4096", seeds=(0, 1, 2), experiments=EXPERIMENTS,
                   phase1_steps=600, phase2_steps=70, finetune_steps=35, batch=16, seq_len=256, phase1_lr=3e-3,
                   phase2_lr=1e-3, phase1_warmup=40, phase2_warmup=7, eval_tokens=16384,
                   shape=dict(vocab_size=4096, router_hidden=64, router_norm="none")),
    # One H100/H200: GPT-2's BPE (vocabulary padded to 50,304), d = 512, context 1024, 32 × 1024 tokens a step.
    # Phase 1 1,200 steps = 39M tokens, each phase-2 arm 640 steps = 21M tokens (>= 20M). NOT MEASURED (no GPU in
    # the session that built it), estimated from the H100 anchor (brief §5: 473K tokens/s for the 124M GPT-2,
    # compiled, bf16): a 6-layer d = 512 model costs ~1/3 of its FLOPs per token, MoM_P ~2x a vanilla step, the routed
    # dispatch ~1.4x dense, so MoM_P should train at >= 150K tokens/s: ~2.5 minutes an arm (the from-scratch MoM_P,
    # 60M tokens, ~7), with evaluation, measuring and proxies <= 9 minutes. Time it first on the GPU with
    # `--time-layouts 50`; `--dry-run` builds every run's config and trains each a few steps on the CPU. Pass
    # OpenWebText prepared the nanoGPT way (`--data`): the built-in corpus (~5M GPT-2 tokens) would be read ~8 times.
    "gpu": Setting(name="gpu", tokenizer="gpt2", seeds=(0, 1, 2), experiments=EXPERIMENTS,
                   phase1_steps=1200, phase2_steps=640, finetune_steps=160, batch=32, seq_len=1024,
                   phase1_lr=1e-3, phase2_lr=5e-4, phase1_warmup=100, phase2_warmup=40, eval_tokens=1 << 19,
                   shape=dict(d_model=512, n_head=8, n_ctx=1024, vocab_size=50304),
                   proxy_epochs=3, glue_max_len=128, xsum_new_tokens=48, xsum_doc_tokens=768, finetune_lr=1e-4,
                   proxy_batch=32, memory_batch=8, paper_scale_seq=1024, ckpt_interval=200, device="auto",
                   compile=True, default_data="data/builtin"),
}


# ================================================================================================ the claims
@dataclass(frozen=True)
class Claim:
    """One claim of the paper and how it is read: the per-seed difference ``a − b`` of ``metric``.

    ``better``: which sign supports the claim (``lower``, ``higher``), or ``match``: the claim holds when ``a`` is
    not worse than ``b`` by more than ``tolerance`` (mean + 2 standard errors of the paired differences, in the
    metric's unit). ``basis``: what the two models have in common. ``regime``: the check that must pass for the
    claim to be read (``lm``: the vanilla model is ≥ 1.5 nats below the unigram yardstick; a proxy's name: the
    vanilla model beats that proxy's no-learning reference)."""

    id: str
    experiment: str
    text: str
    paper: str
    a: str
    b: str
    metric: str  # val_loss | rt-polarity | news-xsum | fwd_flops | mem_cache | mem_train | mem_forward
    better: str
    basis: str
    regime: str = "lm"
    tolerance: float = 0.0


MATCH_NATS = 0.05  # "keeps performance" / "matches": at most this much worse (≈ 1% of a 5-nat loss)
REGIME_NATS = 1.5  # the learning regime: vanilla at least this far below the unigram yardstick
RT_MARGIN = 0.05  # rt-polarity is read when vanilla's accuracy beats the constant predictor's by 5 points

CLAIMS: tuple[Claim, ...] = (
    Claim("mom-p-params", "main", "MoM_P beats vanilla (validation loss)",
          "MoMs beat GPT-2 at every size (MoM_P: +38% depth at equal parameters)", "mom-p", "vanilla-cont",
          "val_loss", "lower", "equal parameters, equal tokens"),
    Claim("mom-p-flops", "main", "MoM_P beats vanilla given MoM_P's training compute (validation loss)",
          "MoM beats the compute-matched vanilla (two-phase ablation)", "mom-p", "vanilla-flops", "val_loss",
          "lower", "equal training FLOPs (vanilla continued for more tokens)"),
    Claim("mom-p-glue", "main", "MoM_P beats vanilla on the SST-2-like proxy (rt-polarity accuracy)",
          "+1.4 GLUE average (MoM_P vs GPT-2)", "mom-p", "vanilla-cont", "rt-polarity", "higher",
          "equal parameters, equal tokens", regime="rt-polarity"),
    Claim("mom-p-xsum", "main", "MoM_P beats vanilla on the XSUM-like proxy (news-xsum ROUGE)",
          "+1 ROUGE on XSUM (MoM_P vs GPT-2)", "mom-p", "vanilla-cont", "news-xsum", "higher",
          "equal parameters, equal tokens", regime="news-xsum"),
    Claim("mom-e-quality", "main", "MoM_E matches vanilla (validation loss)",
          "MoM_E (60% shallower) matches GPT-2-large", "mom-e", "vanilla-cont", "val_loss", "match",
          "equal parameters, equal tokens", tolerance=MATCH_NATS),
    Claim("mom-e-flops", "efficiency", "MoM_E needs fewer forward FLOPs per token than vanilla",
          "−16% forward TFLOPs (MoM_E vs GPT-2-large)", "mom-e", "vanilla-cont", "fwd_flops", "lower",
          "equal parameters", regime="none"),
    Claim("mom-e-mem-cache", "efficiency", "MoM_E needs less memory than vanilla: generation with a KV cache",
          "−42% forward memory (MoM_E vs GPT-2-large)", "mom-e", "vanilla-cont", "mem_cache", "lower",
          "equal parameters", regime="none"),
    Claim("mom-e-mem-train", "efficiency", "MoM_E needs less memory than vanilla: a training step",
          "−42% forward memory (MoM_E vs GPT-2-large)", "mom-e", "vanilla-cont", "mem_train", "lower",
          "equal parameters", regime="none"),
    Claim("mom-e-mem-forward", "efficiency", "MoM_E needs less memory than vanilla: a no-grad forward",
          "−42% forward memory (MoM_E vs GPT-2-large)", "mom-e", "vanilla-cont", "mem_forward", "lower",
          "equal parameters", regime="none"),
    *(Claim(f"mom-p-vs-{b}", "baselines", f"MoM_P beats {label} (validation loss)",
            "MoM beats the MoD, MoE and layer-skip baselines" if b != "universal" else "— (not in the paper)",
            "mom-p", b, "val_loss", "lower", basis)
      for b, label, basis in (("layerskip", "layer-skip", "equal parameters, equal tokens"),
                              ("mod", "Mixture-of-Depths", "equal parameters, equal tokens"),
                              ("moe", "MoE", "≈ equal parameters (experts carved from the dense FFN), equal tokens"),
                              ("universal", "parameter sharing", "equal tokens (sharing has 1/6 of the layers' "
                                                                 "parameters; from scratch)"))),
    Claim("grid-depth", "grid", "Deeper assembly helps: H = 4 beats H = 1 (K = 2)",
          "MoM_P rests on depth (the paper's K × H search picks deep H)", "grid-K2H4", "grid-K2H1", "val_loss",
          "lower", "equal parameters, equal tokens (more FLOPs)"),
    Claim("chunking-anchor", "chunking", "An anchor layer per chunk helps (2 chunks, equal depth)",
          "— (the paper compares chunking strategies; no number in the brief)", "chunks2-anchor",
          "chunks2-noanchor", "val_loss", "lower", "equal parameters, equal depth, equal tokens"),
    Claim("prune-keeps", "pruning", "Removing 50% of attention and 25% of FFN modules keeps performance",
          "removing 50% of attention and 25% of FFN modules keeps performance", "prune-a50-f75", "mom-p",
          "val_loss", "match", "pruned vs unpruned, no further training", tolerance=MATCH_NATS),
    Claim("prune-keeps-ft", "pruning", "… with further training (vs the unpruned model trained as long)",
          "removing 50% of attention and 25% of FFN modules keeps performance", "prune-a50-f75-ft", "mom-p-ft",
          "val_loss", "match", "equal tokens", tolerance=MATCH_NATS),
    Claim("prune-vs-pools", "pruning", "Pruning a trained MoM_P is no worse than training smaller pools",
          "the official ablation trains phase 2 with smaller pools (no number in the brief)", "prune-a50-f75-ft",
          "pools-a50-f75", "val_loss", "match", "equal parameters, equal phase-2 tokens", tolerance=MATCH_NATS),
    Claim("attn-redundant", "pruning", "Removing half the attention modules hurts less than half the FFN modules",
          "attention is more over-parameterised than FFN", "prune-a50", "prune-f50", "val_loss", "lower",
          "no further training"),
    Claim("two-phase", "two-phase", "Two-phase training beats the same MoM from scratch",
          "two-phase training is better (ablation)", "mom-p", "mom-p-scratch", "val_loss", "lower",
          "equal parameters, equal total tokens"),
)


# ================================================================================================ layouts
def layouts(shape: dict[str, Any]) -> dict[str, Any]:
    """Model configs of every layout the experiments use: the tiny presets (6 vanilla layers) with ``shape``
    applied. Every MoM layout decomposes the same vanilla model except the baselines that cannot (parameter
    sharing, trained from scratch; MoE, whose experts are carved out of the vanilla FFN)."""
    from mom.config.model import preset
    from mom.convert.gpt2 import smaller_pools

    def shaped(cfg):
        extra = {"d_ff": shape["d_model"]} if cfg.name == "moe" and "d_model" in shape else {}
        return cfg.replace(**shape, **extra) if shape or extra else cfg

    van, momp, mome = (shaped(preset(n)) for n in ("tiny", "tiny-mom", "tiny-mom-e"))
    out = {"vanilla": van, "mom-p": momp, "mom-e": mome}
    for name in ("layerskip", "mod", "moe", "universal"):
        out[name] = shaped(preset(name))
    # chunks × anchor at equal depth (8) and equal layers decomposed (6); MoM_P itself is 1 chunk with an anchor
    out["chunks1-noanchor"] = momp.replace(name="c1-noanchor", bottom=1, top=0, chunks=1, n_attn=5, n_ffn=5,
                                           steps=7, anchor=False)
    out["chunks2-anchor"] = momp.replace(name="c2-anchor", bottom=0, top=0, chunks=2, n_attn=2, n_ffn=2, steps=3,
                                         anchor=True)
    out["chunks2-noanchor"] = momp.replace(name="c2-noanchor", bottom=0, top=0, chunks=2, n_attn=3, n_ffn=3,
                                           steps=4, anchor=False)
    for k in (1, 2, 3):
        for h in (1, 2, 4):
            out[f"grid-K{k}H{h}"] = momp.replace(name=f"K{k}H{h}", top_k=k, steps=h)
    out["pools-a50-f75"] = smaller_pools(momp, 0.5, 0.75)
    return out


# ================================================================================================ the plan
@dataclass
class RunSpec:
    """One run of one seed. ``kind``: ``train`` (optionally initialised from ``init``: another run of the seed,
    or ``upcycle:RUN`` for MoE experts carved from a vanilla run) or ``prune`` (``source`` pruned, no training).
    ``memory``: take the three memory readings; ``proxies``: fine-tune and score the proxies."""

    name: str
    kind: str
    label: str
    cfg: Any = None  # MoMConfig; None for a run that takes its init's config (training a pruned model further)
    init: str | None = None
    steps: int = 0
    lr: float = 0.0
    warmup: int = 1
    source: str | None = None  # prune: the run pruned
    attn_keep: float = 1.0
    ffn_keep: float = 1.0
    proxies: bool = False
    memory: bool = False

    def deps(self) -> list[str]:
        out = []
        if self.init:
            out.append(self.init.removeprefix("upcycle:"))
        if self.source:
            out.append(self.source)
        return out

    def data_seed(self, seed: int) -> int:
        """Seed of the training data order. A phase-2 run must not replay phase 1's batches (the order is a pure
        function of (data seed, step), so the same seed would feed phase 2 the batches of phase 1's first steps);
        further training after pruning gets a third stream."""
        if self.init is None:
            return 1000 + seed  # phase 1 and from-scratch runs
        if self.init.removeprefix("upcycle:") == "phase1":
            return 2000 + seed
        return 3000 + seed

    def fingerprint(self, setting: Setting, runs: dict[str, "RunSpec"]) -> str:
        """Changes whenever anything that decides this run's numbers changes, including the runs it starts from
        (a finished run is reused only when its fingerprint matches)."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("label", "cfg")}
        d["cfg"] = self.cfg.to_dict() if self.cfg is not None else None
        # step counts and learning rates are in the spec itself; proxy sizes matter only to runs that use them
        skip = {"name", "seeds", "experiments", "phase1_steps", "phase2_steps", "finetune_steps", "phase1_lr",
                "phase2_lr", "phase1_warmup", "phase2_warmup", "paper_scale", "paper_scale_seq", "ckpt_interval",
                "default_data"}
        if not self.proxies:
            skip |= {f.name for f in dataclasses.fields(Setting) if f.name.startswith(("proxy_", "glue_", "xsum_"))}
            skip.add("finetune_lr")
        if not self.memory:
            skip.add("memory_batch")
        d["setting"] = {k: v for k, v in dataclasses.asdict(setting).items() if k not in skip}
        d["deps"] = [runs[n].fingerprint(setting, runs) for n in self.deps()]
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def experiment_runs(setting: Setting) -> tuple[dict[str, RunSpec], dict[str, list[str]]]:
    """All run specs (per seed, the same for every seed) and which runs each experiment reads."""
    from mom.model.flops import count

    lay = layouts(setting.shape)
    P1, P2, F = setting.phase1_steps, setting.phase2_steps, setting.finetune_steps
    lr1, lr2, w1, w2 = setting.phase1_lr, setting.phase2_lr, setting.phase1_warmup, setting.phase2_warmup
    runs: dict[str, RunSpec] = {}

    def add(spec: RunSpec) -> None:
        runs[spec.name] = spec

    def phase2(name: str, label: str, cfg, steps: int = P2, **kw) -> None:
        add(RunSpec(name, "train", label, cfg, init="phase1", steps=steps, lr=lr2, warmup=w2, **kw))

    def scratch(name: str, label: str, cfg, steps: int) -> None:
        add(RunSpec(name, "train", label, cfg, steps=steps, lr=lr1, warmup=w1))

    scratch("phase1", "phase 1: vanilla from scratch", lay["vanilla"], P1)
    # ---- main: everything sees P1 + P2 steps of tokens in total, except the FLOP-matched vanilla
    phase2("vanilla-cont", "vanilla, continued", lay["vanilla"], proxies=True, memory=True)
    ratio = (count(lay["mom-p"], setting.seq_len).train_flops_per_token
             / count(lay["vanilla"], setting.seq_len).train_flops_per_token)
    phase2("vanilla-flops", f"vanilla, continued for MoM_P's training FLOPs ({ratio:.2f}× the tokens)",
           lay["vanilla"], steps=max(1, round(P2 * ratio)))
    phase2("mom-p", "MoM_P (K=2, H=6; deeper, equal params)", lay["mom-p"], proxies=True, memory=True)
    phase2("mom-e", "MoM_E (K=3, H=1; shallower)", lay["mom-e"], memory=True)
    # ---- baselines: configurations of the same model
    phase2("layerskip", "layer-skip", lay["layerskip"])
    phase2("mod", "Mixture-of-Depths (12.5% capacity, as published)", lay["mod"])
    add(RunSpec("moe", "train", "MoE (parameter-matched, experts carved from phase 1)", lay["moe"],
                init="upcycle:phase1", steps=P2, lr=lr2, warmup=w2))
    scratch("universal", "parameter sharing (from scratch)", lay["universal"], P1 + P2)
    # ---- K × H grid (K=2, H=6 is MoM_P), chunking
    for k in (1, 2, 3):
        for h in (1, 2, 4):
            phase2(f"grid-K{k}H{h}", f"K={k}, H={h}", lay[f"grid-K{k}H{h}"])
    for name, label in (("chunks1-noanchor", "1 chunk, no anchor"), ("chunks2-anchor", "2 chunks, anchors"),
                        ("chunks2-noanchor", "2 chunks, no anchor")):
        phase2(name, label, lay[name])
    # ---- pruning vs smaller pools
    add(RunSpec("prune-a50-f75", "prune", "MoM_P − 50% attention, − 25% FFN", source="mom-p", attn_keep=0.5,
                ffn_keep=0.75))
    add(RunSpec("prune-a50-f75-ft", "train", "… + further training", init="prune-a50-f75", steps=F, lr=lr2,
                warmup=w2))
    add(RunSpec("mom-p-ft", "train", "MoM_P + the same further training (control)", init="mom-p", steps=F,
                lr=lr2, warmup=w2))
    phase2("pools-a50-f75", "smaller pools (2 attn / 3 FFN) trained in phase 2 (official ablation)",
           lay["pools-a50-f75"], steps=P2 + F)
    add(RunSpec("prune-a50", "prune", "MoM_P − 50% attention only", source="mom-p", attn_keep=0.5))
    add(RunSpec("prune-f50", "prune", "MoM_P − 50% FFN only", source="mom-p", ffn_keep=0.5))
    # ---- two-phase vs from scratch (vs compute-matched vanilla: vanilla-flops)
    scratch("mom-p-scratch", "MoM_P from scratch", lay["mom-p"], P1 + P2)
    exp = {
        "main": ["phase1", "vanilla-cont", "vanilla-flops", "mom-p", "mom-e"],
        "baselines": ["vanilla-cont", "mom-p", "layerskip", "mod", "moe", "universal"],
        "efficiency": ["vanilla-cont", "mom-p", "mom-e"],
        "grid": ["mom-p"] + [f"grid-K{k}H{h}" for k in (1, 2, 3) for h in (1, 2, 4)],
        "chunking": ["mom-p", "chunks1-noanchor", "chunks2-anchor", "chunks2-noanchor"],
        "pruning": ["mom-p", "mom-p-ft", "prune-a50-f75", "prune-a50-f75-ft", "pools-a50-f75", "prune-a50",
                    "prune-f50"],
        "two-phase": ["phase1", "vanilla-cont", "vanilla-flops", "mom-p", "mom-p-scratch"],
    }
    return runs, exp


def needed_runs(runs: dict[str, RunSpec], exp: dict[str, list[str]], experiments: list[str]) -> list[str]:
    """The runs the chosen experiments read, dependencies first (in definition order)."""
    want: list[str] = []

    def visit(name: str) -> None:
        for d in runs[name].deps():
            visit(d)
        if name not in want:
            want.append(name)

    for e in experiments:
        for name in exp[e]:
            visit(name)
    return want
