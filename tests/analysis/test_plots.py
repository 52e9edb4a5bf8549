"""``mom plot``: runs compared on one figure (loss against tokens and FLOPs, bits per byte when the rows have it,
routing), and its one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from mom.analysis.plots import RunCurves, plot_runs, run_labels
from mom.errors import MomError
from mom.train.loop import train
from tests.train.test_train import REPO, mom_cfg, tcfg, vanilla_cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    d = tmp_path_factory.mktemp("runs")
    train(mom_cfg(), tcfg(max_steps=4, eval_interval=2), out=d / "mom", data=str(data_dir), progress=False)
    train(vanilla_cfg(), tcfg(max_steps=4, eval_interval=2), out=d / "vanilla", data=str(data_dir), progress=False)
    return d


def _mom(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mom.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def test_mom_plot_compares_runs(runs, tmp_path):
    out = tmp_path / "cmp.png"
    r = _mom("plot", runs / "mom", runs / "vanilla", "--out", out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {out}" in r.stdout
    mom_run = RunCurves(runs / "mom", "mom")
    assert mom_run.flops_per_token > RunCurves(runs / "vanilla", "vanilla").flops_per_token > 0
    tokens, modules, skip = mom_run.routing()
    assert len(tokens) == 4 and all(0 < m <= 1 for m in modules) and all(0 <= s <= 1 for s in skip)


def test_bits_per_byte_are_drawn_when_the_rows_have_them(runs, tmp_path):
    import shutil

    run = shutil.copytree(runs / "mom", tmp_path / "bpb")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        if r["type"] == "val":
            r["val_bpb"] = r["val_loss"] / 3.1  # rows of a mom that reports bits per byte
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_runs([run, runs / "vanilla"], tmp_path / "x.png").is_file()
    assert run_labels([run, runs / "mom", tmp_path / "a" / "mom"]) == ["bpb", str(runs / "mom"),
                                                                       str(tmp_path / "a" / "mom")]


@pytest.mark.parametrize("case, message", [
    ("not-a-run", "not a training run (no metrics.jsonl"),
    ("missing-run", "no such run directory"),
    ("missing-dir", "directory {tmp}/nope does not exist"),
    ("not-png", "the figure is a PNG"),
])
def test_mom_plot_errors_are_one_line(runs, tmp_path, case, message):
    (tmp_path / "empty").mkdir()
    args = {"not-a-run": [tmp_path / "empty", "--out", tmp_path / "a.png"],
            "missing-run": [tmp_path / "gone", "--out", tmp_path / "a.png"],
            "missing-dir": [runs / "mom", "--out", tmp_path / "nope" / "a.png"],
            "not-png": [runs / "mom", "--out", tmp_path / "a.pdf"]}[case]
    r = _mom("plot", *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("mom: error: ") and message.format(tmp=tmp_path) in lines[0], lines[0]
    assert not list(tmp_path.glob("*.png"))
    if case in ("not-a-run", "missing-run"):  # the same error from the Python API
        with pytest.raises(MomError, match=re.escape(message)):
            RunCurves(args[0], "x")
