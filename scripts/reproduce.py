#!/usr/bin/env python
"""Small-scale reproduction of the experiments of Mixture-of-Modules (Gong et al., EMNLP 2024).

    python scripts/reproduce.py --setting cpu --out runs/reproduce            # ≈ 1 h on 2 CPU cores
    python scripts/reproduce.py --setting smoke --out /tmp/rp --json /tmp/rp/r.json --report /tmp/rp/r.md
    python scripts/reproduce.py --setting cpu --report-only                   # docs/results.md from the JSON

Every experiment of the paper becomes a list of runs per seed on the built-in offline corpus:

* ``main``       MoM_P and MoM_E against vanilla and the baselines the paper compares with (layer-skip, MoD, MoE,
                 parameter sharing), all configurations of the same ``mom`` model: validation loss, the GLUE-style
                 proxies (``rt-polarity``, ``bible-para``), the XSUM-style proxy (``news-xsum``), FLOPs, memory;
* ``grid``       the K × H grid (K ∈ {1,2,3}, H ∈ {1,2,4}) on the MoM_P layout;
* ``chunking``   number of chunks (1, 2) × anchor layer (on, off) at equal depth and parameters;
* ``two-phase``  phase 2 from the vanilla model vs the same MoM from scratch (same total tokens) vs the vanilla
                 model continued for the same extra tokens and for the same extra training FLOPs;
* ``pruning``    removing 50% of the attention and 25% of the FFN modules of the trained MoM_P (by router usage),
                 with and without further training, and 50% of one half only (which half is more redundant);
* ``router``     GRU router (the paper's) vs MLP router;
* ``efficiency`` forward FLOPs and measured forward memory against vanilla, at run scale (trained models) and at
                 the paper's GPT-2-large scale (config level, random weights).

Work is shared: one phase-1 vanilla pretrain per seed, reused by every phase-2 variant of that seed, and a run
needed by several experiments (e.g. MoM_P) is trained once. Each finished run's summary is appended to the
results JSON (written atomically), so an interrupted reproduction resumes and skips finished runs;
``--report-only`` rebuilds the markdown report from the JSON alone (no number in the report comes from anywhere
else). Paper numbers quoted in the report are the ones stated in the paper (see PAPER below).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

RESULTS_FORMAT = 1
EXPERIMENTS = ("main", "grid", "chunking", "two-phase", "pruning", "router", "efficiency")


# ================================================================================================ settings
@dataclass(frozen=True)
class Setting:
    """How big every run of a reproduction is. Steps are optimiser steps of ``batch × seq_len`` tokens."""

    name: str
    scale: str  # "tiny" (6-layer d=128 presets) or "small" (GPT-2-small width, 12 layers)
    seeds: tuple[int, ...]
    experiments: tuple[str, ...]
    phase1_steps: int
    phase2_steps: int
    finetune_steps: int  # further training after pruning (and its unpruned control)
    batch: int
    seq_len: int
    phase1_lr: float
    phase2_lr: float
    eval_tokens: int  # validation tokens (the same consecutive windows for every model)
    shape: dict[str, Any] = field(default_factory=dict)  # model field overrides for every config (smoke: smaller)
    # proxy tasks: training examples (1 epoch), evaluation examples, fine-tuning lr
    glue_train: int = 256
    glue_eval: int = 256
    glue_max_len: int = 64
    xsum_train: int = 64
    xsum_eval: int = 24
    xsum_new_tokens: int = 24
    xsum_doc_tokens: int = 160
    finetune_lr: float = 5e-4
    memory_batch: int = 8
    paper_scale_seq: int = 256  # sequence length of the config-level GPT-2-large memory measurement
    device: str = "cpu"


SETTINGS: dict[str, Setting] = {
    # A few steps of a d=32 model: checks that every piece runs and the report is consistent (tests).
    "smoke": Setting(name="smoke", scale="tiny", seeds=(0,), experiments=("main", "pruning"),
                     phase1_steps=4, phase2_steps=2, finetune_steps=2, batch=2, seq_len=32, phase1_lr=3e-3,
                     phase2_lr=1e-3, eval_tokens=128,
                     shape=dict(d_model=32, n_head=2, n_ctx=64, router_hidden=16),
                     glue_train=8, glue_eval=8, glue_max_len=32, xsum_train=2, xsum_eval=2, xsum_new_tokens=4,
                     xsum_doc_tokens=24, memory_batch=2),
    # Every experiment, 3 seeds, sized for ≈ 1 h on 2 CPU cores (measured numbers: docs/results.md header).
    # The tiny models' cost is dominated by the 50257-word LM head, so tokens per step set the price of a step.
    "cpu": Setting(name="cpu", scale="tiny", seeds=(0, 1, 2), experiments=EXPERIMENTS,
                   phase1_steps=150, phase2_steps=30, finetune_steps=15, batch=8, seq_len=128, phase1_lr=3e-3,
                   phase2_lr=1e-3, eval_tokens=8192),
    # GPT-2-small width (12 layers, d=768, context 1024) for one GPU: 8k tokens per step. On the built-in corpus
    # (~4.9M tokens) phase 1 is ~2 epochs; pass --data with OpenWebText prepared the nanoGPT way for more text.
    "gpu": Setting(name="gpu", scale="small", seeds=(0, 1, 2), experiments=EXPERIMENTS,
                   phase1_steps=1200, phase2_steps=300, finetune_steps=100, batch=8, seq_len=1024,
                   phase1_lr=1e-3, phase2_lr=5e-4, eval_tokens=1 << 18, glue_train=4000, glue_eval=1000,
                   glue_max_len=128, xsum_train=365, xsum_eval=91, xsum_new_tokens=48, xsum_doc_tokens=768,
                   finetune_lr=5e-5, memory_batch=8, paper_scale_seq=1024, device="auto"),
}

# What the paper states (Gong et al., EMNLP 2024, as summarised in the design brief). Nothing else in the report is
# not measured.
PAPER = {
    "glue": "+1.4 GLUE avg (MoM_P vs GPT-2, equal parameters)",
    "rouge": "+1 ROUGE on XSUM (MoM_P vs GPT-2)",
    "beats_vanilla": "MoMs beat vanilla GPT-2 at every size",
    "flops": "−16% forward TFLOPs (MoM_E vs GPT-2-large)",
    "memory": "−42% forward memory (MoM_E vs GPT-2-large)",
    "pruning": "removing 50% of attention and 25% of FFN modules keeps performance",
    "attn_redundant": "attention is more over-parameterised than FFN",
}


# ================================================================================================ layouts
def layouts(scale: str, shape: dict[str, Any]) -> dict[str, Any]:
    """Model configs of every layout the experiments use, at ``scale``, with ``shape`` overrides applied.

    All MoM layouts decompose the same vanilla model (6 layers at tiny scale, 12 at small) except the baselines
    that cannot (parameter sharing; MoE, whose experts are upcycled copies of the layer's FFN)."""
    from mom.config import preset

    if scale == "tiny":
        L, van, momp, mome = 6, preset("tiny"), preset("tiny-mom"), preset("tiny-mom-e")
        specials = {n: preset(n) for n in ("layerskip", "mod", "universal", "moe")}
        # chunks × anchor at equal depth (8) and equal layers decomposed (6)
        chunking = {
            (1, True): momp,
            (1, False): momp.replace(name="c1-noanchor", bottom=1, top=0, chunks=1, n_attn=5, n_ffn=5, steps=7,
                                     anchor=False),
            (2, True): momp.replace(name="c2-anchor", bottom=0, top=0, chunks=2, n_attn=2, n_ffn=2, steps=3,
                                    anchor=True),
            (2, False): momp.replace(name="c2-noanchor", bottom=0, top=0, chunks=2, n_attn=3, n_ffn=3, steps=4,
                                     anchor=False),
        }
    elif scale == "small":
        L, van, momp, mome = 12, preset("gpt2"), preset("mom-p-small"), preset("mom-e-small")
        wide = dict(d_model=768, n_head=12, n_ctx=1024)
        specials = {
            "layerskip": preset("layerskip").replace(**wide, n_attn=12, n_ffn=12, steps=12),
            "mod": preset("mod").replace(**wide, n_attn=12, n_ffn=12, steps=12),
            "universal": preset("universal").replace(**wide, steps=12),
            "moe": preset("moe").replace(**wide, n_attn=12, n_ffn=48, steps=12),
        }
        chunking = {  # equal depth (16) and layers decomposed (12)
            (2, True): momp,
            (2, False): momp.replace(name="c2-noanchor", n_attn=5, n_ffn=5, steps=7, anchor=False),
            (1, True): momp.replace(name="c1-anchor", chunks=1, n_attn=9, n_ffn=9, steps=13, anchor=True),
            (1, False): momp.replace(name="c1-noanchor", chunks=1, n_attn=10, n_ffn=10, steps=14, anchor=False),
        }
    else:
        raise ValueError(f"unknown scale {scale!r}")
    out = {"vanilla": van, "mom-p": momp, "mom-e": mome, **specials}
    for (c, a), cfg in chunking.items():
        out[f"chunks{c}-{'anchor' if a else 'noanchor'}"] = cfg
    for k in (1, 2, 3):
        for h in (1, 2, 4):
            out[f"grid-K{k}H{h}"] = momp.replace(name=f"K{k}H{h}", top_k=k, steps=h)
    out["router-mlp"] = momp.replace(name=momp.name + "-mlp", router="mlp")
    out["layers"] = L
    if shape:
        out = {k: (v.replace(**shape) if k != "layers" else v) for k, v in out.items()}
    return out


# ================================================================================================ the plan
@dataclass
class RunSpec:
    """One run of one seed. ``kind``: ``train`` (optionally initialised from ``init``: another run of the seed,
    or ``upcycle:RUN`` for MoE experts copied from a vanilla run) or ``prune`` (``source`` pruned, no training)."""

    name: str
    kind: str
    label: str
    cfg: Any = None  # MoMConfig; None for a run that takes its init's config (training a pruned model further)
    init: str | None = None
    steps: int = 0
    lr: float = 0.0
    source: str | None = None  # prune: the run pruned
    attn_keep: float = 1.0
    ffn_keep: float = 1.0
    proxies: bool = False

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
                "phase2_lr", "paper_scale_seq"}
        if not self.proxies:
            skip |= {f.name for f in dataclasses.fields(Setting) if f.name.startswith(("glue_", "xsum_"))}
            skip.add("finetune_lr")
        d["setting"] = {k: v for k, v in dataclasses.asdict(setting).items() if k not in skip}
        d["deps"] = [runs[n].fingerprint(setting, runs) for n in self.deps()]
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def experiment_runs(setting: Setting) -> tuple[dict[str, RunSpec], dict[str, list[str]]]:
    """All run specs (per seed, the same for every seed) and which runs each experiment reads."""
    from mom.flops import count

    lay = layouts(setting.scale, setting.shape)
    P1, P2, F = setting.phase1_steps, setting.phase2_steps, setting.finetune_steps
    lr1, lr2 = setting.phase1_lr, setting.phase2_lr
    runs: dict[str, RunSpec] = {}

    def add(spec: RunSpec) -> None:
        runs[spec.name] = spec

    def phase2(name: str, label: str, cfg, proxies: bool = False) -> None:
        add(RunSpec(name, "train", label, cfg, init="phase1", steps=P2, lr=lr2, proxies=proxies))

    add(RunSpec("phase1", "train", "phase 1: vanilla from scratch", lay["vanilla"], steps=P1, lr=lr1))
    # ---- main comparison: everything sees P1 + P2 steps of tokens in total
    phase2("vanilla-cont", "vanilla, continued", lay["vanilla"], proxies=True)
    phase2("mom-p", "MoM_P (deeper, equal params)", lay["mom-p"], proxies=True)
    phase2("mom-e", "MoM_E (shallower)", lay["mom-e"], proxies=True)
    phase2("layerskip", "layer-skip", lay["layerskip"], proxies=True)
    phase2("mod", "MoD (expert choice, 50% capacity)", lay["mod"], proxies=True)
    add(RunSpec("moe", "train", "MoE (experts upcycled from phase 1)", lay["moe"], init="upcycle:phase1", steps=P2,
                lr=lr2, proxies=True))
    add(RunSpec("universal", "train", "parameter sharing (from scratch)", lay["universal"], steps=P1 + P2, lr=lr1,
                proxies=True))
    # ---- K × H grid, chunking, router
    for k in (1, 2, 3):
        for h in (1, 2, 4):
            phase2(f"grid-K{k}H{h}", f"K={k}, H={h}", lay[f"grid-K{k}H{h}"])
    for c in (1, 2):
        for a in (True, False):
            name = f"chunks{c}-{'anchor' if a else 'noanchor'}"
            if lay[name] is lay["mom-p"] or lay[name] == lay["mom-p"]:
                continue  # this chunking is MoM_P itself: the run is shared
            phase2(name, f"{c} chunk(s), anchor {'on' if a else 'off'}", lay[name])
    phase2("router-mlp", "MoM_P with MLP router", lay["router-mlp"])
    # ---- two-phase vs from scratch vs compute-matched vanilla
    add(RunSpec("mom-p-scratch", "train", "MoM_P from scratch", lay["mom-p"], steps=P1 + P2, lr=lr1))
    ratio = (count(lay["mom-p"], setting.seq_len).train_flops_per_token
             / count(lay["vanilla"], setting.seq_len).train_flops_per_token)
    add(RunSpec("vanilla-flops", "train", f"vanilla, continued for MoM_P's training FLOPs ({ratio:.2f}× tokens)",
                lay["vanilla"], init="phase1", steps=max(1, round(P2 * ratio)), lr=lr2))
    # ---- pruning
    add(RunSpec("prune-a50-f75", "prune", "MoM_P − 50% attention, − 25% FFN", source="mom-p", attn_keep=0.5,
                ffn_keep=0.75, proxies=True))
    add(RunSpec("prune-a50-f75-ft", "train", "… + further training", init="prune-a50-f75", steps=F, lr=lr2))
    add(RunSpec("mom-p-ft", "train", "MoM_P + the same further training (control)", init="mom-p", steps=F, lr=lr2))
    add(RunSpec("prune-a50", "prune", "MoM_P − 50% attention only", source="mom-p", attn_keep=0.5))
    add(RunSpec("prune-f50", "prune", "MoM_P − 50% FFN only", source="mom-p", ffn_keep=0.5))
    exp = {
        "main": ["vanilla-cont", "mom-p", "mom-e", "layerskip", "mod", "moe", "universal"],
        "grid": [f"grid-K{k}H{h}" for k in (1, 2, 3) for h in (1, 2, 4)],
        "chunking": ["mom-p"] + [n for n in runs if n.startswith("chunks")],
        "two-phase": ["phase1", "vanilla-cont", "vanilla-flops", "mom-p", "mom-p-scratch"],
        "pruning": ["mom-p", "mom-p-ft", "prune-a50-f75", "prune-a50-f75-ft", "prune-a50", "prune-f50"],
        "router": ["mom-p", "router-mlp"],
        "efficiency": ["vanilla-cont", "mom-p", "mom-e"],
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


# ================================================================================================ running one run
def train_config(setting: Setting, spec: RunSpec, seed: int):
    from mom.config import TrainConfig

    return TrainConfig(max_steps=spec.steps, batch_size=setting.batch, seq_len=setting.seq_len, lr=spec.lr,
                       warmup_steps=max(1, spec.steps // 10), eval_interval=0, eval_tokens=setting.eval_tokens,
                       log_interval=max(1, min(10, spec.steps // 4)), ckpt_interval=0, seed=spec.data_seed(seed),
                       device=setting.device)


def upcycle_moe(vanilla_dir: Path, cfg, out: Path) -> None:
    """MoE initialised from a vanilla model (sparse upcycling): step h's attention module is layer h's attention,
    and each of step h's FFN experts is a copy of layer h's FFN. The router weights of the K picked experts sum to
    1 and the experts are equal, so the upcycled model starts as exactly the vanilla function."""
    from mom.model import MoM

    van = MoM.from_pretrained(vanilla_dir)
    if van.config.bottom != cfg.steps or not van.config.is_vanilla:
        raise ValueError(f"upcycling needs a {cfg.steps}-layer vanilla model, got {van.config.name}")
    moe = MoM(cfg)
    vs, ms = van.state_dict(), moe.state_dict()
    for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
        ms[k] = vs[k].clone()
    halves = {"attn": ("ln_1.", "attn."), "ffn": ("ln_2.", "mlp.")}
    for h in range(cfg.steps):
        for half, prefixes in halves.items():
            for m in cfg.candidates(half, h):
                for key in ms:
                    tail = key.removeprefix("chunks.0.pool.")
                    if key.startswith("chunks.0.pool.") and tail.startswith(prefixes):
                        ms[key][m] = vs[f"bottom.{h}.{tail}"][0]
    moe.load_state_dict(ms)
    moe.save_pretrained(out)


def val_loss_of(model, setting: Setting, data: Path) -> float:
    """Validation loss on exactly the windows ``mom train`` evaluates (same function, same windows)."""
    import torch

    from mom.data import load_tokens
    from mom.train import Batches, Dist, evaluate

    device = next(model.parameters()).device
    tr = load_tokens(data, "train", vocab_size=model.config.vocab_size)
    va = load_tokens(data, "val", vocab_size=model.config.vocab_size)
    with torch.no_grad():
        return evaluate(model, Batches(tr, va, setting.seq_len, setting.batch, 1, 0, Dist(), device),
                        setting.eval_tokens, None)


def data_windows(data: Path, split: str, setting: Setting, n: int, vocab: int):
    """(n, T) consecutive windows from the start of a split, as a tensor."""
    import numpy as np
    import torch

    from mom.data import load_tokens

    tok = load_tokens(data, split, vocab_size=vocab)
    T = setting.seq_len
    n = min(n, len(tok) // T)
    return torch.from_numpy(np.asarray(tok[:n * T], dtype=np.int64).reshape(n, T))


def measure(model, setting: Setting, data: Path) -> dict[str, Any]:
    """FLOPs (analytic, with the routing measured on validation windows) and forward memory (measured)."""
    import torch

    from mom.flops import count, usage_from_routes
    from mom.memory import measure_memory

    cfg = model.config
    device = next(model.parameters()).device
    win = data_windows(data, "val", setting, 4 * setting.memory_batch, cfg.vocab_size).to(device)
    usage = {}
    if not cfg.is_vanilla:
        model.eval()
        routes = []
        with torch.no_grad():
            for i in range(0, win.shape[0], setting.memory_batch):
                routes += model(win[i:i + setting.memory_batch], return_routes=True).routes
        usage = usage_from_routes(routes)
    measured = count(cfg, setting.seq_len, usage=usage or None)
    bound = count(cfg, setting.seq_len)
    mem = measure_memory(model, win[:setting.memory_batch], train=False)
    return {"params": bound.params, "active_params": measured.active_params, "depth": cfg.depth,
            "usage": usage, "fwd_flops_per_token": measured.forward_flops_per_token,
            "fwd_flops_per_token_bound": bound.forward_flops_per_token,
            "train_flops_per_token": measured.train_flops_per_token,
            "fwd_peak_bytes": mem.forward_peak_bytes, "fwd_activation_bytes": mem.forward_activation_bytes,
            "param_bytes": mem.param_bytes, "memory_method": mem.method,
            "memory_shape": [setting.memory_batch, setting.seq_len],
            # the (B, T, vocab) fp32 logits are live at the forward's peak and dwarf a tiny model's activations
            "logits_bytes": setting.memory_batch * setting.seq_len * cfg.vocab_size * 4}


@functools.lru_cache(maxsize=None)
def _task(name: str):
    from mom import tasks

    return tasks.news_xsum() if name == "news-xsum" else tasks.load_classification(name, None)


def proxy_metrics(model_dir: Path, setting: Setting, seed: int, device: str) -> dict[str, Any]:
    """Fine-tune on each proxy (one seed: the run's) and score it; metrics are fractions in [0, 1]."""
    from mom import evaluate as ev

    out: dict[str, Any] = {}
    gp = ev.GlueParams(epochs=1, lr=setting.finetune_lr, batch_size=16, max_train=setting.glue_train,
                       max_eval=setting.glue_eval, max_len=setting.glue_max_len)
    for task in ("rt-polarity", "bible-para"):
        t0 = time.perf_counter()
        rep = ev.run_glue(model_dir, _task(task), params=gp, seeds=[seed], device=device)
        out[task] = {**rep["mean"], "seconds": round(time.perf_counter() - t0, 1), "sizes": rep["sizes"]}
    sp = ev.SummaryParams(epochs=1, lr=setting.finetune_lr, batch_size=8, max_train=setting.xsum_train,
                          max_eval=setting.xsum_eval, beams=1, max_new_tokens=setting.xsum_new_tokens,
                          max_doc_tokens=setting.xsum_doc_tokens)
    t0 = time.perf_counter()
    rep = ev.run_xsum(model_dir, _task("news-xsum"), params=sp, seeds=[seed], device=device)
    out["news-xsum"] = {**rep["mean"], "seconds": round(time.perf_counter() - t0, 1),
                        "sizes": {"train": rep["sizes"]["train"], "test": rep["sizes"]["test"]}}
    return out


def proxy_baselines(setting: Setting) -> dict[str, Any]:
    """What no training reaches on the same evaluation subsets: a classifier that always predicts one class, and
    LEAD-1 (the document's first sentence) as the summary. A fine-tuned model at these numbers learned nothing."""
    from mom import evaluate as ev
    from mom.tasks import split_sentences

    out: dict[str, Any] = {}
    for task in ("rt-polarity", "bible-para"):
        data = _task(task)
        golds = {s: [e.label for e in rows[:setting.glue_eval]] for s, rows in data.dev.items()}
        out[task] = {f"always-{c}": ev.glue_metrics(data.spec, {s: [c] * len(g) for s, g in golds.items()}, golds)
                     for c in (0, 1)}
    test = _task("news-xsum").test[:setting.xsum_eval]
    lead = [(split_sentences(r.document) or [r.document])[0] for r in test]
    out["news-xsum"] = {"lead-1": ev.rouge(lead, [r.summary for r in test])}
    return out


def removed_weight_share(report: dict) -> dict[str, float]:
    """Share of the router weight (pruning importance, summed over chunks) that the removed modules had received,
    per half: 0 means the routers never gave those modules any weight, so removing them changes nothing."""
    out = {}
    for half in ("attn", "ffn"):
        total = sum(sum(ch[half]["importance"]) for ch in report["chunks"])
        gone = sum(ch[half]["importance"][m] for ch in report["chunks"] for m in ch[half]["removed"])
        out[half] = gone / total if total > 0 else 0.0
    return out


def run_one(spec: RunSpec, setting: Setting, seed: int, seed_dir: Path, data: Path, say: Callable) -> dict:
    """Train (or prune) one run, measure it, and return its summary record."""

    from mom.model import MoM
    from mom.train import read_metrics, resolve_device, Dist, train

    t0 = time.perf_counter()
    out = seed_dir / spec.name
    device = resolve_device(setting.device, Dist())
    rec: dict[str, Any] = {"name": spec.name, "seed": seed, "kind": spec.kind, "label": spec.label}
    if spec.kind == "train":
        init = None
        if spec.init and spec.init.startswith("upcycle:"):
            init_dir = seed_dir / f"{spec.name}-init"
            upcycle_moe(seed_dir / spec.init.removeprefix("upcycle:"), spec.cfg, init_dir)
            init = str(init_dir)
        elif spec.init:
            init = str(seed_dir / spec.init)
        cfg = spec.cfg
        if cfg is None:  # train a pruned (or other) model further in its own layout
            from mom.config import MoMConfig

            cfg = MoMConfig.load(seed_dir / spec.init / "config.json")
        res = train(cfg, train_config(setting, spec, seed), out=out, data=str(data), init=init, force=True,
                    progress=False, command=["scripts/reproduce.py", setting.name, spec.name, f"seed {seed}"])
        if not res.finished:
            raise RuntimeError(f"{spec.name} seed {seed}: training did not finish")
        vals = [r for r in read_metrics(out) if r["type"] == "val"]
        rec.update(steps=res.step, tokens=res.tokens, train_seconds=round(res.seconds, 1), val_loss=res.val_loss,
                   val_loss_start=vals[0]["val_loss"] if vals else None, init=spec.init)
        model = MoM.from_pretrained(out, map_location=device).eval()
    else:  # prune: router usage measured on training windows, so the validation windows stay unseen
        from mom.prune import prune, save_atomic

        src = MoM.from_pretrained(seed_dir / spec.source, map_location=device).eval()
        win = data_windows(data, "train", setting, 32, src.config.vocab_size).to(device)
        batches = [win[i:i + setting.batch] for i in range(0, win.shape[0], setting.batch)]
        model, report = prune(src, spec.attn_keep, spec.ffn_keep, "usage", batches)
        save_atomic(model, out, report, force=True)
        rec.update(steps=0, tokens=0, train_seconds=0.0, val_loss=val_loss_of(model, setting, data),
                   val_loss_start=None, init=spec.source, prune={k: report[k] for k in ("n_attn", "n_ffn", "params")},
                   removed=[{h: ch[h]["removed"] for h in ("attn", "ffn")} for ch in report["chunks"]],
                   removed_weight_share=removed_weight_share(report))
    rec["config"] = model.config.to_dict()
    rec.update(measure(model, setting, data))
    del model
    if spec.proxies:
        rec["proxies"] = proxy_metrics(out, setting, seed, str(device))
    rec["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return rec


# ================================================================================================ paper scale
def paper_scale(setting: Setting, say: Callable) -> dict[str, Any]:
    """MoM_E-large vs GPT-2-large at the paper's size, config level: analytic forward FLOPs/token (no SKIP picks
    assumed: an upper bound for MoM_E) and forward peak memory measured on one random-weight forward."""
    import torch

    from mom.config import preset
    from mom.flops import count
    from mom.memory import measure_memory, random_batch
    from mom.model import MoM
    from mom.train import Dist, resolve_device

    device = resolve_device(setting.device, Dist())
    T = setting.paper_scale_seq
    out: dict[str, Any] = {"seq_len": T, "batch": 1, "device": str(device)}
    for name in ("gpt2-large", "mom-e-large"):
        t0 = time.perf_counter()
        cfg = preset(name)
        c = count(cfg, T)
        torch.manual_seed(0)
        model = MoM(cfg).to(device).eval()
        mem = measure_memory(model, random_batch(cfg.vocab_size, 1, T, device), train=False)
        out[name] = {"params": c.params, "depth": cfg.depth, "fwd_flops_per_token": c.forward_flops_per_token,
                     "fwd_peak_bytes": mem.forward_peak_bytes, "fwd_activation_bytes": mem.forward_activation_bytes,
                     "param_bytes": mem.param_bytes, "memory_method": mem.method,
                     "seconds": round(time.perf_counter() - t0, 1)}
        del model
        say(f"paper scale {name}: {out[name]['seconds']} s")
    return out


# ================================================================================================ results file
def load_results(path: Path, setting: Setting) -> dict[str, Any]:
    if path.is_file():
        res = json.loads(path.read_text(encoding="utf-8"))
        if res.get("setting", {}).get("name") != setting.name:
            raise SystemExit(f"{path} holds the '{res.get('setting', {}).get('name')}' setting, not "
                             f"'{setting.name}': pass another --json")
        return res
    return {"format": RESULTS_FORMAT, "setting": dataclasses.asdict(setting), "runs": [], "invocations": []}


def save_results(path: Path, res: dict[str, Any]) -> None:
    from mom.fileio import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, res)


def machine() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(), "gpu": gpu,
            "python": platform.python_version()}


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "mom", "scripts/reproduce.py"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def reproduce(setting: Setting, out: Path, json_path: Path, data: Path, experiments: list[str], say) -> dict:
    res = load_results(json_path, setting)
    res["setting"] = dataclasses.asdict(setting)
    runs, exp = experiment_runs(setting)
    order = needed_runs(runs, exp, [e for e in experiments if e in exp])
    inv = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
           "machine": machine(), "experiments": experiments, "seeds": list(setting.seeds)}
    res["invocations"].append(inv)
    t_all = time.perf_counter()
    done = {(r["seed"], r["name"]): r for r in res["runs"]}
    total = len(order) * len(setting.seeds)
    n = 0
    for seed in setting.seeds:
        seed_dir = out / f"seed{seed}"
        for name in order:
            n += 1
            spec = runs[name]
            fp = spec.fingerprint(setting, runs)
            old = done.get((seed, name))
            # A finished record is reused only if its fingerprint matches and the run's model is on disk when a
            # later run of this invocation still needs it as an initialisation.
            if old is not None and old.get("fingerprint") == fp and (seed_dir / name / "model.safetensors").is_file():
                say(f"[{n}/{total}] seed {seed} {name}: done earlier, skipped")
                if spec.kind == "prune" and "removed_weight_share" not in old:
                    # records written before this field existed: read it from the run's own prune.json
                    rep = json.loads((seed_dir / name / "prune.json").read_text(encoding="utf-8"))
                    old["removed_weight_share"] = removed_weight_share(rep)
                    save_results(json_path, res)
                continue
            say(f"[{n}/{total}] seed {seed} {name}: {spec.label} ...")
            rec = run_one(spec, setting, seed, seed_dir, data, say)
            rec["fingerprint"] = fp
            rec["commit"] = inv["commit"]
            res["runs"] = [r for r in res["runs"] if (r["seed"], r["name"]) != (seed, name)] + [rec]
            done[(seed, name)] = rec
            save_results(json_path, res)
            say(f"[{n}/{total}] seed {seed} {name}: val loss {rec['val_loss']:.4f}, {rec['wall_seconds']:.0f} s "
                f"(elapsed {(time.perf_counter() - t_all) / 60:.1f} min)")
    if "main" in experiments and "proxy_baselines" not in res:
        res["proxy_baselines"] = proxy_baselines(setting)
    if "efficiency" in experiments and setting.name != "smoke":
        if res.get("paper_scale", {}).get("seq_len") != setting.paper_scale_seq:
            res["paper_scale"] = paper_scale(setting, say)
    inv["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    inv["wall_seconds"] = round(time.perf_counter() - t_all, 1)
    save_results(json_path, res)
    return res


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
    from mom.config import MoMConfig
    from mom.flops import router_matmul_params

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
        at = [SHORT.get(n, n) for n in names if (v := tb.vals(n, proxy(task, key))) and statistics.fmean(v) <= ref + 0.01]
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
        L.append(_row(["MoM_E forward FLOPs vs vanilla (tiny, trained)", PAPER["flops"], f"{fmt(dfl, 2, 1e-6)} MFLOP/token",
                       verdict(dfl, "lower", "forward FLOPs/token", "MoM_E", "vanilla", " MFLOP", 2, 1e-6)]))
        L.append(_row(["MoM_E forward memory vs vanilla (tiny, trained)", PAPER["memory"], f"{fmt(dmem, 2, 1 / 2**20)} MiB",
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


# ================================================================================================ CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--setting", choices=list(SETTINGS), default="cpu")
    p.add_argument("--out", default="runs/reproduce", help="run directories (default runs/reproduce/<setting>)")
    p.add_argument("--json", help="results JSON (default docs/results/<setting>.json)")
    p.add_argument("--report", help="markdown report (default docs/results.md for cpu, "
                                     "docs/results-<setting>.md otherwise)")
    p.add_argument("--data", default="data/builtin", help="prepared dataset directory (default data/builtin)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the setting's)")
    p.add_argument("--only", help=f"comma-separated experiments out of {', '.join(EXPERIMENTS)}")
    p.add_argument("--report-only", action="store_true", help="only regenerate the report from the JSON")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: tiny models on a shared 2-core machine run fastest on one)")
    args = p.parse_args(argv)
    setting = SETTINGS[args.setting]
    if args.seeds:
        setting = dataclasses.replace(setting, seeds=tuple(int(s) for s in args.seeds.split(",")))
    experiments = list(setting.experiments)
    if args.only:
        experiments = [e.strip() for e in args.only.split(",")]
        bad = [e for e in experiments if e not in EXPERIMENTS]
        if bad:
            p.error(f"unknown experiment(s) {', '.join(bad)}; choose from {', '.join(EXPERIMENTS)}")
    json_path = Path(args.json or REPO / "docs" / "results" / f"{setting.name}.json")
    report = Path(args.report or REPO / "docs" / ("results.md" if setting.name == "cpu"
                                                  else f"results-{setting.name}.md"))

    def say(msg: str) -> None:
        print(f"[reproduce {datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)

    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)
        data = Path(args.data)
        if not (data / "train.bin").is_file():
            from mom.data import prepare

            say(f"preparing the built-in corpus into {data}")
            prepare(["builtin"], data, progress=False)
        out = Path(args.out)
        if args.out == "runs/reproduce":
            out = out / setting.name
        reproduce(setting, out, json_path, data, experiments, say)
    if not json_path.is_file():
        raise SystemExit(f"{json_path}: no results yet (run without --report-only first)")
    from mom.fileio import atomic_write

    res = json.loads(json_path.read_text(encoding="utf-8"))
    report.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(report, build_report(res))
    say(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
