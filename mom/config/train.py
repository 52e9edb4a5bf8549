""":class:`TrainConfig`: how a model is trained (optimiser, schedule, batch geometry, evaluation and checkpoint
cadence, device, compile), and its named presets."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from mom.config.base import JsonConfig, check_types, resolve_spec, suggest
from mom.errors import ConfigError
from mom.fileio import write_json_atomic  # noqa: F401  (re-exported: configs are written with it)

# ---------------------------------------------------------------------------------------------- training
TRAIN_CONFIG_FORMAT_VERSION = 1


DeviceDtype = Literal["auto", "float32", "bfloat16"]


Schedule = Literal["cosine", "constant"]


Parallel = Literal["ddp", "fsdp"]


# torch.compile's modes; the two that replay CUDA graphs on a GPU need inputs they write into (a KV cache) at fixed
# addresses, and each step to be marked as one (``torch.compiler.cudagraph_mark_step_begin``).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def cuda_graphs(compile_mode: str | None) -> bool:
    """Whether ``torch.compile(mode=compile_mode)`` replays CUDA graphs (on a GPU)."""
    return compile_mode in ("reduce-overhead", "max-autotune")


def check_compile_mode(compile: bool, compile_mode: str | None) -> None:
    """A ``--compile-mode`` must be one of :data:`COMPILE_MODES` and come with ``--compile``."""
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise ConfigError(f"unknown compile mode {compile_mode!r}; choose from {', '.join(COMPILE_MODES)}")
    if compile_mode is not None and not compile:
        raise ConfigError("a compile mode needs --compile")


@dataclass
class TrainConfig(JsonConfig):
    """How a model is trained: optimiser, schedule, batch geometry, evaluation and checkpoint cadence.

    The optimiser defaults are the paper's (AdamW β = (0.9, 0.95), ε = 1e-5, weight decay 0.1 on matrices only,
    gradient clipping at 1.0, lr 1e-3 with linear warm-up then cosine decay to ``min_lr``). The batch geometry
    and step counts default to something one machine can run; ``train_preset("official-phase1")`` has the paper's
    (524,288 tokens per step, 20k steps) with the official scripts' schedule (docs/deviations.md). One optimiser
    step consumes ``tokens_per_step`` tokens over all processes: ``batch_size`` sequences of ``seq_len`` tokens per
    forward, accumulated ``accum_steps`` times.
    """

    _FORMAT_VERSION: ClassVar[int] = TRAIN_CONFIG_FORMAT_VERSION
    _LABEL: ClassVar[str] = "train "
    _KIND: ClassVar[str] = "train"

    max_steps: int = 2000  # optimiser steps of the whole run (the cosine decays to min_lr at this step)
    batch_size: int = 8  # sequences per forward pass per process (the micro-batch)
    seq_len: int = 0  # tokens per sequence; 0 means the model's n_ctx
    tokens_per_step: int = 0  # global tokens per optimiser step; 0 means one micro-batch per process
    lr: float = 1e-3  # peak learning rate
    min_lr: float | None = None  # the cosine ends here; None means lr/10
    warmup_steps: int | None = None  # linear warm-up from lr/warmup_steps to lr; None means 5% of max_steps
    schedule: Schedule = "cosine"  # or "constant" (warm-up, then lr)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-5
    weight_decay: float = 0.1  # on matmul weights and embeddings; never on LayerNorms or biases
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping (the norm is still logged)
    router_lr_mult: float = 1.0  # the routers' learning rate is lr × this (warm-up and cosine alike); < 1 slows them
    eval_interval: int = 200  # steps between validation passes (also at step 0 and at the end); 0 = at those two only
    eval_tokens: int = 65536  # validation tokens per pass (consecutive windows from the start); 0 = the whole split
    log_interval: int = 10  # steps between metrics.jsonl rows with routing statistics
    ckpt_interval: int = 500  # steps between checkpoints (also at the end); 0 = only at the end
    keep_checkpoints: int = 1  # how many step checkpoints to keep on disk (the newest ones)
    seed: int = 1337  # initialisation, and with the step number the data order
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps
    dtype: DeviceDtype = "auto"  # auto = bf16 autocast on CUDA, float32 elsewhere
    compile: bool = False  # torch.compile the training step (evaluation runs uncompiled)
    parallel: Parallel = "ddp"  # under torchrun: ddp (replicas) or fsdp (FSDP2: sharded gradients and AdamW state)
    max_bad_steps: int = 3  # stop after this many optimiser steps in a row skipped for a non-finite loss or gradient
    collapse_share: float = 0.9  # router collapse: one module picked by more than this fraction of the tokens …
    collapse_patience: int = 3  # … at this many metrics rows in a row is reported as a warning in metrics.jsonl
    tensorboard: bool | None = None  # TensorBoard event files in RUN/tensorboard; None = when tensorboard is installed
    csv: bool = True  # metrics.csv beside metrics.jsonl (train and val rows, routing summaries flattened)

    # Fields that may differ when a run is resumed: they change when things happen or where, not what is computed.
    # batch_size and tokens_per_step may change (e.g. after running out of memory) because the rows of a step do not
    # depend on the micro-batch size; the resume check on the effective tokens per step keeps each step the same.
    RESUMABLE_CHANGES = ("eval_interval", "log_interval", "ckpt_interval", "keep_checkpoints", "compile", "device",
                         "batch_size", "tokens_per_step", "max_bad_steps", "collapse_share", "collapse_patience",
                         "parallel", "tensorboard", "csv")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_types(self)
        for f in ("max_steps", "batch_size"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{f} must be ≥ 1, got {getattr(self, f)}")
        for f in ("seq_len", "tokens_per_step", "warmup_steps", "eval_interval", "eval_tokens", "ckpt_interval"):
            if (getattr(self, f) or 0) < 0:
                raise ConfigError(f"{f} must be ≥ 0, got {getattr(self, f)}")
        for f in ("log_interval", "keep_checkpoints", "max_bad_steps", "collapse_patience"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{f} must be ≥ 1, got {getattr(self, f)}")
        if not 0 < self.collapse_share <= 1:
            raise ConfigError(f"collapse_share must be in (0, 1], got {self.collapse_share}")
        if not self.lr > 0 or not 0 <= self.final_lr <= self.lr:
            raise ConfigError(f"need lr > 0 and 0 ≤ min_lr ≤ lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.warmup > self.max_steps:
            raise ConfigError(f"warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps}); "
                              "lower --train.warmup_steps")
        for f in ("beta1", "beta2"):
            if not 0 <= getattr(self, f) < 1:
                raise ConfigError(f"{f} must be in [0, 1), got {getattr(self, f)}")
        if not 0 < self.router_lr_mult <= 1000:
            raise ConfigError(f"router_lr_mult must be in (0, 1000], got {self.router_lr_mult}")
        if not self.eps > 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("eps must be > 0, weight_decay and grad_clip ≥ 0")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"device must be auto, cpu, mps, cuda or cuda:N, got {self.device!r}")
        for f in ("batch_size", "seq_len"):  # tensor dimensions (numpy refused 1e20 inside mom train)
            if getattr(self, f) >= 2**31:
                raise ConfigError(f"{f} must be < 2**31, got {getattr(self, f)}")
        if not 0 <= self.seed < 2**64:  # numpy's data-order generator takes no negative seed, torch none ≥ 2**64
            raise ConfigError(f"seed must be in [0, 2**64), got {self.seed}")

    @property
    def final_lr(self) -> float:
        """Where the cosine ends: ``min_lr``, or lr/10 (nanoGPT's choice) when unset."""
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @property
    def warmup(self) -> int:
        """Warm-up steps: ``warmup_steps``, or 5% of ``max_steps`` when unset."""
        return round(0.05 * self.max_steps) if self.warmup_steps is None else self.warmup_steps


# GPT-2-scale geometry of the paper and its official scripts: 524,288 tokens per step of 1,024-token sequences, phase 1
# (vanilla pretraining) 20k steps, phase 2 (routers and modules together) 5k steps, peak lr 1e-3, AdamW (0.9, 0.95),
# weight decay 0.1 (TrainConfig's defaults). docs/deviations.md gives the provenance of every value.
_GPT2_SCALE = dict(tokens_per_step=524288, seq_len=1024, lr=1e-3, eval_interval=500, ckpt_interval=1000)

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # One machine, small models: the paper's optimiser, a short schedule.
    "default": {},
    # The official scripts' schedule: HF's cosine to 0 after a 2,000-step warm-up (their long runs). Phase 2's
    # warm-up is the paper's 500 (the official phase-2 warm-up is not published).
    "official-phase1": dict(_GPT2_SCALE, max_steps=20000, warmup_steps=2000, min_lr=0.0),
    "official-phase2": dict(_GPT2_SCALE, max_steps=5000, warmup_steps=500, min_lr=0.0),
    # The earlier presets (once named paper-phase*): the paper's geometry with our schedule, warm-up 500 and cosine
    # to lr/10 = 1e-4 (nanoGPT's floor), which is not the official scripts'.
    "ours-phase1": dict(_GPT2_SCALE, max_steps=20000, warmup_steps=500, min_lr=1e-4),
    "ours-phase2": dict(_GPT2_SCALE, max_steps=5000, warmup_steps=500, min_lr=1e-4),
}
# Names that no longer exist, and what to use instead.
RENAMED_TRAIN_PRESETS = {
    f"paper-phase{i}": f"official-phase{i} (the official scripts' schedule) or ours-phase{i} (the preset once so "
                       "named: warm-up 500, cosine to 1e-4)" for i in (1, 2)}


def train_preset(name: str) -> TrainConfig:
    if name in RENAMED_TRAIN_PRESETS:
        raise ConfigError(f"train preset '{name}' was renamed: use {RENAMED_TRAIN_PRESETS[name]}")
    if name not in TRAIN_PRESETS:
        raise ConfigError(f"unknown train preset '{name}'{suggest(name, set(TRAIN_PRESETS))}; "
                          f"train presets: {', '.join(TRAIN_PRESETS)}")
    return TrainConfig(**TRAIN_PRESETS[name])


def resolve_train_config(spec: str) -> TrainConfig:
    """A train preset name or a path to a train JSON config (a file, or a run directory holding train_config.json)."""
    return resolve_spec(spec, TrainConfig, "train_config.json", train_preset)
