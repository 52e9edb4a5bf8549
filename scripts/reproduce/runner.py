#!/usr/bin/env python
"""Running a reproduction: the small-scale reproduction of the experiments of Mixture-of-Modules (Gong et al.,
EMNLP 2024) in the learning regime (models well below the unigram yardstick).

    python -m scripts.reproduce --setting cpu --jobs 2              # ≈ 2.4 h on 2 CPU cores (sizing: experiments.py)
    python -m scripts.reproduce --setting cpu --time-layouts 100    # tokens/s of every layout on this machine
    python -m scripts.reproduce --setting gpu --dry-run             # every gpu run's config + 2 steps on the CPU
    python -m scripts.reproduce --setting smoke --out /tmp/rp --json /tmp/rp/r.json --report /tmp/rp/r.md
    python -m scripts.reproduce --setting cpu --report-only         # docs/results.md from the JSON

Every claim of the paper (``experiments.CLAIMS``) becomes runs per seed on the built-in offline corpus, tokenised
with the setting's tokenizer (``cpu``: a 4,096-token corpus BPE; ``gpu``: GPT-2's BPE):

* ``main``       MoM_P against vanilla at equal parameters (vanilla continued for the same tokens) and at equal
                 training FLOPs (vanilla continued for MoM_P's training FLOPs), on validation loss and on the proxies
                 ``rt-polarity`` (SST-2-like) and ``news-xsum`` (XSUM-like), fine-tuned on their whole training sets;
                 MoM_E against vanilla;
* ``baselines``  MoM_P against layer-skip, Mixture-of-Depths, MoE and parameter sharing, all configurations of the
                 same ``mom`` model;
* ``efficiency`` forward FLOPs (with the routing measured) and the three memory readings (KV-cache generation, a
                 training step, a no-grad forward) of MoM_E against vanilla, and at the paper's GPT-2-large size
                 (config level, random weights);
* ``grid``       the K × H grid (K ∈ {1,2,3}, H ∈ {1,2,4}) on the MoM_P layout;
* ``chunking``   1 or 2 chunks × anchor layer on/off at equal depth;
* ``pruning``    removing 50% of the attention and 25% of the FFN modules of the trained MoM_P (by router usage), with
                 and without further training, against phase 2 with smaller pools (the official ablation), and 50% of
                 one half only;
* ``two-phase``  phase 2 from the vanilla model vs the same MoM from scratch (same total tokens) vs the vanilla model
                 continued for the same extra training FLOPs.

Work is shared: one phase-1 vanilla pretrain per seed, reused by every phase-2 arm of that seed, and a run needed by
several experiments (e.g. MoM_P) is trained once. Each finished run's record (its config, train config, the commit
it ran at, its numbers) is written to the results JSON atomically as soon as it ends, so an interrupted reproduction
resumes: finished runs are skipped (when their fingerprint matches), and an interrupted run continues from its last
checkpoint. ``--jobs N`` runs N runs at a time (each in its own process, one torch thread each by default), a run
starting once the runs it starts from are finished. ``--report-only`` rebuilds the markdown report from the JSON
alone (no number in the report comes from anywhere else).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import datetime
import json
import multiprocessing
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
from scripts.reproduce.experiments import RESULTS_FORMAT, RunSpec, Setting, experiment_runs, needed_runs  # noqa: E402
from scripts.reproduce.measure import (  # noqa: E402
    data_windows,
    loss_record,
    measure,
    proxy_baselines,
    proxy_metrics,
    removed_weight_share,
    val_loss_of,
)

FINGERPRINT_FILE = "reproduce-fingerprint.txt"  # in a run directory: which spec its checkpoints belong to


# ================================================================================================ the data
def check_data(data: Path, setting: Setting, say: Callable) -> None:
    """The prepared dataset at ``data`` (prepared from the built-in corpus when absent) must use the setting's
    tokenizer: the models' vocabulary and the yardstick depend on it."""
    from mom.data.tokenizer import data_tokenizer
    from mom.errors import DataError

    if not (data / "train.bin").is_file():
        from mom.data.prepare import prepare

        say(f"preparing the built-in corpus into {data} with the {setting.tokenizer} tokenizer")
        prepare(["builtin"], data, progress=False, tokenizer=setting.tokenizer)
    tok, known = data_tokenizer(data)
    name = tok.name if known else "gpt2"
    if name != setting.tokenizer:
        raise DataError(f"{data} is tokenised with {name}, the '{setting.name}' setting needs {setting.tokenizer} "
                        f"(mom prepare --tokenizer {setting.tokenizer})")


# ================================================================================================ running one run
def train_config(setting: Setting, spec: RunSpec, seed: int):
    from mom.config.train import TrainConfig

    return TrainConfig(max_steps=spec.steps, batch_size=setting.batch, seq_len=setting.seq_len, lr=spec.lr,
                       warmup_steps=min(spec.warmup, spec.steps), eval_interval=0, eval_tokens=setting.eval_tokens,
                       log_interval=max(1, min(10, spec.steps // 4)), ckpt_interval=setting.ckpt_interval,
                       seed=spec.data_seed(seed), device=setting.device, compile=setting.compile, tensorboard=False)


def _train(spec: RunSpec, setting: Setting, seed: int, seed_dir: Path, data: Path, fp: str):
    """Train one run; an interrupted run of the same fingerprint continues from its last checkpoint."""
    from mom.runs import read_latest
    from mom.train.loop import train

    out = seed_dir / spec.name
    marker = out / FINGERPRINT_FILE
    command = ["python -m scripts.reproduce", setting.name, spec.name, f"seed {seed}"]
    if marker.is_file() and marker.read_text().strip() == fp and read_latest(out) is not None:
        return train(None, None, out=out, data=str(data), resume=True, progress=False, command=command), True
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
    from mom.fileio import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, fp + "\n")  # before the first checkpoint: `--force` below leaves files not of a run alone
    return train(cfg, train_config(setting, spec, seed), out=out, data=str(data), init=init, force=True,
                 progress=False, command=command), False


def run_one(spec: RunSpec, setting: Setting, seed: int, seed_dir: Path, data: Path, fp: str) -> dict:
    """Train (or prune) one run, measure it, and return its summary record (runs in a worker process too)."""
    from mom.device import pick_device
    from mom.runs import load_model

    t0 = time.perf_counter()
    out = seed_dir / spec.name
    device = pick_device(setting.device)
    rec: dict[str, Any] = {"name": spec.name, "seed": seed, "kind": spec.kind, "label": spec.label,
                           "init": spec.init or spec.source}
    if spec.kind == "train":
        res, resumed = _train(spec, setting, seed, seed_dir, data, fp)
        if not res.finished:
            raise RuntimeError(f"{spec.name} seed {seed}: training did not finish")
        from mom.runs import read_metrics

        rows = read_metrics(out)
        vals = [r for r in rows if r["type"] == "val"]
        rec.update(steps=res.step, tokens=res.tokens, train_seconds=round(res.seconds, 1), resumed=resumed,
                   val_loss_start=vals[0]["val_loss"] if vals else None,
                   train_config=json.loads((out / "train_config.json").read_text(encoding="utf-8")))
        model = load_model(out, device)
        rec.update(loss_record(res.val_loss, data, setting, model.config.vocab_size))
    else:  # prune: router usage measured on training windows, so the validation windows stay unseen
        from mom.analysis.prune import prune, save_atomic

        src = load_model(seed_dir / spec.source, device)  # with its tokenizer, which the pruned model carries
        win = data_windows(data, "train", setting, 32, src.config.vocab_size).to(device)
        batches = [win[i:i + setting.batch] for i in range(0, win.shape[0], setting.batch)]
        model, report = prune(src, spec.attn_keep, spec.ffn_keep, "usage", batches)
        save_atomic(model, out, report, force=True)
        rec.update(steps=0, tokens=0, train_seconds=0.0, val_loss_start=None,
                   prune={k: report[k] for k in ("n_attn", "n_ffn", "params")},
                   removed=[{h: ch[h]["removed"] for h in ("attn", "ffn")} for ch in report["chunks"]],
                   removed_weight_share=removed_weight_share(report))
        rec.update(loss_record(val_loss_of(model, setting, data), data, setting, model.config.vocab_size))
    rec["config"] = model.config.to_dict()
    rec.update(measure(model, setting, data, spec.memory))
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

    from mom.analysis.memory import analytic_cache, measure_memory, random_batch
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
                     # generation with a KV cache, bf16, 16 × 1024 tokens: weights and every core's keys/values
                     "cache_16x1024_bf16": analytic_cache(cfg, 16, 1024, 2),
                     "seconds": round(time.perf_counter() - t0, 1)}
        del model
        say(f"paper scale {name}: {out[name]['seconds']} s")
    return out


# ================================================================================================ results file
def load_results(path: Path, setting: Setting) -> dict[str, Any]:
    if path.is_file():
        res = json.loads(path.read_text(encoding="utf-8"))
        check_format(path, res)
        if res.get("setting", {}).get("name") != setting.name:
            raise SystemExit(f"{path} holds the '{res.get('setting', {}).get('name')}' setting, not "
                             f"'{setting.name}': pass another --json")
        return res
    return {"format": RESULTS_FORMAT, "setting": dataclasses.asdict(setting), "runs": [], "invocations": []}


def check_format(path: Path, res: dict[str, Any]) -> None:
    if res.get("format") != RESULTS_FORMAT:
        raise SystemExit(f"{path} holds results of format {res.get('format')} (this reproduction writes format "
                         f"{RESULTS_FORMAT}: the learning-regime runs); move it away or pass another --json")


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
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "mom", "scripts/reproduce"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def drop_checkpoints(run_dir: Path) -> None:
    """A finished and recorded run needs only its final model (later runs start from it); its resume checkpoints
    (with the optimiser state: 3x the model) go, or the gpu setting's 84 runs would keep ~45 GB."""
    import shutil

    from mom.runs import CHECKPOINTS, LATEST

    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    (run_dir / LATEST).unlink(missing_ok=True)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class Scheduler:
    """Runs (seed, run) jobs once the runs they start from are finished: inline with ``jobs == 1``, else in a pool of
    ``jobs`` worker processes (spawned: a forked torch can deadlock). Phase-1 runs go first, since every phase-2
    run waits for its seed's."""

    def __init__(self, jobs: int, threads: int):
        self.jobs = jobs
        self.pool = None
        if jobs > 1:
            self.pool = cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                               initializer=_init_worker, initargs=(threads,))

    def run(self, todo: list[tuple[int, str]], deps: Callable[[int, str], list[tuple[int, str]]],
            finished: set[tuple[int, str]], start: Callable[[int, str], tuple], done: Callable[[int, str, dict], None]):
        """``start(seed, name)`` → the arguments of :func:`run_one`; ``done(seed, name, record)`` on each result."""
        # phase 1 first (everything waits for it), then the long from-scratch runs beside the phase-2 arms (not
        # left as a tail), then the plan's order
        todo = sorted(todo, key=lambda job: (job[1] != "phase1", bool(deps(*job)) or job[1] == "phase1",
                                             todo.index(job)))
        running: dict[Any, tuple[int, str]] = {}
        while todo or running:
            ready = [j for j in todo if all(d in finished for d in deps(*j))]
            if not ready and not running:
                raise RuntimeError(f"runs waiting for runs that never finish: {todo}")
            if self.pool is None:  # inline: one at a time, in order
                job = ready[0]
                todo.remove(job)
                rec = run_one(*start(*job))
                finished.add(job)
                done(*job, rec)
                continue
            while ready and len(running) < self.jobs:
                job = ready.pop(0)
                todo.remove(job)
                running[self.pool.submit(run_one, *start(*job))] = job
            fin, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in fin:
                job = running.pop(fut)
                rec = fut.result()  # a failed run stops the reproduction (finished runs are already saved)
                finished.add(job)
                done(*job, rec)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def reproduce(setting: Setting, out: Path, json_path: Path, data: Path, experiments: list[str], say,
              jobs: int = 1, threads: int = 1) -> dict:
    res = load_results(json_path, setting)
    res["setting"] = dataclasses.asdict(setting)
    runs, exp = experiment_runs(setting)
    order = needed_runs(runs, exp, [e for e in experiments if e in exp])
    inv = {"started": datetime.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
           "machine": machine(), "experiments": experiments, "seeds": list(setting.seeds), "jobs": jobs}
    res["invocations"].append(inv)
    t_all = time.perf_counter()
    done = {(r["seed"], r["name"]): r for r in res["runs"]}
    fps = {name: runs[name].fingerprint(setting, runs) for name in order}
    finished: set[tuple[int, str]] = set()
    todo = []
    for seed in setting.seeds:
        for name in order:
            old = done.get((seed, name))
            # A finished record is reused only if its fingerprint matches and the run's model is on disk (a later
            # run may start from it).
            if (old is not None and old.get("fingerprint") == fps[name]
                    and (out / f"seed{seed}" / name / "model.safetensors").is_file()):
                finished.add((seed, name))
            else:
                todo.append((seed, name))
    say(f"{len(finished)} of {len(order) * len(setting.seeds)} runs done earlier; {len(todo)} to run, "
        f"{jobs} at a time")
    total, n = len(todo), [0]

    def start(seed: int, name: str) -> tuple:
        say(f"seed {seed} {name}: {runs[name].label} ...")
        return runs[name], setting, seed, out / f"seed{seed}", data, fps[name]

    def finish(seed: int, name: str, rec: dict) -> None:
        n[0] += 1
        rec["fingerprint"] = fps[name]
        rec["commit"] = inv["commit"]
        res["runs"] = [r for r in res["runs"] if (r["seed"], r["name"]) != (seed, name)] + [rec]
        save_results(json_path, res)
        drop_checkpoints(out / f"seed{seed}" / name)
        say(f"[{n[0]}/{total}] seed {seed} {name}: val loss {rec['val_loss']:.4f} (unigram "
            f"{rec['unigram_loss']:.3f}), {rec['wall_seconds']:.0f} s (elapsed {(time.perf_counter() - t_all) / 60:.1f}"
            " min)")

    sched = Scheduler(jobs, threads)
    try:
        sched.run(todo, lambda seed, name: [(seed, d) for d in runs[name].deps()], finished, start, finish)
    finally:
        sched.close()
    if "main" in experiments and res.get("proxy_baselines", {}).get("max_eval", -1) != setting.proxy_max_eval:
        res["proxy_baselines"] = {**proxy_baselines(setting), "max_eval": setting.proxy_max_eval}
    if "efficiency" in experiments and setting.paper_scale:
        if res.get("paper_scale", {}).get("seq_len") != setting.paper_scale_seq:
            res["paper_scale"] = paper_scale(setting, say)
    inv["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    inv["wall_seconds"] = round(time.perf_counter() - t_all, 1)
    save_results(json_path, res)
    return res


# ================================================================================================ sizing, dry run
def time_layouts(setting: Setting, data: Path, steps: int, say: Callable,
                 experiments: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Train every distinct layout of the setting's plan (of ``experiments``, default all) ``steps`` steps from
    scratch (no evaluation, no checkpoint) and return its training speed: what the setting's sizing rests on."""
    import tempfile

    from mom.config.train import TrainConfig
    from mom.train.loop import train

    runs, exp = experiment_runs(setting)
    seen, out = {}, {}
    for name in needed_runs(runs, exp, experiments or list(setting.experiments)):
        cfg = runs[name].cfg
        if cfg is None or json.dumps(cfg.to_dict(), sort_keys=True) in seen:
            continue
        seen[json.dumps(cfg.to_dict(), sort_keys=True)] = name
        tcfg = TrainConfig(max_steps=steps, batch_size=setting.batch, seq_len=setting.seq_len, lr=setting.phase2_lr,
                           warmup_steps=1, eval_interval=0, eval_tokens=setting.seq_len, ckpt_interval=0,
                           log_interval=steps, device=setting.device, compile=setting.compile, tensorboard=False)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = train(cfg, tcfg, out=Path(tmp) / name, data=str(data), progress=False)
            wall = time.perf_counter() - t0
        out[name] = {"tokens": res.tokens, "train_seconds": round(res.seconds, 2), "wall_seconds": round(wall, 2),
                     "tokens_per_s": round(res.tokens / res.seconds, 1)}
        say(f"{name:18s} {cfg.name:22s} {res.tokens / res.seconds:9,.0f} tokens/s ({res.seconds:.1f} s for {steps} "
            "steps)")
    core_s = training_seconds(setting, runs, out, experiments or list(setting.experiments))
    say(f"training the plan at these speeds: {core_s / 60:.0f} core-minutes for {len(setting.seeds)} seed(s) "
        "(evaluation, measuring and proxies not included); divide by --jobs on as many free cores")
    return out


def training_seconds(setting: Setting, runs: dict[str, RunSpec], speeds: dict[str, dict[str, float]],
                     experiments: list[str]) -> float:
    """Seconds of training of the plan (all seeds, one run at a time) at the measured ``speeds`` (tokens/s by the
    run that timed each layout; a run takes the speed of the timed run of its layout, a config-less run (training
    a pruned model further) that of the run it starts from)."""
    by_cfg = {json.dumps(runs[n].cfg.to_dict(), sort_keys=True): v["tokens_per_s"] for n, v in speeds.items()}
    total = 0.0
    for name in needed_runs(runs, experiment_runs(setting)[1], experiments):
        spec = runs[name]
        src = spec
        while src.cfg is None and src.deps():
            src = runs[src.deps()[0]]
        if spec.steps == 0 or src.cfg is None:
            continue
        tps = by_cfg.get(json.dumps(src.cfg.to_dict(), sort_keys=True))
        if tps:
            total += spec.steps * setting.batch * setting.seq_len / tps
    return total * len(setting.seeds)


def dry_run_setting(setting: Setting, shape: dict[str, Any] | None = None) -> Setting:
    """The setting with every run cut to 2 steps of 1 short sequence, one seed, tiny proxies, on the CPU, uncompiled
    (``shape``: model overrides on top of the setting's, to shrink it for tests): the plan runs end to end, every
    run's config is built, loaded, trained and measured."""
    return dataclasses.replace(
        setting, name=setting.name, seeds=setting.seeds[:1], phase1_steps=2, phase2_steps=2, finetune_steps=2,
        phase1_warmup=1, phase2_warmup=1, batch=1, seq_len=min(setting.seq_len, 64), eval_tokens=64,
        shape={**setting.shape, **(shape or {})}, proxy_epochs=1, proxy_max_train=4, proxy_max_eval=2,
        xsum_new_tokens=4, xsum_doc_tokens=24, proxy_batch=2, memory_batch=1, ckpt_interval=0, device="cpu",
        compile=False, paper_scale_seq=8)
