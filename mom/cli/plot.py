"""``mom plot``: training runs compared on one figure (loss against tokens and training FLOPs, bits per byte,
routing), drawn from their metrics.jsonl while they train or after."""

from __future__ import annotations

import argparse
from pathlib import Path

from mom.cli.common import check_output_file
from mom.errors import MomError
from mom.extras import import_extra


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="training run directories (the --out of mom train)")
    p.add_argument("--out", required=True, metavar="FILE", help="the figure to write (.png)")
    p.set_defaults(func=run_plot, overrides=())


def run_plot(args: argparse.Namespace, overrides: dict[str, dict[str, str]]) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise MomError(f"--out {out}: the figure is a PNG; give a file name ending in .png")
    check_output_file(out, "--out")
    import_extra("matplotlib", "plots", "mom plot")
    from mom.analysis.plots import plot_runs

    print(f"wrote {plot_runs(args.runs, out)}")
    return 0
