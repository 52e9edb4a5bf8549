"""``mom demo`` end to end at a toy size: three runs, a report with the table, plots and commands; a second
invocation reuses the finished stages; changed settings are refused with a pointer to --force."""

import json
import re

from mom.cli.main import main
from mom.runs import read_metrics
from tests.conftest import write_tokens

SMALL = ["--phase1-steps", "4", "--phase2-steps", "2", "--batch-size", "2", "--seq-len", "16", "--eval-tokens", "64",
         "--model-overrides", "vocab_size=97", "n_ctx=16", "d_model=32", "n_head=4", "router_hidden=16",
         "--no-progress"]


def test_demo_pipeline_and_report(tmp_path, capsys):
    data = write_tokens(tmp_path / "tok", n_train=5000, n_val=500)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--data", str(data), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed
    for run, steps in (("phase1", 4), ("mom", 2), ("vanilla", 2)):
        rows = read_metrics(out / run)
        assert max(r["step"] for r in rows) == steps, run
        assert (out / run / "model.safetensors").is_file() and (out / run / "loss.png").is_file()
    assert (out / "mom" / "routing.png").is_file() and (out / "comparison.png").is_file()
    # Both continuations start from the phase-1 weights; the vanilla one exactly where phase 1 ended.
    p1_end = [r for r in read_metrics(out / "phase1") if r["type"] == "val"][-1]["val_loss"]
    van = [r for r in read_metrics(out / "vanilla") if r["type"] == "val"]
    assert van[0]["val_loss"] == p1_end
    info = json.loads((out / "mom" / "run.json").read_text())
    assert info["init_from"] == str(out / "phase1") and "decomposed" in info["init"]

    report = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    for label in ("phase 1 (from scratch)", "**phase 2: MoM**", "**vanilla continuation**"):
        assert label in report
    assert f"{summary['mom']['val_loss']:.4f}" in report and f"{summary['vanilla']['val_loss']:.4f}" in report
    assert summary["mom"]["tokens"] == summary["vanilla"]["tokens"]  # matched extra tokens
    for img in ("comparison.png", "phase1/loss.png", "mom/loss.png", "mom/routing.png", "vanilla/loss.png"):
        assert f"({img})" in report
    commands = re.findall(r"^mom train .*$", report, flags=re.M)
    assert len(commands) == 3 and "--init-from" in commands[1] and "--config tiny-mom" in commands[1]
    assert "Total wall time" in report

    # Again: every stage is reused (resumed at its final step), nothing retrained.
    before = {run: (out / run / "metrics.jsonl").read_text() for run in ("phase1", "mom", "vanilla")}
    assert main(["demo", "--out", str(out), "--data", str(data), *SMALL]) == 0
    assert "already finished" in capsys.readouterr().out
    assert {run: (out / run / "metrics.jsonl").read_text() for run in before} == before
    assert report.count("*resumed/reused*") == 0 and "(*resumed/reused*)" in (out / "report.md").read_text()

    # A stage killed before its first checkpoint has nothing to resume: it is run again from its start.
    import shutil

    shutil.rmtree(out / "vanilla" / "checkpoints")
    (out / "vanilla" / "latest.json").unlink()
    assert main(["demo", "--out", str(out), "--data", str(data), *SMALL]) == 0
    assert "restarted (killed before its first checkpoint)" in capsys.readouterr().out
    def losses(rows):
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in rows]

    again = read_metrics(out / "vanilla")
    first = [json.loads(line) for line in before["vanilla"].splitlines()]
    assert losses(again) == losses(first)  # deterministic: the same run again

    # Different settings against existing runs: one clear error that names --force.
    changed = [a if a != "4" else "5" for a in SMALL]
    assert main(["demo", "--out", str(out), "--data", str(data), *changed]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "demo stage 'phase1'" in err[0] and "max_steps: 4 in the run, 5 now" in err[0]
    assert "--force" in err[0]


def test_demo_flop_matching(tmp_path, capsys):
    data = write_tokens(tmp_path / "tok", n_train=3000, n_val=300)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--data", str(data), "--match", "flops", *SMALL]) == 0
    s = json.loads((out / "summary.json").read_text())
    # The vanilla continuation got more steps, so its training FLOPs approach the MoM's.
    assert s["vanilla"]["steps"] > s["mom"]["steps"]
    assert "At matched training FLOPs" in (out / "report.md").read_text()
