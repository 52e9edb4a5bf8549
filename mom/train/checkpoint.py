"""Checkpoints: the full training state (weights, AdamW moments, RNG) written atomically into ``checkpoints/step-N``
with a manifest, pruned to the newest few, and restored exactly (also under FSDP2)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mom.config.train import TrainConfig
from mom.errors import CheckpointError
from mom.fileio import (
    fsync_dir,
    load_safetensors,
    read_json,
    save_safetensors,
    verify_manifest,
    write_json_atomic,
    write_manifest,
)
from mom.model.model import MODEL_FORMAT
from mom.runs import CHECKPOINTS, LATEST, read_latest
from mom.train.distributed import full_tensor

STATE_FORMAT_VERSION = 1


TRAIN_STATE_FORMAT = "mom-train-state"


# A checkpoint directory's files, all listed in its manifest (written last, just before the directory's rename); with
# a corpus BPE also its tokenizer.json (the tokenizer travels with every checkpoint).
CHECKPOINT_FILES = ("model.safetensors", "config.json", "train_config.json", "train_state.safetensors", "state.json")


@dataclass
class FullState:
    """Unsharded weights and AdamW moments, as a checkpoint stores them (the same for 1 process, DDP or FSDP)."""
    model: dict[str, Tensor]
    moments: dict[str, Tensor]  # "exp_avg/NAME", "exp_avg_sq/NAME"
    optimizer_step: float


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights as whole tensors; under FSDP every process must call it (shards are all-gathered)."""
    return {k: full_tensor(v) for k, v in model.state_dict().items()}


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, names: list[str]) -> FullState:
    """Collect the training state to write; under FSDP every process must call it (shards are all-gathered)."""
    if hasattr(model, "reshard"):  # FSDP2: the optimiser's state is keyed by the sharded parameters
        model.reshard()
    params = dict(model.named_parameters())
    moments, steps = {}, set()
    for n in names:
        st = optimizer.state.get(params[n])
        if st:
            moments[f"exp_avg/{n}"] = full_tensor(st["exp_avg"])
            moments[f"exp_avg_sq/{n}"] = full_tensor(st["exp_avg_sq"])
            steps.add(float(st["step"]))
    if len(steps) > 1:
        raise RuntimeError(f"AdamW step counts differ across parameters: {sorted(steps)}")
    return FullState(full_model_state(model), moments, steps.pop() if steps else 0.0)


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, full: FullState, tcfg: TrainConfig,
                    state: dict[str, Any], tokenizer=None) -> Path:
    """Write checkpoint ``step`` atomically and make it the latest; raise CheckpointError (previous one intact).
    ``tokenizer``: the data's :class:`mom.data.tokenizer.Tokenizer`, written into the checkpoint."""
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
        tok_files = tokenizer.save(tmp) if tokenizer is not None else []
        tcfg.save(tmp / "train_config.json")
        tensors: dict[str, Tensor] = {"rng/cpu": torch.get_rng_state(), **full.moments}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["rng/cuda"] = torch.cuda.get_rng_state()
        save_safetensors(tensors, tmp / "train_state.safetensors", {"format": TRAIN_STATE_FORMAT})
        write_json_atomic(tmp / "state.json", {"format_version": STATE_FORMAT_VERSION, **state, "step": step,
                                               "optimizer_step": full.optimizer_step})
        write_manifest(tmp, [*CHECKPOINT_FILES, *tok_files])  # last: a directory with a manifest is complete
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
    try:
        verify_manifest(ckpt)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; to resume from the checkpoint before it, delete {ckpt}") from None
    state = read_json(ckpt / "state.json", "training state")
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
