"""``mom train``: configs from presets, JSON and ``--model.X`` / ``--train.X`` overrides, then the training loop,
then the run's plots."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from mom.cli.args import Parser, split_overrides
from mom.config.model import MoMConfig, resolve_config
from mom.config.train import TrainConfig, resolve_train_config
from mom.errors import MomError
from mom.runs import read_latest
from mom.train.loop import train


def write_plots(out: Path, quiet: bool = False) -> list[Path]:
    """The run's loss and routing plots (matplotlib is the optional ``plots`` extra: without it, say so)."""
    try:
        from mom.analysis import plots
    except ImportError as e:
        print(f"no plots ({e}); install them with: pip install 'mixture-of-modules[plots]'", flush=True)
        return []
    written = plots.plot_run(out)
    if written and not quiet:
        print("plots: " + ", ".join(str(p) for p in written), flush=True)
    return written


class PlotRefresher:
    """The ``on_eval`` hook of ``mom train``: redraws the run's plots after an evaluation, so a long run can be
    watched while it trains; at most once per ``every_s`` seconds (drawing takes ~2 s; a short run draws only at the
    end, as ``mom train`` always does). Plotting is a side output: if it fails (or matplotlib is missing) training
    goes on and the reason is said once."""

    def __init__(self, out: Path, every_s: float = 30.0):
        self.out, self.every_s, self.failed = out, every_s, False
        self.last = time.monotonic()

    def __call__(self, step: int) -> None:
        if self.failed or time.monotonic() - self.last < self.every_s:
            return
        self.last = time.monotonic()
        try:
            if not write_plots(self.out, quiet=True):
                self.failed = True  # no matplotlib (already said), or nothing to draw yet
        except Exception as e:  # noqa: BLE001 - a plotting failure must not end a training run
            self.failed = True
            print(f"warning: the plots were not refreshed at step {step} ({type(e).__name__}: {e}); training "
                  "goes on", flush=True)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    fields = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
    p.epilog = (f"Override any model field with --model.FIELD VALUE (see mom configs --json) and any train field with "
                f"--train.FIELD VALUE: {fields}. Distributed: torchrun --nproc_per_node=N -m mom.cli train ...")
    p.add_argument("--config", help="model: a preset (mom configs), a JSON config, or a run directory; "
                                    "with --resume defaults to the run's")
    p.add_argument("--train-config", default=None, metavar="PRESET_OR_JSON",
                   help="train settings: default, official-phase1/2, ours-phase1/2, or a JSON file (default: default)")
    p.add_argument("--data", metavar="DIR", help="dataset directory with train.bin/val.bin (mom prepare, or "
                                                 "nanoGPT's); default: the built-in corpus, prepared into data/builtin")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<config name>)")
    p.add_argument("--init-from", metavar="RUN_DIR|hf:DIR",
                   help="start from these weights: a run/model directory (same layout: loaded; vanilla into a MoM "
                        "layout: decomposed, routers fresh) or an HF GPT-2 directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint; with another --train.max_steps, extend "
                        "(or shorten) it (the cosine is re-stretched from here). Under torchrun --max-restarts a "
                        "restarted job resumes by itself")
    p.add_argument("--force", action="store_true", help="start over in an --out that already holds a run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train, overrides=("model", "train"))


def run_train(args: argparse.Namespace, overrides: dict[str, dict[str, str]]) -> int:
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
        result = train(mcfg, tcfg, out=out, data=args.data, init=args.init_from, resume=args.resume,
                       force=args.force, progress=not args.no_progress, command=command_line(args, overrides, out),
                       vocab_from_data="vocab_size" not in model_over, on_eval=PlotRefresher(out))
        if result.finished and result.main_process:
            write_plots(result.run_dir)
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


def train_from_argv(argv: list[str]) -> int:
    """Run one ``mom train`` command line (without the leading ``mom train``) in this process: the same parser and
    code path as the shell."""
    parser = Parser(prog="mom train")
    add_train_arguments(parser)
    args, extra = parser.parse_known_args(argv)
    return args.func(args, split_overrides(extra, args.overrides))

