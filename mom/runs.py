"""A run directory and the model directories around it: file names, the latest checkpoint, metrics rows, starting or
continuing a run directory, and loading a model from a model directory or a run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from mom.config.model import MoMConfig
from mom.config.train import TrainConfig
from mom.data.tokenizer import TOKENIZER_FILE, Tokenizer, load_tokenizer
from mom.errors import CheckpointError, MomError
from mom.fileio import MANIFEST, atomic_write, read_json, write_json_atomic
from mom.model.model import MoM

CHECKPOINTS = "checkpoints"


LATEST = "latest.json"


METRICS = "metrics.jsonl"


METRICS_CSV = "metrics.csv"  # the train and val rows of metrics.jsonl as a table (--train.csv)


TENSORBOARD = "tensorboard"  # TensorBoard event files (--train.tensorboard)


# Everything a run writes into its directory (``--force`` removes these and nothing else).
RUN_FILES = ("config.json", "train_config.json", "run.json", METRICS, METRICS_CSV, TENSORBOARD, LATEST, CHECKPOINTS,
             "model.safetensors", MANIFEST, TOKENIZER_FILE, "loss.png", "routing.png")


LOCK = ".lock"  # held (flock) by the process training into the run directory; never removed by --force


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
    d = read_json(p, "checkpoint pointer")
    try:
        step, ckpt = int(d["step"]), run_dir / d["path"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{p}: unreadable checkpoint pointer ({e})") from None
    if ckpt.is_dir() and _complete(ckpt):
        return step, ckpt
    if not ckpt.exists():
        newest = _newest_complete(run_dir)
        if newest:
            return int(newest.name.removeprefix("step-")), newest
    raise CheckpointError(f"{p} points at {ckpt}, which is not a complete checkpoint")


def check_fresh_out(out: Path, force: bool) -> None:
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
    if not ours and any(p.name != LOCK for p in out.iterdir()) and not force:
        raise MomError(f"{out} exists and is not empty; pass --force to train into it anyway")


@contextlib.contextmanager
def lock_run_dir(out: Path):
    """Hold the run directory ``out`` (created if absent) for one training process: a second ``mom train`` into it
    (another shell, a second driver) fails with one error line before it writes anything, instead of interleaving
    its metrics rows and checkpoints with the first one's. An advisory ``flock`` on ``out/.lock``: the kernel drops
    it when the holder exits, so a killed run leaves no stale lock. (Where ``fcntl`` is missing, no lock is held.)"""
    try:
        import fcntl
    except ImportError:  # (Windows)
        yield
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = open(out / LOCK, "a+", encoding="utf-8")
    except OSError as e:
        raise MomError(f"{out}: cannot create the run directory ({e.strerror or e})") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            raise MomError(f"{out}: another process (pid {pid}) is training into this run directory; wait for it "
                           "to finish or train into another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def clear_run(out: Path) -> None:
    for n in RUN_FILES:
        p = out / n
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def truncate_metrics(path: Path, step: int) -> None:
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


def resolve_model_dir(spec: str | os.PathLike, missing: str = "checkpoint directory not found") -> Path:
    """The directory holding a model: a model directory or finished run (``model.safetensors`` + ``config.json``),
    else a training run's latest checkpoint. ``missing``: what to say when ``spec`` does not exist."""
    path = Path(spec)
    if path.is_file():
        raise CheckpointError(f"{path}: is a file; give the model or run directory that holds it")
    if not path.is_dir():
        raise CheckpointError(f"{path}: {missing}")
    if (path / "model.safetensors").is_file():
        return path
    latest = read_latest(path)
    if latest is not None:
        return latest[1]
    raise CheckpointError(f"{path}: no model.safetensors and no checkpoint (is it a mom model or run directory?)")


def load_model(spec: str | os.PathLike, device: torch.device | str = "cpu", **overrides):
    """Load a checkpoint for measuring (eval mode), with ``model.tokenizer`` set to the tokenizer its directory
    carries (:func:`mom.data.tokenizer.load_tokenizer`: its ``tokenizer.json``, else GPT-2); the engine, the
    evaluations and ``mom routes --text`` read text with it."""
    directory = resolve_model_dir(spec)
    model = MoM.from_pretrained(directory, map_location=device, **overrides).eval()
    model.tokenizer = load_tokenizer(directory)
    return model


def run_dir_of(model_dir: str | os.PathLike) -> Path | None:
    """The training run a model directory belongs to: itself (a run's final model, or a run in progress), the run
    holding it as one of its checkpoints, or None (a model directory of its own)."""
    d = Path(model_dir)
    if (d / "run.json").is_file():
        return d
    if d.parent.name == CHECKPOINTS and (d.parent.parent / "run.json").is_file():
        return d.parent.parent
    return None


def last_validation(spec: str | os.PathLike) -> dict[str, Any] | None:
    """The last validation row of the run ``spec`` (a run, model or checkpoint directory) comes from, up to the
    step of the checkpoint it resolves to, that sets the loss beside the unigram yardstick; None when the run (or
    such a row) is not there."""
    directory = resolve_model_dir(spec)
    run = run_dir_of(directory)
    if run is None:
        return None
    upto = None
    if directory.parent.name == CHECKPOINTS:
        try:
            upto = int(directory.name.removeprefix("step-"))
        except ValueError:
            return None
    rows = [r for r in read_metrics(run) if r.get("type") == "val" and isinstance(r.get("val_loss"), (int, float))
            and isinstance(r.get("unigram_loss"), (int, float)) and (upto is None or r.get("step", 0) <= upto)]
    return rows[-1] if rows else None


def start_run_dir(out: Path, force: bool, mcfg: MoMConfig, tcfg: TrainConfig, run_info: dict[str, Any],
                  tokenizer: Tokenizer | None = None) -> None:
    """Create a new run directory (``force``: clearing what a previous run wrote there) with its configs, run.json,
    an empty metrics file and the data's tokenizer (``tokenizer.json`` for a corpus BPE)."""
    if force and out.exists():
        clear_run(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where a parent directory should be, no permission
        raise MomError(f"{out}: cannot create the run directory ({e.strerror or e})") from None
    mcfg.save(out / "config.json")
    tcfg.save(out / "train_config.json")
    if tokenizer is not None:
        tokenizer.save(out)
    (out / METRICS).write_text("", encoding="utf-8")
    write_json_atomic(out / "run.json", run_info)


def continue_run_dir(out: Path, step: int, run_info: dict[str, Any], tcfg: TrainConfig | None = None) -> None:
    """Resuming at ``step``: drop the metrics rows logged after it and record the resumption in run.json; ``tcfg``:
    the run's train config when this resume changes it (another ``max_steps``)."""
    truncate_metrics(out / METRICS, step)
    if tcfg is not None:
        tcfg.save(out / "train_config.json")
    run_info.setdefault("resumed_at", []).append(step)
    write_json_atomic(out / "run.json", run_info)

