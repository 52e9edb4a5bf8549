"""What a launch of ``mom train`` will do, decided before anything is written: a new run, or the continuation of
one from its latest checkpoint (with the configs, data and init source the run was started with)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mom.config.model import MoMConfig
from mom.config.train import TrainConfig
from mom.data.tokenizer import Tokenizer, data_tokenizer, load_tokenizer
from mom.errors import CheckpointError, ConfigError, DataError, MomError
from mom.fileio import read_json
from mom.runs import check_fresh_out, read_latest
from mom.train.init import check_init_tokens


@dataclass
class RunPlan:
    """The resolved inputs of a launch."""

    mcfg: MoMConfig
    tcfg: TrainConfig
    out: Path
    data: str | None  # --data as given (None: the built-in corpus)
    init: str | None  # --init-from as given, or the run's when resuming
    resume_from: tuple[int, Path] | None = None  # (step, checkpoint directory)
    run_info: dict[str, Any] = field(default_factory=dict)  # the run's run.json when resuming
    extend_from: int | None = None  # the run's max_steps when this resume changes it (extends or shortens the run)
    note: str | None = None  # what an elastic restart decided, for the console
    force: bool = False  # a new run may clear what a previous run wrote in ``out`` (--force, or an elastic restart)

    @property
    def resuming(self) -> bool:
        return self.resume_from is not None


def config_diff(a: dict, b: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    return [f"{k}: {a.get(k)!r} in the run, {b.get(k)!r} now" for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)]


# ================================================================================================ torch elastic
def elastic_restart() -> int:
    """How many times torch elastic (``torchrun --max-restarts N``) has restarted this job: 0 on its first attempt
    and outside torchrun."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def elastic_job() -> str | None:
    """The torchrun job's id (its rendezvous id: the same on every restart of the job), recorded in run.json."""
    return os.environ.get("TORCHELASTIC_RUN_ID") or None


def elastic_continuation(out: Path, resume: bool, force: bool) -> tuple[bool, bool, str | None]:
    """A job that torch elastic restarted (after a lost process) runs the same command line again: if its first
    attempt started the run in ``out`` (run.json names this job's id), continue that run from its latest checkpoint
    (or start it over if there is none yet) instead of refusing the existing directory. Anything else keeps the
    usual rules. Returns (resume, force, what was decided)."""
    restart = elastic_restart()
    if resume or restart == 0 or elastic_job() is None or not (out / "run.json").is_file():
        return resume, force, None
    try:
        started_by = read_json(out / "run.json", "run info").get("elastic_run_id")
    except (MomError, AttributeError):
        return resume, force, None
    if started_by != elastic_job():
        return resume, force, None
    latest = read_latest(out)
    if latest is None:
        return False, True, f"elastic restart {restart}: no checkpoint yet, starting {out} over"
    return True, False, f"elastic restart {restart}: continuing {out} from its latest checkpoint (step {latest[0]})"


# ================================================================================================ the plan
def plan_run(mcfg: MoMConfig | None, tcfg: TrainConfig | None, out: Path, data: str | None, init: str | None,
             resume: bool, force: bool, vocab_from_data: bool = False) -> RunPlan:
    """A new run (both configs needed, ``out`` free or ``force``) or a resumed one (configs from its checkpoint;
    those given must match but for :attr:`TrainConfig.RESUMABLE_CHANGES` and ``max_steps``, which extends or
    shortens the run; with ``vocab_from_data`` a given model config's ``vocab_size`` is the run's, as it was
    taken from the data when the run started). Under torch elastic, a restarted job continues its own run
    (:func:`elastic_continuation`)."""
    resume, force, note = elastic_continuation(out, resume, force)
    if resume and force:
        raise MomError("--resume and --force exclude each other")
    if not resume:
        if mcfg is None or tcfg is None:
            raise ConfigError("a new run needs a model config (--config) and a train config")
        check_fresh_out(out, force)
        return RunPlan(mcfg, tcfg, out, data, init, note=note, force=force)
    if not out.is_dir():
        raise CheckpointError(f"{out}: no such run directory to resume")
    resume_from = read_latest(out)
    if resume_from is None:
        raise CheckpointError(f"{out}: no checkpoint to resume from (start the run without --resume)")
    ck = resume_from[1]
    run_mcfg, run_tcfg = MoMConfig.load(ck / "config.json"), TrainConfig.load(ck / "train_config.json")
    if mcfg is not None:
        if vocab_from_data:
            mcfg = mcfg.replace(vocab_size=run_mcfg.vocab_size)
        diff = config_diff(run_mcfg.to_dict(), mcfg.to_dict(), ignore=("name",))
        if diff:
            raise ConfigError(f"--resume: {out} was trained with a different model config ({'; '.join(diff)}); "
                              "resume with the run's config or start a new run")
    old_max = run_tcfg.max_steps
    if tcfg is not None:
        changeable = (*TrainConfig.RESUMABLE_CHANGES, "max_steps")
        diff = config_diff(run_tcfg.to_dict(), tcfg.to_dict(), ignore=changeable)
        if diff:
            raise ConfigError(f"--resume: {out} was trained with a different train config ({'; '.join(diff)}); "
                              "resume with the same settings or start a new run (e.g. --init-from it)")
        run_tcfg = run_tcfg.replace(**{k: getattr(tcfg, k) for k in changeable})
    done = resume_from[0]
    if run_tcfg.max_steps < done:
        raise ConfigError(f"--resume: {out} has already done {done} steps; --train.max_steps {run_tcfg.max_steps} "
                          f"would undo some (give at least {done}, or start a new run with --init-from {out})")
    run_info = read_json(out / "run.json", "run info") if (out / "run.json").is_file() else {}
    if init is not None and run_info.get("init_from") not in (None, init):
        raise ConfigError(f"--resume: {out} was initialised from {run_info.get('init_from')}, not {init}")
    extend_from = old_max if run_tcfg.max_steps != old_max else None
    if extend_from is not None:
        run_info.setdefault("extended", []).append({"step": done, "max_steps_before": old_max,
                                                    "max_steps": run_tcfg.max_steps})
    return RunPlan(run_mcfg if mcfg is None else mcfg, run_tcfg, out, data or run_info.get("data"),
                   run_info.get("init_from"), resume_from, run_info, extend_from, note)


def check_resumed_data(plan: RunPlan, data_dir: Path, train: np.ndarray, val: np.ndarray) -> None:
    """A resumed run must read the data it was started on (the same number of tokens in each split)."""
    if not plan.resuming:
        return
    for split, arr in (("train", train), ("val", val)):
        had = plan.run_info.get(f"{split}_tokens")
        if had is not None and had != len(arr):
            raise DataError(f"--resume: {data_dir} is not the run's data ({split} split: {len(arr):,} tokens, "
                            f"the run had {had:,})")


def fit_vocabulary(plan: RunPlan, data_dir: Path,
                   vocab_from_data: bool) -> tuple[RunPlan, Tokenizer, bool, str | None]:
    """The model's vocabulary against the data's tokenizer, before anything is built or written: with
    ``vocab_from_data`` a new run takes ``vocab_size`` from the data (``mom train`` without ``--model.vocab_size``);
    a model smaller than the data's vocabulary, a resumed run or an ``--init-from`` source with another tokenizer,
    or a source of another vocabulary size is one error line. A larger model vocabulary (padded, as nanoGPT's
    50304) is allowed. Returns the plan (its model config updated), the data's tokenizer, whether the data names it
    and a note for the log."""
    tok, known = data_tokenizer(data_dir)
    mcfg, note = plan.mcfg, None
    if known and vocab_from_data and not plan.resuming and mcfg.vocab_size != tok.n_vocab:
        mcfg = mcfg.replace(vocab_size=tok.n_vocab)
        note = f"vocab_size {tok.n_vocab:,} from the data"
    if known and mcfg.vocab_size < tok.n_vocab:
        if plan.resuming:
            raise DataError(f"--resume: {data_dir} uses the tokenizer {tok.name} ({tok.n_vocab:,} tokens), more "
                            f"than the run's vocab_size {mcfg.vocab_size:,}")
        raise ConfigError(f"{data_dir}: its tokenizer {tok.name} has {tok.n_vocab:,} tokens but the model's "
                          f"vocab_size is {mcfg.vocab_size:,}: set it to at least {tok.n_vocab:,} (mom train takes "
                          "it from the data unless --model.vocab_size is given)")
    if plan.resuming and known:
        ran = load_tokenizer(plan.resume_from[1])
        if ran.sha256 != tok.sha256:
            raise DataError(f"--resume: {data_dir} uses the tokenizer {tok.name} (sha256 {tok.sha256[:12]}…), the "
                            f"run was trained with {ran.name} ({ran.sha256[:12]}…)")
    elif plan.init is not None and not plan.resuming:
        check_init_tokens(plan.init, mcfg.vocab_size, tok, known)
    return replace(plan, mcfg=mcfg), tok, known, note
