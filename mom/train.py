"""Training: ``mom train`` — one loop for phase 1 (vanilla GPT-2), phase 2 (a MoM initialised by decomposing it),
MoM from scratch and the compute-matched vanilla continuation.

What a run does, in order (every user mistake is found before anything is written):

1. resolve the model config (preset/JSON + ``--model.X``) and the train config (preset/JSON + ``--train.X``);
2. open the data (``train.bin``/``val.bin``, nanoGPT's uint16 layout; the built-in corpus is prepared into
   ``data/builtin`` on first use) and check every token id against the model's vocabulary;
3. build the model from ``seed``; with ``--init-from`` copy weights from a run/model directory or an HF GPT-2
   (same layout: loaded as is; a vanilla source and a MoM target: decomposed per the layer map, routers fresh);
   with ``--resume`` load the latest checkpoint (model, optimiser moments, RNG, step) instead;
4. train: AdamW, linear warm-up + cosine, gradient accumulation up to ``tokens_per_step``, grad-norm clipping,
   bf16 autocast on CUDA, DDP under ``torchrun``; validation at step 0, every ``eval_interval`` and at the end;
   ``metrics.jsonl`` rows with losses, lr, grad norm, throughput and routing statistics;
5. checkpoint every ``ckpt_interval`` steps and at the end, then write the final model (``model.safetensors`` +
   ``config.json`` at the top of the run directory, so ``--init-from RUN_DIR`` and ``MoM.from_pretrained`` read
   it) and the loss-curve and routing-usage plots.

Exact resume: the data order is a pure function of ``(seed, step)`` (each step draws its sequence offsets from a
generator seeded with both), the learning rate is a pure function of the step, and a checkpoint holds the
weights, AdamW's moments and step, and the RNG states. So a run killed after step N and resumed computes the
same steps N+1, N+2, … bit for bit on CPU as a run that was never interrupted (tested).

Run directory layout::

    config.json  train_config.json  run.json   model config, train config, provenance (command, data, init)
    metrics.jsonl                              one JSON object per log step ("train") and per evaluation ("val")
    checkpoints/step-00000500/                 model.safetensors, config.json, train_config.json,
                                               train_state.safetensors (AdamW moments, RNG), state.json (scalars)
    latest.json                                {"step": 500, "path": "checkpoints/step-00000500"}
    model.safetensors                          the final weights
    loss.png  routing.png                      written at the end

No pickle anywhere: tensors live in safetensors files, scalars in JSON. A checkpoint is written into a hidden
temporary directory (every file fsynced), renamed into place, and only then does ``latest.json`` (written
atomically) point at it; a crash or a full disk at any moment leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mom.config import MoMConfig, TrainConfig, resolve_config, resolve_train_config
from mom.fileio import MANIFEST, atomic_write, fsync_dir, verify_manifest, write_json_atomic, write_manifest
from mom.errors import CheckpointError, ConfigError, DataError, MomError

STATE_FORMAT_VERSION = 1
DEFAULT_DATA_DIR = Path("data") / "builtin"
CHECKPOINTS = "checkpoints"
LATEST = "latest.json"
METRICS = "metrics.jsonl"
# Everything a run writes into its directory (``--force`` removes these and nothing else).
RUN_FILES = ("config.json", "train_config.json", "run.json", METRICS, LATEST, CHECKPOINTS, "model.safetensors",
             MANIFEST, "loss.png", "routing.png")
TRAIN_STATE_FORMAT = "mom-train-state"
# A checkpoint directory's files, all listed in its manifest (written last, just before the directory's rename).
CHECKPOINT_FILES = ("model.safetensors", "config.json", "train_config.json", "train_state.safetensors", "state.json")


# ================================================================================================ distributed
@dataclass
class Dist:
    """Where this process sits in a ``torchrun`` job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def sum_(self, t: Tensor) -> Tensor:
        if self.enabled:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t


def init_distributed(device_spec: str) -> Dist:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` set): nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{device_spec}' requested but CUDA is not available (use --train.device cpu)")
    if not torch.distributed.is_initialized():
        use_cuda = device_spec.startswith("cuda") or (device_spec == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(local)
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank=rank, world=world, local_rank=local, enabled=True)


def resolve_device(spec: str, dist: Dist) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{spec}' requested but CUDA is not available (use --train.device cpu)")
        return torch.device("cuda", dist.local_rank) if spec == "cuda" or dist.enabled else torch.device(spec)
    if spec == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but MPS is not available")
    return torch.device(spec)


def shard_model(model: nn.Module) -> None:
    """FSDP2 (``--train.parallel fsdp``): shard parameters, gradients and AdamW moments over the processes.

    The whole model is one FSDP unit: a module pool's weights are applied by the dispatcher as tensors, not by
    calling a submodule, so per-layer units would never see their forward hooks fire. Parameters are therefore
    all-gathered for the forward and the backward of each micro-batch and resharded after; what is saved is the
    persistent memory of gradients and AdamW moments (3/4 of a DDP replica's), not activations. Autocast handles
    bf16 exactly as under DDP, so the two compute the same numbers."""
    from torch.distributed.fsdp import fully_shard

    fully_shard(model)


def _no_grad_sync(fwd: nn.Module, fsdp: bool):
    """Accumulating a micro-batch without reducing gradients: DDP's ``no_sync``, or FSDP2's switch."""
    if not fsdp:
        return fwd.no_sync()

    @contextlib.contextmanager
    def off():
        fwd.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            fwd.set_requires_gradient_sync(True)

    return off()


def autocast_dtype(tcfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: plain float32). ``auto`` is bf16 on CUDA GPUs that support it."""
    if tcfg.dtype == "float32":
        return None
    if tcfg.dtype == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def keep_freed_memory() -> bool:
    """On CPU with glibc, stop ``free`` from handing big blocks back to the kernel (``mallopt``: no mmap for large
    allocations, no heap trimming); returns whether it did.

    Every training step allocates and frees the same large buffers (the logits alone are B·T·V floats, 400 MB for
    16×128 tokens at GPT-2's vocabulary). glibc serves blocks over 32 MB with fresh ``mmap``s and unmaps them on
    free, so each step page-faults and zeroes hundreds of MB again: measured here, 35-40% of a CPU run's time was
    kernel time, and keeping the memory made ``tiny`` train ~1.5-1.8× faster (the usual advice is jemalloc or
    tcmalloc; this is the same effect without a preload). The process keeps its peak memory until it exits. Set
    ``MOM_MALLOC_TUNING=0`` to leave malloc alone."""
    if os.environ.get("MOM_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only (musl has no mallopt knobs of this kind)
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


# ================================================================================================ schedule
def lr_at(tcfg: TrainConfig, step: int) -> float:
    """Learning rate of the update that takes the model from ``step`` to ``step + 1`` completed steps.

    Linear warm-up over ``warmup`` updates (lr·(step+1)/warmup), then a cosine from ``lr`` at the end of the
    warm-up to ``min_lr`` at ``max_steps`` (or a constant ``lr`` with ``schedule='constant'``). A pure function
    of the step: there is no scheduler object to save, and resuming reproduces it exactly."""
    warm = tcfg.warmup
    if step < warm:
        return tcfg.lr * (step + 1) / warm
    if tcfg.schedule == "constant" or tcfg.max_steps <= warm:
        return tcfg.lr
    progress = min(1.0, (step - warm) / (tcfg.max_steps - warm))
    return tcfg.final_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tcfg.lr - tcfg.final_lr)


# ================================================================================================ optimiser
def decay_split(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the parameters that get weight decay, and of those that do not.

    Decided by what a parameter *is*, not by its number of dimensions: our module pools stack weights along a
    leading module axis, so a pool's LayerNorm gains are 2-D (N, D) and its linear weights 3-D. Decayed: the
    ``weight`` of linear maps (``nn.Linear``, stacked linears, the GRU router's ``weight_ih``/``weight_hh``) and
    of embeddings (``wte``, which is also the tied LM head, and ``wpe``, as nanoGPT/GPT-2 do). Not decayed:
    LayerNorm gains and shifts, and every bias."""
    from mom.modules import StackedLinear

    decay, no_decay = [], []
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            is_matrix = (isinstance(module, (nn.Linear, StackedLinear, nn.Embedding)) and pname == "weight") or (
                isinstance(module, nn.RNNCellBase) and pname.startswith("weight_"))
            (decay if is_matrix else no_decay).append(full)
    return decay, no_decay


def fused_adamw(device: torch.device | str) -> bool:
    """Whether to ask for PyTorch's fused AdamW: one kernel over all parameters instead of a chain of foreach ops.
    On the 2-core CPU box it updates 82M parameters in 51 ms against 234 ms (docs/log.md); CUDA has it too."""
    return torch.device(device).type in ("cpu", "cuda")


def make_optimizer(model: nn.Module, tcfg: TrainConfig, device: torch.device) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW with the two decay groups; returns the optimiser and the parameter names in its order."""
    params = dict(model.named_parameters())
    decay, no_decay = decay_split(model)
    assert sorted(decay + no_decay) == sorted(params), "every parameter is in exactly one decay group"
    groups = [{"params": [params[n] for n in decay], "weight_decay": tcfg.weight_decay},
              {"params": [params[n] for n in no_decay], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), eps=tcfg.eps,
                            fused=fused_adamw(device))
    return opt, decay + no_decay


# ================================================================================================ data
def resolve_data(spec: str | None, dist: Dist, *, progress: bool = True) -> Path:
    """The dataset directory; without ``--data`` the built-in corpus, prepared into ``data/builtin`` once."""
    if spec is not None:
        path = Path(spec)
        if not path.exists():
            raise DataError(f"{path}: no such data directory (prepare one with: mom prepare --out {path})")
        if not path.is_dir():
            raise DataError(f"{path}: --data expects a directory holding train.bin and val.bin (nanoGPT layout)")
        return path
    path = DEFAULT_DATA_DIR
    if not (path / "train.bin").is_file():
        if dist.is_main:
            from mom.data import prepare

            print(f"preparing the built-in corpus into {path} (once)", flush=True)
            prepare(["builtin"], path, progress=progress)
        dist.barrier()
    return path


class Batches:
    """Training micro-batches as a pure function of ``(seed, step, micro-step, rank)``; validation windows.

    Step s draws the offsets of its ``rows_per_step`` sequences (over all processes and accumulation steps)
    from ``np.random.default_rng([seed, s])``. Micro-step a of rank r takes rows ``(a·world + r)·B …`` of them,
    so one process accumulating W micro-batches sees exactly the rows W processes see in one micro-step each,
    and resuming needs nothing but the step number."""

    def __init__(self, train: np.ndarray, val: np.ndarray, seq_len: int, batch_size: int, accum: int, seed: int,
                 dist: Dist, device: torch.device):
        self.train, self.val, self.T, self.B, self.accum = train, val, seq_len, batch_size, accum
        self.seed, self.dist, self.device = seed, dist, device
        self.rows_per_step = batch_size * accum * dist.world
        for split, arr in (("train", train), ("val", val)):
            if len(arr) < seq_len + 1:
                raise DataError(f"the {split} split holds {len(arr):,} tokens, fewer than seq_len + 1 = {seq_len + 1}")
        self._step, self._offsets = -1, np.empty(0, dtype=np.int64)

    def offsets(self, step: int) -> np.ndarray:
        if step != self._step:
            rng = np.random.default_rng([self.seed, step])
            self._offsets = rng.integers(0, len(self.train) - self.T, size=self.rows_per_step, dtype=np.int64)
            self._step = step
        return self._offsets

    def micro_batch(self, step: int, micro: int) -> tuple[Tensor, Tensor]:
        first = (micro * self.dist.world + self.dist.rank) * self.B
        rows = self.offsets(step)[first:first + self.B]
        return self._gather(self.train, rows)

    def _gather(self, tokens: np.ndarray, starts: np.ndarray) -> tuple[Tensor, Tensor]:
        win_BT1 = np.stack([tokens[o:o + self.T + 1] for o in starts.tolist()]).astype(np.int64)
        win = torch.from_numpy(win_BT1)
        if self.device.type == "cuda":
            win = win.pin_memory().to(self.device, non_blocking=True)
        return win[:, :-1], win[:, 1:]

    def val_windows(self, max_tokens: int) -> np.ndarray:
        """Start offsets of consecutive validation windows (T inputs + 1 target each) from the split's start."""
        starts = np.arange(0, len(self.val) - self.T, self.T, dtype=np.int64)
        if max_tokens:
            starts = starts[:max(1, max_tokens // self.T)]
        return starts


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, max_tokens: int, amp: torch.dtype | None,
             lockstep: bool = False) -> float:
    """Mean LM cross-entropy over the validation windows (split over processes; aux losses excluded).

    ``lockstep`` (FSDP: every forward all-gathers, so all processes must run the same number): a process whose
    share ran out runs a zero-weight forward on window 0 while the others finish."""
    was_training = model.training
    model.eval()
    starts = batches.val_windows(max_tokens)
    mine = starts[batches.dist.rank::batches.dist.world]
    most = len(starts[0::batches.dist.world]) if lockstep else len(mine)  # rank 0 holds the most windows
    acc_dtype = torch.float32 if batches.device.type == "mps" else torch.float64  # MPS has no float64
    total = torch.zeros(2, dtype=acc_dtype, device=batches.device)  # (sum of window losses, windows)
    for i in range(0, most, batches.B):
        rows = mine[i:i + batches.B]
        weight = 1.0 if len(rows) else 0.0
        x_BT, y_BT = batches._gather(batches.val, rows if len(rows) else starts[:1])
        with _autocast(batches.device, amp):
            loss = model(x_BT, y_BT).loss
        total[0] += loss.to(acc_dtype) * x_BT.shape[0] * weight
        total[1] += x_BT.shape[0] * weight
    batches.dist.sum_(total)
    if lockstep:  # FSDP2 keeps the root's parameters gathered after a forward with no backward: shard them again
        model.reshard()
    model.train(was_training)
    return (total[0] / total[1]).item()


# ================================================================================================ routing stats
def routing_stats(routes) -> list[dict[str, Any]]:
    """Per (chunk, step, half) with a learned router: how the picks spread over the choices.

    ``usage``: fraction of all picks going to module 0 … N-1 and, last, SKIP (sums to 1); ``entropy``: of that
    distribution, in nats (ln(N+1) when uniform); ``skip``: the SKIP share of picks (= usage[-1]); ``skip_all``:
    fraction of tokens whose every pick is SKIP (they bypass the half entirely); ``modules_per_token``: mean
    real modules a token runs (≤ K; what the compute actually is); ``token_share``: fraction of tokens that picked
    each choice (a token's K picks are distinct); ``choices``: real modules the step allows; ``picks``: K."""
    out = []
    for r in routes or []:
        if r.probs_BTN is None:  # static route: nothing was decided
            continue
        n = r.n_modules
        idx_PK = r.idx_BTK.reshape(-1, r.idx_BTK.shape[-1])
        counts_N = torch.bincount(idx_PK.flatten(), minlength=n + 1).double()
        usage_N = counts_N / counts_N.sum()
        entropy = -(usage_N * usage_N.clamp_min(1e-30).log()).sum()
        skip_PK = idx_PK == n
        allowed_N = (r.probs_BTN.reshape(-1, n + 1) > 0).any(0)  # disallowed choices get probability exactly 0
        out.append({
            "chunk": r.chunk, "step": r.step, "half": r.half,
            "usage": [round(u, 5) for u in usage_N.tolist()],
            "token_share": [round(u, 5) for u in (counts_N / idx_PK.shape[0]).tolist()],
            "choices": int(allowed_N[:n].sum()), "picks": idx_PK.shape[-1],
            "entropy": round(entropy.item(), 5),
            "skip": round(usage_N[n].item(), 5),
            "skip_all": round(skip_PK.all(-1).double().mean().item(), 5),
            "modules_per_token": round((~skip_PK).sum(-1).double().mean().item(), 5),
        })
    return out


class CollapseWatch:
    """Router collapse: one module picked by more than ``share`` of the tokens at ``patience`` metrics rows in a
    row. Only steps that allow more real modules than picks count (a layer-skip step that may pick only its own
    module, or K = N, has nothing to collapse). Each episode is reported once."""

    def __init__(self, share: float, patience: int) -> None:
        self.share, self.patience = share, patience
        self.streak: dict[tuple, int] = {}

    def update(self, stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
        warnings, seen = [], set()
        for row in stats:
            if row["choices"] <= row["picks"]:
                continue
            shares = row["token_share"][:-1]  # real modules (the last entry is SKIP)
            m = max(range(len(shares)), key=shares.__getitem__)
            if shares[m] <= self.share:
                continue
            key = (row["chunk"], row["step"], row["half"], m)
            seen.add(key)
            self.streak[key] = self.streak.get(key, 0) + 1
            if self.streak[key] == self.patience:
                warnings.append({"chunk": row["chunk"], "routing_step": row["step"], "half": row["half"],
                                 "module": m, "token_share": shares[m], "rows": self.patience})
        self.streak = {k: v for k, v in self.streak.items() if k in seen}
        return warnings

    def state(self) -> list[list]:
        """For checkpoints: a resumed run reports exactly what an uninterrupted one would."""
        return [[*k, v] for k, v in sorted(self.streak.items())]

    def load(self, state: list[list]) -> None:
        self.streak = {tuple(e[:-1]): int(e[-1]) for e in state}


def nonfinite_gradients(model: nn.Module) -> list[str]:
    """Parameters whose gradient holds NaN or Inf; for a module pool's stacked weights, which modules."""
    out = []
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        bad = ~torch.isfinite(_full(p.grad))  # (FSDP: every process gathers; only on a bad step)
        if not bad.any():
            continue
        if ".pool." in name and p.dim() >= 2 and p.shape[0] > 1:  # leading axis = module index
            mods = bad.flatten(1).any(1).nonzero().flatten().tolist()
            out.append(f"{name} (module{'s' if len(mods) > 1 else ''} {', '.join(map(str, mods))})")
        else:
            out.append(name)
    return out


def describe_fault(loss: float, grad_norm: float, where: list[str], limit: int = 4) -> str:
    parts = [f"loss {loss}" if not math.isfinite(loss) else None,
             f"gradient norm {grad_norm}" if not math.isfinite(grad_norm) else None]
    if where:
        shown = ", ".join(where[:limit]) + (f" and {len(where) - limit} more" if len(where) > limit else "")
        parts.append(f"non-finite gradients in {shown}")
    return "; ".join(p for p in parts if p)


# ================================================================================================ checkpoints
def _save_tensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file, written atomically and fsynced."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, writer=lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _complete(ckpt: Path) -> bool:
    return (ckpt / MANIFEST).is_file() or (ckpt / "state.json").is_file()  # (older checkpoints: no manifest)


def _newest_complete(run_dir: Path) -> Path | None:
    steps = sorted((c for c in (run_dir / CHECKPOINTS).glob("step-*") if c.is_dir() and _complete(c)),
                   key=lambda c: c.name)
    return steps[-1] if steps else None


def read_latest(run_dir: Path) -> tuple[int, Path] | None:
    """(step, directory) of the run's latest complete checkpoint, or None.

    ``latest.json`` names it; if that directory was removed (a damaged checkpoint deleted by hand), or the run was
    killed between renaming its first checkpoint into place and writing ``latest.json``, the newest complete
    ``step-*`` directory is the latest."""
    p = run_dir / LATEST
    if not p.is_file():
        newest = _newest_complete(run_dir)
        return (int(newest.name.removeprefix("step-")), newest) if newest else None
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
        step, ckpt = int(d["step"]), run_dir / d["path"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{p}: unreadable checkpoint pointer ({e})") from None
    if ckpt.is_dir() and _complete(ckpt):
        return step, ckpt
    if not ckpt.exists():
        newest = _newest_complete(run_dir)
        if newest:
            return int(newest.name.removeprefix("step-")), newest
    raise CheckpointError(f"{p} points at {ckpt}, which is not a complete checkpoint")


def _full(t: Tensor) -> Tensor:
    """The whole tensor: an FSDP2 shard (DTensor) is all-gathered — every process must call this — others as is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


@dataclass
class FullState:
    """Unsharded weights and AdamW moments, as a checkpoint stores them (the same for 1 process, DDP or FSDP)."""

    model: dict[str, Tensor]
    moments: dict[str, Tensor]  # "exp_avg/NAME", "exp_avg_sq/NAME"
    optimizer_step: float


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights as whole tensors; under FSDP every process must call it (shards are all-gathered)."""
    return {k: _full(v) for k, v in model.state_dict().items()}


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, names: list[str]) -> FullState:
    """Collect the training state to write; under FSDP every process must call it (shards are all-gathered)."""
    if hasattr(model, "reshard"):  # FSDP2: the optimiser's state is keyed by the sharded parameters
        model.reshard()
    params = dict(model.named_parameters())
    moments, steps = {}, set()
    for n in names:
        st = optimizer.state.get(params[n])
        if st:
            moments[f"exp_avg/{n}"] = _full(st["exp_avg"])
            moments[f"exp_avg_sq/{n}"] = _full(st["exp_avg_sq"])
            steps.add(float(st["step"]))
    if len(steps) > 1:
        raise RuntimeError(f"AdamW step counts differ across parameters: {sorted(steps)}")
    return FullState(full_model_state(model), moments, steps.pop() if steps else 0.0)


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, full: FullState, tcfg: TrainConfig,
                    state: dict[str, Any]) -> Path:
    """Write checkpoint ``step`` atomically and make it the latest; raise CheckpointError (previous one intact)."""
    root = run_dir / CHECKPOINTS
    name = f"step-{step:08d}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    previous = read_latest(run_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        # model.safetensors + config.json, each fsynced
        model.save_pretrained(tmp, manifest=False, state_dict=full.model)
        tcfg.save(tmp / "train_config.json")
        tensors: dict[str, Tensor] = {"rng/cpu": torch.get_rng_state(), **full.moments}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["rng/cuda"] = torch.cuda.get_rng_state()
        _save_tensors(tensors, tmp / "train_state.safetensors", {"format": TRAIN_STATE_FORMAT})
        write_json_atomic(tmp / "state.json", {"format_version": STATE_FORMAT_VERSION, **state, "step": step,
                                               "optimizer_step": full.optimizer_step})
        write_manifest(tmp, list(CHECKPOINT_FILES))  # last: a directory with a manifest is complete
        fsync_dir(tmp)
        if final.exists():  # left by a crash between this rename and the pointer update: never the latest
            _remove_checkpoint(final)
        os.rename(tmp, final)
        fsync_dir(root)
        write_json_atomic(run_dir / LATEST, {"step": step, "path": f"{CHECKPOINTS}/{name}"})
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = (f"the previous checkpoint (step {previous[0]}) is intact" if previous
                else "no earlier checkpoint exists")
        raise CheckpointError(f"{run_dir}: cannot write the step-{step} checkpoint "
                              f"({e.strerror or e}); {kept}") from None
    _prune(root, keep=tcfg.keep_checkpoints, latest=final)
    return final


def _remove_checkpoint(ckpt: Path) -> None:
    """Delete a checkpoint directory so that no kill can leave a half-deleted ``step-*`` behind: rename it out of
    the way first (atomic), then delete. (Found by the kill harness: a SIGKILL inside ``rmtree`` of a pruned
    checkpoint left a ``step-*`` directory without its manifest.)"""
    trash = ckpt.parent / f".trash-{ckpt.name}-{os.getpid()}"
    os.rename(ckpt, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _prune(root: Path, keep: int, latest: Path) -> None:
    """Delete all but the newest ``keep`` step checkpoints (never the latest) and what killed runs left behind
    (temporary directories of unfinished writes, half-deleted ones)."""
    steps = sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: p.name)
    for p in steps[:-keep] if keep else steps:
        if p != latest:
            _remove_checkpoint(p)
    for p in [*root.glob(".tmp-*"), *root.glob(".trash-*")]:
        if not p.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, names: list[str],
                    device: torch.device) -> dict[str, Any]:
    """Restore weights, AdamW moments/step and RNG from ``ckpt``; returns its state.json.

    Every file is checked against the manifest first, so a damaged checkpoint is named before anything loads.
    With ``optimizer=None`` only the weights are loaded (FSDP: into the model before it is sharded; the moments
    follow with :func:`load_optimizer_state` once the optimiser exists)."""
    from mom.model import MODEL_FORMAT, load_safetensors

    try:
        verify_manifest(ckpt)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; to resume from the checkpoint before it, delete {ckpt}") from None
    try:
        state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{ckpt / 'state.json'}: unreadable ({e})") from None
    if not isinstance(state, dict) or state.get("format_version") != STATE_FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else None
        raise CheckpointError(f"{ckpt / 'state.json'}: training-state format_version {found!r} is not supported "
                              f"(this mom reads {STATE_FORMAT_VERSION})")
    model.load_state_dict(load_safetensors(ckpt / "model.safetensors", device=device, expect_format=MODEL_FORMAT),
                          source=ckpt)
    if optimizer is not None:
        load_optimizer_state(ckpt, model, optimizer, names, state, device)
    return state


def load_optimizer_state(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer, names: list[str],
                         state: dict[str, Any], device: torch.device) -> None:
    """AdamW moments and step, and the RNG, from ``ckpt`` (verified by :func:`load_checkpoint` already)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    from mom.model import load_safetensors

    tensors = load_safetensors(ckpt / "train_state.safetensors", expect_format=TRAIN_STATE_FORMAT)
    where = ckpt / "train_state.safetensors"
    # Rebuild AdamW's state_dict in its own format (params numbered in group order) and let it place tensors.
    sd = optimizer.state_dict()
    params = dict(model.named_parameters())

    def placed(t: Tensor, p: Tensor) -> Tensor:  # a moment goes where its parameter is, sharded the same way
        return distribute_tensor(t.to(device), p.device_mesh, p.placements) if isinstance(p, DTensor) else t

    opt_state = {}
    for i, n in enumerate(names):
        if f"exp_avg/{n}" in tensors:
            m, v = tensors[f"exp_avg/{n}"], tensors.get(f"exp_avg_sq/{n}")
            if v is None or m.shape != params[n].shape or v.shape != params[n].shape:
                raise CheckpointError(f"{where}: optimiser state for {n} is missing or has the wrong shape "
                                      f"({tuple(m.shape)}, parameter {tuple(params[n].shape)})")
            opt_state[i] = {"step": torch.tensor(float(state["optimizer_step"]), dtype=torch.float32),
                            "exp_avg": placed(m, params[n]), "exp_avg_sq": placed(v, params[n])}
    unknown = {k.split("/", 1)[1] for k in tensors if k.startswith("exp_avg/")} - set(names)
    if unknown:
        raise CheckpointError(f"{where}: optimiser state for unknown parameter(s), e.g. {sorted(unknown)[0]}")
    if "rng/cpu" not in tensors:
        raise CheckpointError(f"{where}: no random-number-generator state (rng/cpu)")
    sd["state"] = opt_state
    optimizer.load_state_dict(sd)
    torch.set_rng_state(tensors["rng/cpu"])
    if "rng/cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)


# ================================================================================================ init-from
def find_model_dir(spec: str) -> Path:
    """The directory holding a model: a finished run or model directory, else a run's latest checkpoint."""
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(f"{path}: --init-from expects a run or model directory (or hf:DIR), not found")
    if (path / "model.safetensors").is_file():
        return path
    latest = read_latest(path)
    if latest is not None:
        return latest[1]
    raise CheckpointError(f"{path}: no model.safetensors and no checkpoint (is it a mom run or model directory?)")


def init_from(model: nn.Module, spec: str) -> str:
    """Copy weights into ``model`` from ``spec`` (see module docstring); returns a one-line description."""
    from mom.gpt2 import check_compatible, decompose, read_hf, vanilla_layers_of
    from mom.model import MoM

    cfg = model.config
    is_hf = spec.startswith("hf:")
    if not (spec[3:] if is_hf else spec).strip():  # Path("") would quietly mean the current directory
        raise ConfigError(f"--init-from {spec!r}: empty; give a run or model directory, or hf:DIR")
    path = Path(spec[3:] if is_hf else spec)
    if not is_hf and (path / "config.json").is_file():
        try:
            is_hf = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type") == "gpt2"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            pass
    if is_hf:
        src_cfg, layers, emb = read_hf(path)
        check_compatible(src_cfg, cfg, str(path))
        decompose(layers, emb, model)
        how = "loaded" if cfg.is_vanilla else "decomposed"
        return f"{how} HF GPT-2 {path} ({len(layers)} layers)"
    src = MoM.from_pretrained(find_model_dir(spec))
    src_shapes = {k: tuple(v.shape) for k, v in src.state_dict().items()}
    own_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if src_shapes == own_shapes:
        model.load_state_dict(src.state_dict(), source=spec)
        return f"loaded all weights from {spec} (same layout)"
    if not src.config.is_vanilla:
        raise CheckpointError(f"{spec}: its layout ('{src.config.name}') differs from '{cfg.name}' and it is not a "
                              "vanilla model; only a vanilla (chunks=0) model can be decomposed into another layout")
    check_compatible(src.config, cfg, spec)
    layers, emb = vanilla_layers_of(src)
    decompose(layers, emb, model)
    return f"decomposed the {len(layers)}-layer vanilla model {spec} per the layer map (routers fresh)"


# ================================================================================================ run directory
def _config_diff(a: dict, b: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    return [f"{k}: {a.get(k)!r} in the run, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)]


def _check_fresh_out(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise MomError(f"{out}: exists and is not a directory")
    ours = [n for n in RUN_FILES if (out / n).exists()]
    if ours and not force:
        latest = read_latest(out)
        at = f" (latest checkpoint: step {latest[0]})" if latest else ""
        raise MomError(f"{out} already holds a training run{at}; pass --resume to continue it or --force to "
                       "start over")
    if not ours and any(out.iterdir()) and not force:
        raise MomError(f"{out} exists and is not empty; pass --force to train into it anyway")


def _clear_run(out: Path) -> None:
    for n in RUN_FILES:
        p = out / n
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics rows up to ``step`` (rows a killed run logged after its last checkpoint are redone)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # a torn last line from a kill: drop it and everything after
    atomic_write(path, "".join(line + "\n" for line in keep))


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (a torn last line is ignored)."""
    path = Path(run_dir) / METRICS
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


# ================================================================================================ the loop
@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val_loss: float | None
    tokens: int
    seconds: float
    finished: bool


def train(mcfg: MoMConfig | None, tcfg: TrainConfig | None, *, out: str | os.PathLike, data: str | None = None,
          init: str | None = None, resume: bool = False, force: bool = False, progress: bool = True,
          command: list[str] | None = None, stop_at: int | None = None) -> TrainResult:
    """Train a model; see the module docstring. ``mcfg``/``tcfg`` may be None with ``resume`` (taken from the run).

    ``stop_at``: return right after step ``stop_at`` and its checkpoint, as if the process were killed there (for
    tests and for splitting a long run into sessions; the run continues with ``resume=True``)."""
    from mom.data import load_tokens
    from mom.model import MoM

    out = Path(out)
    if resume and force:
        raise MomError("--resume and --force exclude each other")
    # ---- configs (and what a resumed run must match) --------------------------------------------------
    resume_from: tuple[int, Path] | None = None
    if resume:
        if not out.is_dir():
            raise CheckpointError(f"{out}: no such run directory to resume")
        resume_from = read_latest(out)
        if resume_from is None:
            raise CheckpointError(f"{out}: no checkpoint to resume from (start the run without --resume)")
        ck = resume_from[1]
        run_mcfg, run_tcfg = MoMConfig.load(ck / "config.json"), TrainConfig.load(ck / "train_config.json")
        if mcfg is not None:
            diff = _config_diff(run_mcfg.to_dict(), mcfg.to_dict(), ignore=("name",))
            if diff:
                raise ConfigError(f"--resume: {out} was trained with a different model config ({'; '.join(diff)}); "
                                  "resume with the run's config or start a new run")
        if tcfg is not None:
            diff = _config_diff(run_tcfg.to_dict(), tcfg.to_dict(), ignore=TrainConfig.RESUMABLE_CHANGES)
            if diff:
                raise ConfigError(f"--resume: {out} was trained with a different train config ({'; '.join(diff)}); "
                                  "resume with the same settings or start a new run (e.g. --init-from it)")
        mcfg = run_mcfg if mcfg is None else mcfg
        tcfg = run_tcfg if tcfg is None else run_tcfg.replace(**{k: getattr(tcfg, k)
                                                                  for k in TrainConfig.RESUMABLE_CHANGES})
        run_info = json.loads((out / "run.json").read_text(encoding="utf-8")) if (out / "run.json").is_file() else {}
        if init is not None and run_info.get("init_from") not in (None, init):
            raise ConfigError(f"--resume: {out} was initialised from {run_info.get('init_from')}, not {init}")
        init = run_info.get("init_from")
        if data is None and run_info.get("data"):
            data = run_info["data"]
    else:
        if mcfg is None or tcfg is None:
            raise ConfigError("a new run needs a model config (--config) and a train config")
        _check_fresh_out(out, force)
        run_info = {}

    dist = init_distributed(tcfg.device)
    device = resolve_device(tcfg.device, dist)
    if device.type == "cpu":
        keep_freed_memory()
    amp = autocast_dtype(tcfg, device)
    T = tcfg.seq_len or mcfg.n_ctx
    if T > mcfg.n_ctx:
        raise ConfigError(f"seq_len ({T}) exceeds the model's context n_ctx ({mcfg.n_ctx})")
    micro_tokens = tcfg.batch_size * T * dist.world
    tokens_per_step = tcfg.tokens_per_step or micro_tokens
    if tokens_per_step % micro_tokens:
        raise ConfigError(f"tokens_per_step ({tokens_per_step}) must be a multiple of batch_size·seq_len·processes "
                          f"= {tcfg.batch_size}·{T}·{dist.world} = {micro_tokens}")
    accum = tokens_per_step // micro_tokens

    # ---- data ------------------------------------------------------------------------------------------
    data_dir = resolve_data(data, dist, progress=progress)
    train_tok = load_tokens(data_dir, "train", vocab_size=mcfg.vocab_size)
    val_tok = load_tokens(data_dir, "val", vocab_size=mcfg.vocab_size)
    batches = Batches(train_tok, val_tok, T, tcfg.batch_size, accum, tcfg.seed, dist, device)
    if resume_from is not None:
        for split, arr in (("train", train_tok), ("val", val_tok)):
            had = run_info.get(f"{split}_tokens")
            if had is not None and had != len(arr):
                raise DataError(f"--resume: {data_dir} is not the run's data ({split} split: {len(arr):,} tokens, "
                                f"the run had {had:,})")

    # ---- model, optimiser, init / resume ---------------------------------------------------------------
    torch.manual_seed(tcfg.seed)
    model = MoM(mcfg)
    init_note = None
    if init is not None and resume_from is None:
        init_note = init_from(model, init)
    model.to(device)
    fsdp = dist.enabled and tcfg.parallel == "fsdp"
    start, tokens_seen, elapsed_before = 0, 0, 0.0
    state: dict[str, Any] = {}  # the checkpoint's state.json when resuming
    if resume_from is not None:  # the weights now, into the whole model; the optimiser state once it exists
        state = load_checkpoint(resume_from[1], model, None, [], device)
    if fsdp:
        shard_model(model)
    optimizer, names = make_optimizer(model, tcfg, device)
    if resume_from is not None:
        load_optimizer_state(resume_from[1], model, optimizer, names, state, device)
        start, tokens_seen, elapsed_before = int(state["step"]), int(state["tokens"]), float(state["elapsed_s"])
        if int(state.get("tokens_per_step", tokens_per_step)) != tokens_per_step:
            raise ConfigError(f"--resume: the run used {state['tokens_per_step']} tokens per step, this launch "
                              f"would use {tokens_per_step} ({dist.world} process(es)); set --train.tokens_per_step")

    # ---- the run directory: only now, when every input has been checked --------------------------------
    say = _printer(dist)
    dist.barrier()  # every process has passed every check before anything is written
    if dist.is_main:
        if resume_from is None:
            if force and out.exists():
                _clear_run(out)
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # a file where a parent directory should be, no permission
                raise MomError(f"{out}: cannot create the run directory ({e.strerror or e})") from None
            mcfg.save(out / "config.json")
            tcfg.save(out / "train_config.json")
            run_info = {"command": command, "init_from": init, "init": init_note, "data": str(data_dir),
                        "train_tokens": len(train_tok), "val_tokens": len(val_tok),
                        "world_size": dist.world, "device": str(device), "autocast": str(amp) if amp else None,
                        "tokens_per_step": tokens_per_step, "accum_steps": accum, "seq_len": T,
                        "params": model.num_params(), "torch": torch.__version__, "resumed_at": []}
            (out / METRICS).write_text("", encoding="utf-8")
        else:
            _truncate_metrics(out / METRICS, start)
            run_info.setdefault("resumed_at", []).append(start)
        write_json_atomic(out / "run.json", run_info)
    dist.barrier()

    say(f"{'resuming' if resume_from else 'training'} {mcfg.name} ({model.num_params() / 1e6:.2f}M params, depth "
        f"{mcfg.depth}) on {device}{' with ' + str(amp).removeprefix('torch.') + ' autocast' if amp else ''}"
        f"{f' × {dist.world} processes' if dist.enabled else ''}: {tcfg.max_steps} steps of {tokens_per_step:,} "
        f"tokens ({tcfg.batch_size}×{T}{f'×{accum} accumulated' if accum > 1 else ''}) → {out}")
    if init_note:
        say(f"init: {init_note}")
    if resume_from:
        say(f"resumed from {resume_from[1]} (step {start})")

    fwd: nn.Module = model
    if tcfg.compile:
        fwd = torch.compile(model)
    if dist.enabled and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # A pool's stacked weights take part in every forward as whole tensors unless every token of a micro-batch
        # picks SKIP everywhere: only SKIP can leave parameters unused, and then DDP must be told to expect it.
        fwd = DDP(fwd, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=not mcfg.is_vanilla and mcfg.skip)

    metrics = open(out / METRICS, "a", encoding="utf-8") if dist.is_main else None

    def log(row: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()

    def state_dict_for_ckpt(step: int) -> dict[str, Any]:
        return {"tokens": tokens_seen, "elapsed_s": elapsed_before + (time.perf_counter() - t_start),
                "tokens_per_step": tokens_per_step, "world_size": dist.world, "val_loss": last_val,
                "collapse_streak": collapse.state()}

    def checkpoint(step: int) -> None:
        full = full_state(model, optimizer, names)  # on every process: FSDP shards are all-gathered
        if dist.is_main:
            save_checkpoint(out, step, model, full, tcfg, state_dict_for_ckpt(step))
        dist.barrier()

    def run_eval(step: int) -> float:
        t0 = time.perf_counter()
        # Always the uncompiled model: a compiled one would compile a second graph for no-grad evaluation (and a
        # third for a shorter last batch), which costs far more than one pass over eval_tokens saves.
        loss = evaluate(model, batches, tcfg.eval_tokens, amp, lockstep=fsdp)
        log({"type": "val", "step": step, "tokens": tokens_seen, "val_loss": loss, "val_ppl": math.exp(min(loss, 50)),
             "seconds": round(time.perf_counter() - t0, 3)})
        say(f"step {step}: val loss {loss:.4f} (ppl {math.exp(min(loss, 50)):.1f})", bar)
        return loss

    speed = Speed(mcfg, T, device, amp, dist.world)
    t_start = time.perf_counter()
    last_val: float | None = None
    bar = _progress(progress and dist.is_main, tcfg.max_steps, start)
    done = start  # optimiser steps completed
    try:
        if start >= tcfg.max_steps:
            say(f"{out} already finished ({start} of {tcfg.max_steps} steps)", bar)
        elif resume_from is None:
            last_val = run_eval(0)
        model.train()
        window = _Window()
        collapse = CollapseWatch(tcfg.collapse_share, tcfg.collapse_patience)
        collapse.load(state.get("collapse_streak", []))
        max_norm = tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf")
        bad_in_a_row = 0
        last_ckpt = start
        for step in range(start, tcfg.max_steps):
            want_routes = ((step + 1) % tcfg.log_interval == 0 or step + 1 == tcfg.max_steps) and not mcfg.is_vanilla
            lr = lr_at(tcfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            routes = None
            for micro in range(accum):
                x_BT, y_BT = batches.micro_batch(step, micro)
                sync = micro == accum - 1 or not dist.enabled
                with (contextlib.nullcontext() if sync else _no_grad_sync(fwd, fsdp)):
                    with _autocast(device, amp):
                        # A compiled forward is specialised on return_routes, so it always returns them (tensors
                        # the step computes anyway): one graph instead of one for logging steps and one for others.
                        res = fwd(x_BT, y_BT, return_routes=tcfg.compile or (want_routes and micro == 0))
                    ((res.loss + res.aux_loss) / accum).backward()
                window.add_micro(res, accum)
                if want_routes and micro == 0:
                    routes = res.routes
            # The norm first, clipping after the check: clipping by a NaN norm would smear NaN over every gradient
            # and hide which parameters went bad. (clip_grad_norm_ is exactly these two calls.)
            params = [p for p in model.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            norm_t = _full(grad_norm)  # (FSDP: a DTensor; the check and the log want the number)
            finite_t = torch.isfinite(norm_t) & torch.isfinite(window.pending_loss())
            if dist.enabled:  # every process must take the same decision (losses differ across processes)
                finite_t = finite_t.to(torch.int32)
                torch.distributed.all_reduce(finite_t, op=torch.distributed.ReduceOp.MIN)
            # One host sync per step (the training loop, not the routing path): a poisoned update is never applied.
            if bool(finite_t):
                torch.nn.utils.clip_grads_with_norm_(params, max_norm, grad_norm)
                optimizer.step()
                window.add_step(norm_t)
                bad_in_a_row = 0
            else:
                bad_in_a_row += 1
                fault = describe_fault(float(window.pending_loss()), float(norm_t), nonfinite_gradients(model))
                window.drop_step()
                log({"type": "fault", "step": step + 1, "skipped": True, "in_a_row": bad_in_a_row, "what": fault})
                say(f"step {step + 1}: update skipped ({fault})", bar)
                if bad_in_a_row >= tcfg.max_bad_steps:
                    raise MomError(f"training stopped at step {step + 1}: {bad_in_a_row} step(s) in a row had a "
                                   f"non-finite loss or gradients ({fault}); none of them was applied and "
                                   f"{_kept(out, dist)} — lower --train.lr or check the data, then --resume")
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            tokens_seen += tokens_per_step
            if (done % tcfg.log_interval == 0 or done == tcfg.max_steps) and window.steps:
                row = window.row(done, lr, tokens_seen, dist, tokens_per_step)
                row.update(speed.of(row["tokens_per_s"]))
                if routes is not None:
                    row["routing"] = routing_stats(routes)
                    for w in collapse.update(row["routing"]):
                        log({"type": "warning", "kind": "router_collapse", "step": done, **w})
                        say(f"warning: router collapse at step {done}: chunk {w['chunk']} step {w['routing_step']} "
                            f"{w['half']}: module {w['module']} took {w['token_share']:.0%} of the tokens "
                            f"at {w['rows']} metrics rows in a row", bar)
                log(row)
                if bar is not None:
                    mfu = f", MFU {row['mfu']:.1%}" if "mfu" in row else ""
                    bar.set_postfix_str(f"loss {row['loss']:.3f}, {row['tokens_per_s']:,.0f} tok/s{mfu}", refresh=False)
            if bar is not None:
                bar.update(1)
            if (tcfg.eval_interval and done % tcfg.eval_interval == 0) or done == tcfg.max_steps:
                t_pause = time.perf_counter()
                last_val = run_eval(done)
                model.train()
                window.t0 += time.perf_counter() - t_pause  # evaluation time is not training throughput
            stopping = stop_at is not None and done >= stop_at
            if (tcfg.ckpt_interval and done % tcfg.ckpt_interval == 0) or done == tcfg.max_steps or stopping:
                if done != last_ckpt:
                    t_pause = time.perf_counter()
                    checkpoint(done)
                    last_ckpt = done
                    window.t0 += time.perf_counter() - t_pause
            if stopping:
                break
    except KeyboardInterrupt:
        latest = read_latest(out) if dist.is_main else None
        say(f"interrupted after step {done}; " + (f"continue from step {latest[0]} with --resume" if latest else
                                                  "no checkpoint yet: start over with --force"), bar)
        raise
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and not _is_host_oom(e):
            raise
        raise MomError(f"out of memory at step {done + 1} on {device} (micro-batch {tcfg.batch_size}×{T}); "
                       f"{_kept(out, dist)} — continue with --resume and a smaller --train.batch_size plus "
                       f"--train.tokens_per_step {tokens_per_step} (gradient accumulation keeps the step the same)"
                       ) from None
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise MomError(f"{out}: disk full at step {done} ({e.strerror}); {_kept(out, dist)} — free some space "
                       "and continue with --resume") from None
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()

    finished = done >= tcfg.max_steps
    elapsed = elapsed_before + time.perf_counter() - t_start
    final_sd = full_model_state(model) if finished and fsdp else None
    if finished and dist.is_main:
        if not (out / "model.safetensors").is_file() or start < tcfg.max_steps:
            try:
                model.save_pretrained(out, state_dict=final_sd)
            except OSError as e:
                raise CheckpointError(f"{out}: cannot write the final model ({e.strerror or e}); the last "
                                      f"checkpoint is intact") from None
        _plots(out, say)
        if last_val is None:
            last_val = next((r["val_loss"] for r in reversed(read_metrics(out)) if r["type"] == "val"), None)
        say(f"done: {done} steps, {tokens_seen:,} tokens in {elapsed:.0f}s; final val loss "
            f"{last_val if last_val is None else round(last_val, 4)}; model in {out}")
    dist.barrier()
    return TrainResult(out, done, last_val, tokens_seen, elapsed, finished)


def _is_host_oom(e: BaseException) -> bool:
    """PyTorch's CPU allocator reports exhaustion as a plain RuntimeError."""
    return "can't allocate memory" in str(e) or "DefaultCPUAllocator" in str(e)


def _kept(out: Path, dist: Dist) -> str:
    latest = read_latest(out) if dist.is_main else None
    return f"the last checkpoint (step {latest[0]}) is intact" if latest else "no checkpoint was written yet"


class _Window:
    """Sums over the steps since the last metrics row (device tensors: no host sync until the row is written)."""

    def __init__(self) -> None:
        self.reset()
        self.t0 = time.perf_counter()

    def reset(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.pending: dict[str, Tensor] = {}  # the current step's micro-batches, kept apart until it is applied
        self.steps = 0

    @staticmethod
    def _add(into: dict[str, Tensor], key: str, value: Tensor) -> None:
        into[key] = into[key] + value if key in into else value

    def add_micro(self, out, accum: int) -> None:
        for key in ("loss", "aux_loss", "balance_loss", "z_loss"):
            value = getattr(out, key)
            if value is not None:
                self._add(self.pending, key, value.detach().float() / accum)

    def pending_loss(self) -> Tensor:
        """The current step's training objective (LM loss + auxiliary losses)."""
        loss = self.pending["loss"]
        return loss + self.pending["aux_loss"] if "aux_loss" in self.pending else loss

    def add_step(self, grad_norm: Tensor) -> None:
        for key, value in self.pending.items():
            self._add(self.sums, key, value)
        self._add(self.sums, "grad_norm", grad_norm.detach().float())
        self.pending = {}
        self.steps += 1

    def drop_step(self) -> None:
        """A skipped step: its values stay out of the averages."""
        self.pending = {}

    def row(self, step: int, lr: float, tokens: int, dist: Dist, tokens_per_step: int) -> dict[str, Any]:
        keys = sorted(self.sums)
        vec = torch.stack([self.sums[k] for k in keys]).double()
        # Losses are averaged over processes; grad_norm is already global (DDP averaged the gradients).
        dist.sum_(vec)
        vec /= dist.world * self.steps
        now = time.perf_counter()
        row = {"type": "train", "step": step, "tokens": tokens, "lr": lr,
               **{k: v for k, v in zip(keys, vec.tolist())},
               "tokens_per_s": round(tokens_per_step * self.steps / max(now - self.t0, 1e-9), 1)}
        self.t0 = now
        self.reset()
        return row


class Speed:
    """Achieved training FLOP/s of a metrics row, and its MFU where the device's peak is known.

    FLOPs are :func:`mom.flops.count`'s analytic training FLOPs per token (6 × active matmul parameters +
    attention; every one of the K picks counted as a module run, SKIP picks included, so for a MoM this is an
    upper bound on the work done), as in ``mom bench``. MFU only under bf16 autocast on a CUDA device of
    :data:`mom.flops.PEAK_FLOPS`, whose figures are bf16 tensor-core peaks; against all processes' peaks."""

    def __init__(self, mcfg: MoMConfig, seq_len: int, device: torch.device, amp: torch.dtype | None, world: int):
        from mom.flops import count, peak_flops

        self.flops_per_token = count(mcfg, seq_len).train_flops_per_token
        peak = peak_flops(device) if amp == torch.bfloat16 else None
        self.peak = peak * world if peak else None

    def of(self, tokens_per_s: float) -> dict[str, float]:
        achieved = self.flops_per_token * tokens_per_s
        out = {"tflops": round(achieved / 1e12, 4)}
        if self.peak:
            out["mfu"] = round(achieved / self.peak, 4)
        return out


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
                disable=None if sys.stderr.isatty() else True)


def _printer(dist: Dist):
    def say(msg: str, bar=None) -> None:
        if not dist.is_main:
            return
        if bar is not None and not bar.disable:
            bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)

    return say


def _plots(out: Path, say) -> None:
    try:
        from mom import plots
    except ImportError as e:  # matplotlib is the optional "plots" extra
        say(f"no plots ({e}); install them with: pip install 'mixture-of-modules[plots]'")
        return
    written = plots.plot_run(out)
    if written:
        say("plots: " + ", ".join(str(p) for p in written))


# ================================================================================================ CLI
def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    fields = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
    p.epilog = (f"Override any model field with --model.FIELD VALUE (see mom configs --json) and any train field with "
                f"--train.FIELD VALUE: {fields}. Distributed: torchrun --nproc_per_node=N -m mom.cli train ...")
    p.add_argument("--config", help="model: a preset (mom configs), a JSON config, or a run directory; "
                                    "with --resume defaults to the run's")
    p.add_argument("--train-config", default=None, metavar="PRESET_OR_JSON",
                   help="train settings: default, paper-phase1, paper-phase2, or a JSON file (default: default)")
    p.add_argument("--data", metavar="DIR", help="dataset directory with train.bin/val.bin (mom prepare, or "
                                                 "nanoGPT's); default: the built-in corpus, prepared into data/builtin")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<config name>)")
    p.add_argument("--init-from", metavar="RUN_DIR|hf:DIR",
                   help="start from these weights: a run/model directory (same layout: loaded; vanilla into a MoM "
                        "layout: decomposed, routers fresh) or an HF GPT-2 directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--force", action="store_true", help="start over in an --out that already holds a run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def cli_train(args: argparse.Namespace, overrides: dict[str, dict[str, str]]) -> int:
    """``mom train``: field overrides are ``--model.FIELD VALUE`` and ``--train.FIELD VALUE``."""
    model_over, train_over = overrides.get("model", {}), overrides.get("train", {})
    if args.resume and not args.out:
        raise MomError("--resume needs --out RUN_DIR")
    if not args.config and not args.resume:
        raise MomError("--config is required (a preset such as tiny or tiny-mom, a JSON config, or a run directory)")
    # Resuming with a few --model.X or --train.X and no config: compare just those against the run's own configs.
    run = read_latest(Path(args.out)) if args.resume and Path(args.out).is_dir() else None
    mcfg = resolve_config(args.config) if args.config else None
    if mcfg is None and model_over and run:
        mcfg = MoMConfig.load(run[1] / "config.json")
    if mcfg is not None and model_over:
        mcfg = mcfg.replace(**model_over)
    out = Path(args.out or Path("runs") / mcfg.name)
    tcfg = None
    if args.train_config or not args.resume:
        tcfg = resolve_train_config(args.train_config or "default")
    elif train_over:
        tcfg = TrainConfig.load(run[1] / "train_config.json") if run else TrainConfig()
    if tcfg is not None and train_over:
        tcfg = tcfg.replace(**train_over)
    try:
        train(mcfg, tcfg, out=out, data=args.data, init=args.init_from, resume=args.resume, force=args.force,
              progress=not args.no_progress, command=command_line(args, overrides, out))
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def command_line(args: argparse.Namespace, overrides: dict[str, dict[str, str]], out: Path) -> list[str]:
    """The ``mom train`` command as given (flags in a canonical order), recorded in run.json."""
    parts = ["mom", "train"]
    for flag, value in (("--config", args.config), ("--train-config", args.train_config), ("--data", args.data),
                        ("--out", str(out)), ("--init-from", args.init_from)):
        if value:
            parts += [flag, str(value)]
    parts += [f"--{f}" for f in ("resume", "force") if getattr(args, f)]
    for group in ("model", "train"):
        for k, v in overrides.get(group, {}).items():
            parts += [f"--{group}.{k}", str(v)]
    return parts
