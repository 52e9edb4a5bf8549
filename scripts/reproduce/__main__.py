"""``python -m scripts.reproduce``: the reproduction's command line (see :mod:`scripts.reproduce.runner`)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # ``python scripts/reproduce``: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.reproduce import runner  # noqa: E402
from scripts.reproduce.experiments import EXPERIMENTS, SETTINGS  # noqa: E402
from scripts.reproduce.report import build_report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=runner.__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--setting", choices=list(SETTINGS), default="cpu")
    p.add_argument("--out", default="runs/reproduce", help="run directories (default runs/reproduce/<setting>)")
    p.add_argument("--json", help="results JSON (default docs/results/<setting>.json)")
    p.add_argument("--report", help="markdown report (default docs/results.md for cpu, "
                                     "docs/results-<setting>.md otherwise)")
    p.add_argument("--data", default="data/builtin", help="prepared dataset directory (default data/builtin)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the setting's)")
    p.add_argument("--only", help=f"comma-separated experiments out of {', '.join(EXPERIMENTS)}")
    p.add_argument("--report-only", action="store_true", help="only regenerate the report from the JSON")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: tiny models on a shared 2-core machine run fastest on one)")
    args = p.parse_args(argv)
    setting = SETTINGS[args.setting]
    if args.seeds:
        setting = dataclasses.replace(setting, seeds=tuple(int(s) for s in args.seeds.split(",")))
    experiments = list(setting.experiments)
    if args.only:
        experiments = [e.strip() for e in args.only.split(",")]
        bad = [e for e in experiments if e not in EXPERIMENTS]
        if bad:
            p.error(f"unknown experiment(s) {', '.join(bad)}; choose from {', '.join(EXPERIMENTS)}")
    json_path = Path(args.json or runner.REPO / "docs" / "results" / f"{setting.name}.json")
    report = Path(args.report or runner.REPO / "docs" / ("results.md" if setting.name == "cpu"
                                                  else f"results-{setting.name}.md"))

    def say(msg: str) -> None:
        print(f"[reproduce {datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)

    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)
        data = Path(args.data)
        if not (data / "train.bin").is_file():
            from mom.data.prepare import prepare

            say(f"preparing the built-in corpus into {data}")
            prepare(["builtin"], data, progress=False)
        out = Path(args.out)
        if args.out == "runs/reproduce":
            out = out / setting.name
        runner.reproduce(setting, out, json_path, data, experiments, say)
    if not json_path.is_file():
        raise SystemExit(f"{json_path}: no results yet (run without --report-only first)")
    from mom.fileio import atomic_write

    res = json.loads(json_path.read_text(encoding="utf-8"))
    report.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(report, build_report(res))
    say(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
