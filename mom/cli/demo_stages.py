"""The stages of ``mom demo``: the data it trains on, the ``mom train`` command of every (seed, stage), and running
them with reuse, resumption and ``--force``.

Every stage is an ordinary ``mom train`` command run in this process (the report lists them, so any stage can be
rerun by hand). A stage that already finished with the same settings is reused, an interrupted one resumed, one
killed before its first checkpoint run again; a stage whose init source was trained afresh in this invocation
starts over too (it was built on weights that are gone).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mom.cli.train import train_from_argv
from mom.config.model import MoMConfig, preset
from mom.config.train import TrainConfig
from mom.data.prepare import prepare
from mom.data.tokenizer import load_tokenizer
from mom.data.tokens import load_tokens, read_meta
from mom.errors import ConfigError, MomError
from mom.model.flops import count
from mom.runs import RUN_FILES, read_latest

#: The demo's dataset: the built-in corpus under a 4,096-token byte-level BPE learnt from its train split.
DEMO_TOKENIZER = "bpe:4096"
DEMO_DATA_DIR = Path("data") / "bpe4096"

STAGES = ("phase1", "mom", "vanilla")
TITLES = {"phase1": "phase 1: vanilla tiny from scratch",
          "mom": "phase 2: tiny-mom initialised from phase 1",
          "vanilla": "baseline: vanilla tiny continued from phase 1"}
LABELS = {"phase1": "phase 1 (tiny)", "mom": "phase 2: MoM (tiny-mom)", "vanilla": "vanilla continuation (tiny)"}
EVALS_PER_STAGE = 4  # validations between the one at step 0 and the one at the end (also one every max_steps / 4)
REUSED = "resumed/reused"


# ============================================================================================== data
def prepare_command(out: Path) -> str:
    return f"mom prepare --tokenizer {DEMO_TOKENIZER} --out {out}"


def _invalid_reason(d: Path) -> str | None:
    """Why ``d`` is not the demo's dataset (None: it is, complete and readable)."""
    try:
        meta = read_meta(d)
        if meta is None:
            return "no meta.json"
        if meta.get("tokenizer") != DEMO_TOKENIZER:
            return f"its tokenizer is {meta.get('tokenizer', 'gpt2')}, not {DEMO_TOKENIZER}"
        kinds = {s.get("kind") for s in meta.get("sources", [])}
        if kinds != {"builtin"}:
            return "it is not the built-in corpus alone"
        load_tokenizer(d)
        for split in ("train", "val"):
            load_tokens(d, split, check_ids=False)
    except MomError as e:
        return str(e)
    return None


def ensure_data(data: str | None, force: bool, progress: bool) -> tuple[Path, bool]:
    """The dataset directory and whether it was prepared now. ``--data`` is used as given; else the built-in
    corpus in :data:`DEMO_DATA_DIR`, prepared on first use, reused when complete (a foreign or broken dataset there
    is one error line, or with ``--force`` prepared again)."""
    if data is not None:
        return Path(data), False
    d = DEMO_DATA_DIR
    if d.exists():
        reason = _invalid_reason(d)
        if reason is None:
            return d, False
        if not force:
            raise MomError(f"{d} is not the demo's dataset ({reason}); remove it, pass --force to prepare it again, "
                           "or pass --data DIR")
    print(f"[demo] preparing the built-in corpus with a {DEMO_TOKENIZER} tokenizer into {d} (~15 s)\n"
          f"[demo] $ {prepare_command(d)}", flush=True)
    prepare(["builtin"], d, tokenizer=DEMO_TOKENIZER, overwrite=True, progress=progress)
    return d, True


# ============================================================================================== commands
@dataclass
class Settings:
    """What the demo trains (the command line's numbers)."""
    phase1_steps: int = 800
    phase2_steps: int = 80
    batch_size: int = 16
    seq_len: int = 256
    phase1_lr: float = 3e-3
    phase2_lr: float = 1e-3
    phase1_warmup: int = 40
    eval_tokens: int = 0
    match: str = "tokens"
    seeds: int = 1
    model_overrides: list[str] = field(default_factory=list)

    def model_args(self) -> list[str]:
        out: list[str] = []
        for item in self.model_overrides:
            k, eq, v = item.partition("=")
            if not eq or not k:
                raise MomError(f"--model-overrides takes FIELD=VALUE, got {item!r}")
            out += [f"--model.{k}", v]
        return out

    def configs(self, vocab_size: int | None = None) -> tuple[MoMConfig, MoMConfig]:
        """(tiny-mom, tiny) with the overrides and, unless they set it, the data's ``vocab_size``."""
        args = self.model_args()
        over = {k.removeprefix("--model."): v for k, v in zip(args[::2], args[1::2])}
        if vocab_size is not None and "vocab_size" not in over:
            over["vocab_size"] = str(vocab_size)
        return preset("tiny-mom").replace(**over), preset("tiny").replace(**over)

    def vanilla_steps(self, vocab_size: int | None = None) -> int:
        """Steps of the vanilla continuation: the MoM's (same extra tokens), or as many as spend the MoM's training
        FLOPs (its no-SKIP bound, at the data's vocabulary) with ``match == "flops"``."""
        if self.match != "flops":
            return self.phase2_steps
        mom_cfg, van_cfg = self.configs(vocab_size)
        ratio = count(mom_cfg, self.seq_len).train_flops_per_token / count(van_cfg, self.seq_len).train_flops_per_token
        return max(1, round(self.phase2_steps * ratio))


def _every(steps: int) -> str:
    return str(max(1, -(-steps // EVALS_PER_STAGE)))


def stage_commands(s: Settings, data: Path, out: Path, seed: int, progress: bool) -> dict[str, list[str]]:
    """The three ``mom train`` command lines (without ``mom train``) of one seed, in order."""
    d = out / f"seed-{seed}"
    vocab = []  # the data's vocabulary, spelt out: `mom train --resume --config tiny` compares it with the run's
    data_vocab = (read_meta(data) or {}).get("vocab_size")
    if data_vocab is not None and not any(o.startswith("vocab_size=") for o in s.model_overrides):
        vocab = ["--model.vocab_size", str(data_vocab)]
    common = ["--data", str(data), "--train.batch_size", str(s.batch_size), "--train.seq_len", str(s.seq_len),
              "--train.eval_tokens", str(s.eval_tokens), "--train.log_interval", "5", "--train.seed", str(seed),
              *vocab, *s.model_args()]
    if not progress:
        common.append("--no-progress")

    def schedule(steps: int, lr: float, warmup: int) -> list[str]:
        return ["--train.max_steps", str(steps), "--train.lr", str(lr), "--train.warmup_steps", str(warmup),
                "--train.eval_interval", _every(steps), "--train.ckpt_interval", _every(steps)]

    van = s.vanilla_steps(data_vocab)
    return {
        "phase1": ["--config", "tiny", "--out", str(d / "phase1"), *common,
                   *schedule(s.phase1_steps, s.phase1_lr, min(s.phase1_warmup, max(1, s.phase1_steps // 10)))],
        "mom": ["--config", "tiny-mom", "--init-from", str(d / "phase1"), "--out", str(d / "mom"), *common,
                *schedule(s.phase2_steps, s.phase2_lr, max(1, s.phase2_steps // 10))],
        "vanilla": ["--config", "tiny", "--init-from", str(d / "phase1"), "--out", str(d / "vanilla"), *common,
                    *schedule(van, s.phase2_lr, max(1, van // 10))],
    }


# ============================================================================================== running
def stage_argv(argv: list[str], out: Path, force: bool) -> tuple[list[str], str]:
    """Fresh; resumed (a checkpoint is there: reused if finished, continued if not); or forced."""
    if force:
        return argv + ["--force"], "fresh (--force)"
    latest = read_latest(out) if out.is_dir() else None
    if latest is not None:
        # mom train --resume would extend a run to another max_steps; the demo's later stages were built on this
        # run as it is, so a changed step count is a changed setting (start the demo over).
        had = TrainConfig.load(latest[1] / "train_config.json").max_steps
        want = int(argv[argv.index("--train.max_steps") + 1])
        if had != want:
            raise ConfigError(f"--resume: {out} was trained with a different train config (max_steps: {had} in the "
                              f"run, {want} now)")
        return argv + ["--resume"], REUSED
    if out.is_dir() and any((out / f).exists() for f in RUN_FILES):
        return argv + ["--force"], "restarted (killed before its first checkpoint)"
    return argv, "fresh"


def run_stage(name: str, seed: int, argv: list[str], out: Path, force: bool,
              train: Callable[[list[str]], int] = train_from_argv) -> tuple[list[str], str, float]:
    """Run one stage; returns (its full ``mom train`` command line, how it ran, wall seconds)."""
    t0 = time.perf_counter()
    try:
        argv, mode = stage_argv(argv, out, force)
        print(f"\n[demo] seed {seed}, {TITLES[name]} ({mode})\n[demo] $ mom train {' '.join(argv)}", flush=True)
        train(argv)
    except MomError as e:
        hint = ""
        if "--resume" in str(e) and "different" in str(e):
            hint = " (the demo's settings changed since that run: pass --force to start the demo over)"
        elif "already holds" in str(e) or "exists and is not empty" in str(e):
            hint = " (an unfinished or foreign run is in the way: pass --force to start the demo over)"
        raise MomError(f"demo stage 'seed-{seed}/{name}': {e}{hint}") from None
    return argv, mode, time.perf_counter() - t0


def run_seed(s: Settings, data: Path, out: Path, seed: int, force: bool, progress: bool) -> dict[str, dict]:
    """The three stages of one seed: {stage: {"dir", "command", "mode", "wall_s"}}. A continuation whose phase 1
    was trained afresh now starts over (its old weights came from another phase 1)."""
    done: dict[str, dict] = {}
    phase1_fresh = False
    for name, argv in stage_commands(s, data, out, seed, progress).items():
        d = out / f"seed-{seed}" / name
        stale = name != "phase1" and phase1_fresh and d.exists()  # built on a phase 1 that was just replaced
        _, mode, wall = run_stage(name, seed, argv, d, force or stale)
        if stale and not force:
            mode = "fresh (its phase 1 was trained again)"
        if name == "phase1":
            phase1_fresh = mode != REUSED
        # The command as one would type it (this invocation added --resume or --force as the run's state asked).
        done[name] = {"dir": str(d), "command": ["mom", "train", *argv], "mode": mode, "wall_s": round(wall, 2)}
    return done


# ============================================================================================== measuring
def measure(seeds: list[dict], data: Path, s: Settings, gen_tokens: int) -> dict:
    """Read every run back, measure each MoM's routing health over the validation windows, and generate from seed
    0's three models; fills ``seeds`` in place and returns the generations."""
    from mom.analysis import demo_measure

    for seed_doc in seeds:
        for name in STAGES:
            seed_doc["stages"][name].update(demo_measure.summarize_run(seed_doc["stages"][name]["dir"]))
        print(f"[demo] seed {seed_doc['seed']}: routing health of the MoM over the validation windows", flush=True)
        seed_doc["routing"] = demo_measure.routing_on_val(seed_doc["stages"]["mom"]["dir"], data, s.seq_len,
                                                          s.eval_tokens)
    print("[demo] generating from the three models of seed 0", flush=True)
    gens = demo_measure.generations({name: seeds[0]["stages"][name]["dir"] for name in STAGES},
                                    max_new_tokens=gen_tokens)
    return {**gens, "seed": seeds[0]["seed"]}


def data_record(data: Path, prepared_now: bool, given: bool) -> dict:
    """What demo.json says about the dataset."""
    meta = read_meta(data) or {}
    keep = ("tokenizer", "vocab_size", "train_tokens", "val_tokens", "train_bytes", "val_bytes", "unigram_loss",
            "unigram_bpb")
    return {"dir": str(data), "prepared_now": prepared_now, "command": None if given else prepare_command(data),
            **{k: meta[k] for k in keep if k in meta}}


def vanilla_steps_of(seeds: list[dict]) -> int:
    """The vanilla continuation's steps, as its command line says (``--match flops`` makes them differ from the
    MoM's)."""
    argv = seeds[0]["stages"]["vanilla"]["command"]
    return int(argv[argv.index("--train.max_steps") + 1])
