#!/usr/bin/env python
"""Running a reproduction: the small-scale reproduction of the experiments of Mixture-of-Modules (Gong et al.,
EMNLP 2024).

    python -m scripts.reproduce --setting cpu --out runs/reproduce            # ≈ 1 h on 2 CPU cores
    python -m scripts.reproduce --setting smoke --out /tmp/rp --json /tmp/rp/r.json --report /tmp/rp/r.md
    python -m scripts.reproduce --setting cpu --report-only                   # docs/results.md from the JSON

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

import dataclasses
import datetime
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(REPO))

from mom.convert.upcycle import upcycle_moe  # noqa: E402
from mom.data import proxies  # noqa: E402
from mom.eval.glue import GlueParams, run_glue  # noqa: E402
from mom.eval.metrics import glue_metrics, rouge  # noqa: E402
from mom.eval.xsum import SummaryParams, run_xsum  # noqa: E402
from scripts.reproduce.experiments import RESULTS_FORMAT, RunSpec, Setting, experiment_runs, needed_runs  # noqa: E402


# ================================================================================================ running one run
def train_config(setting: Setting, spec: RunSpec, seed: int):
    from mom.config.train import TrainConfig

    return TrainConfig(max_steps=spec.steps, batch_size=setting.batch, seq_len=setting.seq_len, lr=spec.lr,
                       warmup_steps=max(1, spec.steps // 10), eval_interval=0, eval_tokens=setting.eval_tokens,
                       log_interval=max(1, min(10, spec.steps // 4)), ckpt_interval=0, seed=spec.data_seed(seed),
                       device=setting.device)


def val_loss_of(model, setting: Setting, data: Path) -> float:
    """Validation loss on exactly the windows ``mom train`` evaluates (same function, same windows)."""
    import torch

    from mom.data.tokens import load_tokens
    from mom.train.batches import Batches, evaluate
    from mom.train.distributed import Dist

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

    from mom.data.tokens import load_tokens

    tok = load_tokens(data, split, vocab_size=vocab)
    T = setting.seq_len
    n = min(n, len(tok) // T)
    return torch.from_numpy(np.asarray(tok[:n * T], dtype=np.int64).reshape(n, T))


def measure(model, setting: Setting, data: Path) -> dict[str, Any]:
    """FLOPs (analytic, with the routing measured on validation windows) and forward memory (measured)."""
    import torch

    from mom.analysis.memory import measure_memory
    from mom.analysis.routes import usage_from_routes
    from mom.model.flops import count

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
    return proxies.news_xsum() if name == "news-xsum" else proxies.load_classification(name, None)


def proxy_metrics(model_dir: Path, setting: Setting, seed: int, device: str) -> dict[str, Any]:
    """Fine-tune on each proxy (one seed: the run's) and score it; metrics are fractions in [0, 1]."""
    out: dict[str, Any] = {}
    gp = GlueParams(epochs=1, lr=setting.finetune_lr, batch_size=16, max_train=setting.glue_train,
                       max_eval=setting.glue_eval, max_len=setting.glue_max_len)
    for task in ("rt-polarity", "bible-para"):
        t0 = time.perf_counter()
        rep = run_glue(model_dir, _task(task), params=gp, seeds=[seed], device=device)
        out[task] = {**rep["mean"], "seconds": round(time.perf_counter() - t0, 1), "sizes": rep["sizes"]}
    sp = SummaryParams(epochs=1, lr=setting.finetune_lr, batch_size=8, max_train=setting.xsum_train,
                          max_eval=setting.xsum_eval, beams=1, max_new_tokens=setting.xsum_new_tokens,
                          max_doc_tokens=setting.xsum_doc_tokens)
    t0 = time.perf_counter()
    rep = run_xsum(model_dir, _task("news-xsum"), params=sp, seeds=[seed], device=device)
    out["news-xsum"] = {**rep["mean"], "seconds": round(time.perf_counter() - t0, 1),
                        "sizes": {"train": rep["sizes"]["train"], "test": rep["sizes"]["test"]}}
    return out


def proxy_baselines(setting: Setting) -> dict[str, Any]:
    """What no training reaches on the same evaluation subsets: a classifier that always predicts one class, and
    LEAD-1 (the document's first sentence) as the summary. A fine-tuned model at these numbers learned nothing."""
    from mom.data.tasks import split_sentences

    out: dict[str, Any] = {}
    for task in ("rt-polarity", "bible-para"):
        data = _task(task)
        golds = {s: [e.label for e in rows[:setting.glue_eval]] for s, rows in data.dev.items()}
        out[task] = {f"always-{c}": glue_metrics(data.spec, {s: [c] * len(g) for s, g in golds.items()}, golds)
                     for c in (0, 1)}
    test = _task("news-xsum").test[:setting.xsum_eval]
    lead = [(split_sentences(r.document) or [r.document])[0] for r in test]
    out["news-xsum"] = {"lead-1": rouge(lead, [r.summary for r in test])}
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

    from mom.device import pick_device
    from mom.model.model import MoM
    from mom.runs import read_metrics
    from mom.train.loop import train

    t0 = time.perf_counter()
    out = seed_dir / spec.name
    device = pick_device(setting.device)
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
            from mom.config.model import MoMConfig

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
        from mom.analysis.prune import prune, save_atomic

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

    from mom.analysis.memory import measure_memory, random_batch
    from mom.config.model import preset
    from mom.device import pick_device
    from mom.model.flops import count
    from mom.model.model import MoM

    device = pick_device(setting.device)
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

