"""Training: ``mom train`` — one loop for phase 1 (vanilla GPT-2), phase 2 (a MoM initialised by decomposing it),
MoM from scratch and the compute-matched vanilla continuation.

What a run does, in order (every user mistake is found before anything is written):

1. resolve the model config (preset/JSON + ``--model.X``) and the train config (preset/JSON + ``--train.X``);
2. open the data (``train.bin``/``val.bin``, nanoGPT's uint16 layout; the built-in corpus is prepared into
   ``data/builtin`` on first use) with its tokenizer (``tokenizer.json`` of a corpus BPE, else GPT-2): the model's
   ``vocab_size`` is taken from it (``vocab_from_data``, what ``mom train`` does unless ``--model.vocab_size`` is
   given) or checked against it, as is the tokenizer of an ``--init-from`` model or of the run being resumed; every
   token id is checked against the model's vocabulary; the train split's token counts give the unigram yardstick
   of the validation windows;
3. build the model from ``seed``; with ``--init-from`` copy weights from a run/model directory or an HF GPT-2
   (same layout: loaded as is; a vanilla source and a MoM target: decomposed per the layer map, routers fresh);
   with ``--resume`` load the latest checkpoint (model, optimiser moments, RNG, step) instead;
4. train: AdamW, linear warm-up + cosine, gradient accumulation up to ``tokens_per_step``, grad-norm clipping,
   bf16 autocast on CUDA, DDP under ``torchrun``; validation at step 0, every ``eval_interval`` and at the end;
   ``metrics.jsonl`` rows with losses, lr, grad norm, throughput and routing statistics; validation rows add bits
   per byte and the unigram yardstick (``val_bpb``, ``unigram_loss``, ``unigram_bpb``);
5. checkpoint every ``ckpt_interval`` steps and at the end, then write the final model (``model.safetensors`` +
   ``config.json`` at the top of the run directory, so ``--init-from RUN_DIR`` and ``MoM.from_pretrained`` read
   it).

Exact resume: the data order is a pure function of ``(seed, step)`` (each step draws its sequence offsets from a
generator seeded with both), the learning rate is a pure function of the step, and a checkpoint holds the
weights, AdamW's moments and step, and the RNG states. So a run killed after step N and resumed computes the
same steps N+1, N+2, … bit for bit on CPU as a run that was never interrupted (tested).

Run directory layout::

    config.json  train_config.json  run.json   model config, train config, provenance (command, data, init,
                                               tokenizer, the unigram yardstick)
    tokenizer.json                             the data's corpus BPE (none for GPT-2), also in every checkpoint
    metrics.jsonl                              one JSON object per log step ("train") and per evaluation ("val")
    checkpoints/step-00000500/                 model.safetensors, config.json, train_config.json,
                                               train_state.safetensors (AdamW moments, RNG), state.json (scalars)
    latest.json                                {"step": 500, "path": "checkpoints/step-00000500"}
    model.safetensors                          the final weights
    loss.png  routing.png                      written by ``mom train`` at the end

No pickle anywhere: tensors live in safetensors files, scalars in JSON. A checkpoint is written into a hidden
temporary directory (every file fsynced), renamed into place, and only then does ``latest.json`` (written
atomically) point at it; a crash or a full disk at any moment leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from mom.config.model import MoMConfig
from mom.config.train import TrainConfig
from mom.data.tokenizer import Tokenizer
from mom.data.tokens import load_tokens
from mom.errors import CheckpointError, ConfigError, MomError
from mom.model.model import MoM
from mom.runs import continue_run_dir, lock_run_dir, read_latest, read_metrics, start_run_dir
from mom.train.batches import Batches, ValScale, evaluate, resolve_data, val_scale
from mom.train.checkpoint import full_model_state, full_state, load_checkpoint, load_optimizer_state, save_checkpoint
from mom.train.distributed import Runtime, setup_runtime, shard_model
from mom.train.init import init_from
from mom.train.monitor import Monitor, describe_val, tensorboard_wanted
from mom.train.optim import lr_at, make_optimizer
from mom.train.resume import RunPlan, check_resumed_data, elastic_job, fit_vocabulary, plan_run
from mom.train.step import Stepper


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val_loss: float | None
    tokens: int
    seconds: float
    finished: bool
    main_process: bool = True  # False on the other ranks of a torchrun job (they write nothing)
    val_bpb: float | None = None  # bits per byte of val_loss
    unigram_loss: float | None = None  # the unigram yardstick of the same validation windows (nats per token)


def train(mcfg: MoMConfig | None, tcfg: TrainConfig | None, *, out: str | os.PathLike, data: str | None = None,
          init: str | None = None, resume: bool = False, force: bool = False, progress: bool = True,
          command: list[str] | None = None, stop_at: int | None = None, vocab_from_data: bool = False,
          on_eval: Callable[[int], None] | None = None) -> TrainResult:
    """Train a model; see the module docstring. ``mcfg``/``tcfg`` may be None with ``resume`` (taken from the run).

    ``stop_at``: return right after step ``stop_at`` and its checkpoint, as if the process were killed there (for
    tests and for splitting a long run into sessions; the run continues with ``resume=True``).
    ``vocab_from_data``: a new run's ``vocab_size`` is the data's tokenizer's (when the data names one).
    ``on_eval(step)``: called on the main process after each validation row is written (``mom train`` redraws the
    run's plots there; its time is not counted as training throughput)."""
    plan = plan_run(mcfg, tcfg, Path(out), data, init, resume, force, vocab_from_data)
    tensorboard_wanted(plan.tcfg)  # asked for without the package: one error line before anything is written
    rt = setup_runtime(plan.mcfg, plan.tcfg)
    data_dir = resolve_data(plan.data, rt.dist, progress=progress)
    plan, tok, tok_known, vocab_note = fit_vocabulary(plan, data_dir, vocab_from_data)
    train_tok = load_tokens(data_dir, "train", vocab_size=plan.mcfg.vocab_size)
    val_tok = load_tokens(data_dir, "val", vocab_size=plan.mcfg.vocab_size)
    check_resumed_data(plan, data_dir, train_tok, val_tok)
    batches = Batches(train_tok, val_tok, rt.seq_len, plan.tcfg.batch_size, rt.accum, plan.tcfg.seed, rt.dist,
                      rt.device)
    # The unigram smoothing runs over the tokenizer's vocabulary when the data names it, else the model's.
    vocab = tok.n_vocab if tok_known else plan.mcfg.vocab_size
    scale = val_scale(batches, plan.tcfg.eval_tokens, tok.byte_lengths(plan.mcfg.vocab_size), vocab)
    model, optimizer, names, state, init_note = build_model(plan, rt)
    # The run directory: only now, when every input has been checked on every process; held until the run ends.
    with contextlib.ExitStack() as held:
        rt.dist.barrier()
        if rt.dist.is_main:
            held.enter_context(lock_run_dir(plan.out))
            if plan.resuming:
                plan.run_info.update(scale.to_dict())
                continue_run_dir(plan.out, int(state["step"]), plan.run_info,
                                 plan.tcfg if plan.extend_from is not None else None)
            else:
                info = run_info(plan, rt, model, command, init_note, data_dir, train_tok, val_tok)
                start_run_dir(plan.out, plan.force, plan.mcfg, plan.tcfg,
                              {**info, **tok.describe(), **scale.to_dict()}, tok)
        rt.dist.barrier()
        run = Run(plan, rt, model, optimizer, names, batches, state, progress, tok, scale, on_eval)
        run.announce(init_note, vocab_note)
        try:
            run.loop(stop_at)
        finally:
            run.monitor.close()
        return run.finish()


def build_model(plan: RunPlan, rt: Runtime) -> tuple[nn.Module, torch.optim.Optimizer, list[str], dict, str | None]:
    """The model from the seed, then its init source (``--init-from``) or the checkpoint being resumed (weights into
    the whole model, then FSDP sharding, then the optimiser and its state)."""
    mcfg, tcfg = plan.mcfg, plan.tcfg
    torch.manual_seed(tcfg.seed)
    model = MoM(mcfg)
    init_note = init_from(model, plan.init) if plan.init is not None and not plan.resuming else None
    model.to(rt.device)
    state: dict[str, Any] = {}  # the checkpoint's state.json when resuming
    if plan.resuming:
        state = load_checkpoint(plan.resume_from[1], model, None, [], rt.device)
    if rt.fsdp:
        shard_model(model)
    optimizer, names = make_optimizer(model, tcfg, rt.device)
    if plan.resuming:
        load_optimizer_state(plan.resume_from[1], model, optimizer, names, state, rt.device)
        if int(state.get("tokens_per_step", rt.tokens_per_step)) != rt.tokens_per_step:
            raise ConfigError(f"--resume: the run used {state['tokens_per_step']} tokens per step, this launch would "
                              f"use {rt.tokens_per_step} ({rt.dist.world} process(es)); set --train.tokens_per_step")
    return model, optimizer, names, state, init_note


def run_info(plan: RunPlan, rt: Runtime, model: nn.Module, command: list[str] | None, init_note: str | None,
             data_dir: Path, train_tok: np.ndarray, val_tok: np.ndarray) -> dict[str, Any]:
    """A new run's provenance (run.json)."""
    return {"command": command, "init_from": plan.init, "init": init_note, "data": str(data_dir),
            "train_tokens": len(train_tok), "val_tokens": len(val_tok), "world_size": rt.dist.world,
            "device": str(rt.device), "autocast": str(rt.amp) if rt.amp else None,
            "tokens_per_step": rt.tokens_per_step, "accum_steps": rt.accum, "seq_len": rt.seq_len,
            "params": model.num_params(), "torch": torch.__version__, "resumed_at": [],
            "elastic_run_id": elastic_job()}


def wrap_model(model: nn.Module, mcfg: MoMConfig, tcfg: TrainConfig, rt: Runtime) -> nn.Module:
    """The module the training step calls: compiled (``--train.compile``) and/or wrapped by DDP."""
    fwd: nn.Module = torch.compile(model) if tcfg.compile else model
    if rt.dist.enabled and not rt.fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # A pool's stacked weights take part in every forward as whole tensors unless every token of a micro-batch
        # picks SKIP everywhere: only SKIP can leave parameters unused, and then DDP must be told to expect it.
        fwd = DDP(fwd, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                  find_unused_parameters=not mcfg.is_vanilla and mcfg.skip)
    return fwd


class Run:
    """A run in progress: its counters, evaluation and checkpoints around the :class:`Stepper`."""

    def __init__(self, plan: RunPlan, rt: Runtime, model: nn.Module, optimizer: torch.optim.Optimizer,
                 names: list[str], batches: Batches, state: dict[str, Any], progress: bool, tok: Tokenizer,
                 scale: ValScale, on_eval: Callable[[int], None] | None = None):
        self.plan, self.rt, self.model, self.optimizer = plan, rt, model, optimizer
        self.names, self.batches, self.tok, self.scale, self.on_eval = names, batches, tok, scale, on_eval
        self.mcfg, self.tcfg, self.out = plan.mcfg, plan.tcfg, plan.out
        self.start = self.done = int(state.get("step", 0))  # optimiser steps completed
        self.tokens = int(state.get("tokens", 0))
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.val_loss: float | None = None
        # The run's changes of max_steps, for the learning-rate schedule (optim.lr_at); this launch may add one.
        self.horizons = [list(h) for h in state.get("lr_horizons", [])]
        if plan.extend_from is not None:
            self.horizons.append([self.start, plan.extend_from])
        self.monitor = Monitor(self.out, rt, self.mcfg, self.tcfg, self.start, progress,
                               state.get("collapse_streak"), scale)
        self.stepper = Stepper(model, wrap_model(model, self.mcfg, self.tcfg, rt), optimizer, batches, self.tcfg, rt,
                               self.monitor.window, self.horizons)
        self.t_start = time.perf_counter()

    def announce(self, init_note: str | None, vocab_note: str | None = None) -> None:
        rt, tcfg, mcfg, say = self.rt, self.tcfg, self.mcfg, self.monitor.say
        amp = f" with {str(rt.amp).removeprefix('torch.')} autocast" if rt.amp else ""
        procs = f" × {rt.dist.world} processes" if rt.dist.enabled else ""
        accum = f"×{rt.accum} accumulated" if rt.accum > 1 else ""
        say(f"{'resuming' if self.plan.resuming else 'training'} {mcfg.name} ({self.model.num_params() / 1e6:.2f}M "
            f"params, depth {mcfg.depth}) on {rt.device}{amp}{procs}: {tcfg.max_steps} steps of "
            f"{rt.tokens_per_step:,} tokens ({tcfg.batch_size}×{rt.seq_len}{accum}) → {self.out}")
        say(f"tokenizer: {self.tok.name}" + (f" ({vocab_note})" if vocab_note else "")
            + f"; knowing only token frequencies scores {self.scale.unigram.loss:.3f} nats on the validation windows")
        if init_note:
            say(f"init: {init_note}")
        if self.plan.note:
            say(self.plan.note)
        if self.plan.resuming:
            say(f"resumed from {self.plan.resume_from[1]} (step {self.start})")
        if self.plan.extend_from is not None:
            say(self.extension_note())

    def extension_note(self) -> str:
        """What changing max_steps on --resume does to the learning rate (optim.lr_at), in one line."""
        tcfg, old = self.tcfg, self.plan.extend_from
        verb = "extending" if tcfg.max_steps > old else "shortening"
        if tcfg.schedule == "constant":
            return f"{verb} the run from {old} to {tcfg.max_steps} steps (constant learning rate {tcfg.lr:.3g})"
        now = lr_at(tcfg, self.start, self.horizons)
        return (f"{verb} the run from {old} to {tcfg.max_steps} steps at step {self.start}: the cosine is re-stretched "
                f"from the learning rate there ({now:.3g}) to min_lr ({tcfg.final_lr:.3g}) at step {tcfg.max_steps}")

    def loop(self, stop_at: int | None) -> None:
        """Steps from the start (or the resumed step) to ``max_steps``, with the errors a user can act on turned into
        one line that says what was kept."""
        tcfg, mon = self.tcfg, self.monitor
        try:
            if self.start >= tcfg.max_steps:
                mon.say(f"{self.out} already finished ({self.start} of {tcfg.max_steps} steps)")
            elif not self.plan.resuming:
                self.evaluate(0)
            self.model.train()
            bad_in_a_row = 0
            for step in range(self.start, tcfg.max_steps):
                done = step + 1
                logging = (done % tcfg.log_interval == 0 or done == tcfg.max_steps)
                res = self.stepper.run(step, want_routes=logging and not self.mcfg.is_vanilla)
                bad_in_a_row = 0 if res.applied else bad_in_a_row + 1
                if not res.applied:
                    self.skipped(done, bad_in_a_row, res.fault)
                self.done, self.tokens = done, self.tokens + self.rt.tokens_per_step
                if logging and mon.window.steps:
                    mon.train_row(done, res.lr, self.tokens, res.routes)
                mon.advance()
                stopping = stop_at is not None and done >= stop_at
                self.after_step(done, stopping)
                if stopping:
                    break
        except KeyboardInterrupt:
            latest = read_latest(self.out) if self.rt.dist.is_main else None
            then = (f"continue from step {latest[0]} with --resume" if latest
                    else "no checkpoint yet: start over with --force")
            mon.say(f"interrupted after step {self.done}; {then}")
            raise
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
            if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and not _is_host_oom(e):
                raise
            raise MomError(f"out of memory at step {self.done + 1} on {self.rt.device} (micro-batch {tcfg.batch_size}×"
                           f"{self.rt.seq_len}); {self.kept()} — continue with --resume and a smaller "
                           f"--train.batch_size plus --train.tokens_per_step {self.rt.tokens_per_step} (gradient "
                           "accumulation keeps the step the same)") from None
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise MomError(f"{self.out}: disk full at step {self.done} ({e.strerror}); {self.kept()} — free some "
                           "space and continue with --resume") from None

    def skipped(self, step: int, in_a_row: int, fault: str) -> None:
        self.monitor.fault(step, in_a_row, fault)
        if in_a_row >= self.tcfg.max_bad_steps:
            raise MomError(f"training stopped at step {step}: {in_a_row} step(s) in a row had a non-finite loss or "
                           f"gradients ({fault}); none of them was applied and {self.kept()} — lower --train.lr or "
                           "check the data, then --resume")

    def after_step(self, done: int, stopping: bool) -> None:
        """Evaluation and checkpoint when due; their time is not training throughput."""
        tcfg, window = self.tcfg, self.monitor.window
        if (tcfg.eval_interval and done % tcfg.eval_interval == 0) or done == tcfg.max_steps:
            t_pause = time.perf_counter()
            self.evaluate(done)
            self.model.train()
            window.t0 += time.perf_counter() - t_pause
        due = (tcfg.ckpt_interval and done % tcfg.ckpt_interval == 0) or done == tcfg.max_steps or stopping
        if due:
            t_pause = time.perf_counter()
            self.checkpoint(done)
            window.t0 += time.perf_counter() - t_pause

    def evaluate(self, step: int) -> None:
        t0 = time.perf_counter()
        # Always the uncompiled model: a compiled one would compile a second graph for no-grad evaluation (and a
        # third for a shorter last batch), which costs far more than one pass over eval_tokens saves.
        self.val_loss = evaluate(self.model, self.batches, self.tcfg.eval_tokens, self.rt.amp, lockstep=self.rt.fsdp)
        self.monitor.val_row(step, self.tokens, self.val_loss, time.perf_counter() - t0)
        if self.on_eval is not None and self.rt.dist.is_main:
            self.on_eval(step)

    def checkpoint(self, step: int) -> None:
        full = full_state(self.model, self.optimizer, self.names)  # on every process: FSDP shards are all-gathered
        if self.rt.dist.is_main:
            state = {"tokens": self.tokens, "elapsed_s": self.elapsed(), "tokens_per_step": self.rt.tokens_per_step,
                     "world_size": self.rt.dist.world, "val_loss": self.val_loss,
                     "collapse_streak": self.monitor.collapse.state(), "lr_horizons": self.horizons}
            save_checkpoint(self.out, step, self.model, full, self.tcfg, state, self.tok)
        self.rt.dist.barrier()

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    def kept(self) -> str:
        latest = read_latest(self.out) if self.rt.dist.is_main else None
        return f"the last checkpoint (step {latest[0]}) is intact" if latest else "no checkpoint was written yet"

    def finish(self) -> TrainResult:
        """A finished run writes its final model at the top of the run directory."""
        out, dist = self.out, self.rt.dist
        finished = self.done >= self.tcfg.max_steps
        final_sd = full_model_state(self.model) if finished and self.rt.fsdp else None
        if finished and dist.is_main:
            if not (out / "model.safetensors").is_file() or self.start < self.tcfg.max_steps:
                try:
                    self.model.save_pretrained(out, state_dict=final_sd, tokenizer=self.tok)
                except OSError as e:
                    raise CheckpointError(f"{out}: cannot write the final model ({e.strerror or e}); the last "
                                          "checkpoint is intact") from None
            if self.val_loss is None:
                self.val_loss = next((r["val_loss"] for r in reversed(read_metrics(out)) if r["type"] == "val"), None)
            val = "none" if self.val_loss is None else describe_val(self.val_loss, self.scale.bpb(self.val_loss),
                                                                      self.scale.unigram.loss)
            print(f"done: {self.done} steps, {self.tokens:,} tokens in {self.elapsed():.0f}s; final {val}; "
                  f"model in {out}", flush=True)
        dist.barrier()
        bpb = None if self.val_loss is None else self.scale.bpb(self.val_loss)
        return TrainResult(out, self.done, self.val_loss, self.tokens, self.elapsed(), finished, dist.is_main, bpb,
                           self.scale.unigram.loss)


def _is_host_oom(e: BaseException) -> bool:
    """PyTorch's CPU allocator reports exhaustion as a plain RuntimeError."""
    return "can't allocate memory" in str(e) or "DefaultCPUAllocator" in str(e)
