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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=runner.__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--setting", choices=list(SETTINGS), default="cpu")
    p.add_argument("--out", default="runs/reproduce", help="run directories (default runs/reproduce/<setting>)")
    p.add_argument("--json", help="results JSON (default docs/results/<setting>.json)")
    p.add_argument("--report", help="markdown report (default docs/results.md for cpu, "
                                     "docs/results-<setting>.md otherwise)")
    p.add_argument("--data", help="prepared dataset directory, tokenised with the setting's tokenizer (default: the "
                                  "setting's, e.g. data/bpe4096 for cpu; prepared from the built-in corpus if absent)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the setting's)")
    p.add_argument("--only", help=f"comma-separated experiments out of {', '.join(EXPERIMENTS)}")
    p.add_argument("--report-only", action="store_true", help="only regenerate the report from the JSON")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (default 1: tiny models on a shared 2-core machine run fastest on one)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default 1)")
    p.add_argument("--time-layouts", type=int, metavar="STEPS",
                   help="only time STEPS training steps of every layout of the setting (its sizing) and print them")
    p.add_argument("--dry-run", action="store_true",
                   help="run the setting's whole plan on the CPU with 2 steps per run, one seed, tiny proxies, into "
                        "--out (default a temporary directory): every run's config is built, trained and measured")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        p.error("--jobs and --threads must be ≥ 1")
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

    if args.dry_run:
        return dry_run(setting, args, experiments, say)
    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)
        data = Path(args.data or runner.REPO / setting.default_data)
        runner.check_data(data, setting, say)
        if args.time_layouts:
            runner.time_layouts(setting, data, args.time_layouts, say, experiments)
            return 0
        out = Path(args.out)
        if args.out == "runs/reproduce":
            out = out / setting.name
        runner.reproduce(setting, out, json_path, data, experiments, say, args.jobs, args.threads)
    if not json_path.is_file():
        raise SystemExit(f"{json_path}: no results yet (run without --report-only first)")
    from mom.fileio import atomic_write
    from scripts.reproduce.report import build_report

    res = json.loads(json_path.read_text(encoding="utf-8"))
    runner.check_format(json_path, res)
    report.parent.mkdir(parents=True, exist_ok=True)
    others = {}
    gpu_json = runner.REPO / "docs" / "results" / "gpu.json"
    if setting.name == "cpu" and gpu_json.is_file():  # the claims table's gpu column
        others["gpu"] = json.loads(gpu_json.read_text(encoding="utf-8"))
    atomic_write(report, build_report(res, others))
    say(f"report: {report}")
    return 0


def dry_run(setting, args, experiments: list[str], say) -> int:
    """``--dry-run``: the plan of ``setting`` end to end on the CPU at 2 steps a run (runner.dry_run_setting)."""
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    small = runner.dry_run_setting(setting)
    data = Path(args.data or runner.REPO / setting.default_data)
    runner.check_data(data, small, say)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out != "runs/reproduce" else Path(tmp)
        res = runner.reproduce(small, out / "runs", out / "dry-run.json", data, experiments, say, args.jobs,
                               args.threads)
    say(f"dry run of the {setting.name} setting: {len(res['runs'])} runs built, trained 2 steps and measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
