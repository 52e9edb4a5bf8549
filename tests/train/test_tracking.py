"""Run tracking and the run's lifecycle: TensorBoard event files and metrics.csv with the very numbers of
metrics.jsonl (also across a resume), console lines without a progress bar, the evaluation hook, extending or
shortening a run on --resume (the learning-rate schedule, the optimiser state, exact continuation), and what a
torch-elastic restart decides."""

from __future__ import annotations

import csv
import json
import math

import pytest

import mom.train.monitor as monitor_mod
from mom.config.train import TrainConfig
from mom.errors import ConfigError, MissingExtraError
from mom.model.model import MoM
from mom.runs import read_metrics
from mom.train.loop import train
from mom.train.monitor import flat_scalars, tensorboard_tag
from mom.train.optim import lr_at
from mom.train.resume import elastic_continuation
from tests.train.test_train import cli, mom_cfg, tcfg


def tracked(run) -> list[dict]:
    return [r for r in read_metrics(run) if r["type"] in ("train", "val")]


def csv_rows(run) -> list[dict]:
    with open(run / "metrics.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def tensorboard_values(run) -> dict[str, list[tuple[int, float]]]:
    pytest.importorskip("tensorboard")
    # TensorBoard's own reader (the one its server uses: it also applies a resumed run's purge_step)
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"]}


def assert_tracking_matches_jsonl(run) -> None:
    rows = tracked(run)
    # CSV: one line per row, every number equal to the JSON's (floats round-trip exactly)
    table = csv_rows(run)
    assert len(table) == len(rows)
    for row, line in zip(rows, table):
        flat = flat_scalars(row)
        assert line["type"] == row["type"]
        for key, value in flat.items():
            assert type(value)(line[key]) == value, (row["step"], key)
        assert all(line[k] == "" for k in line if k not in flat and k != "type")
    # TensorBoard: every number of every row at its step, nothing else
    expect: dict[str, list] = {}
    for row in rows:
        for key, value in flat_scalars(row).items():
            if key != "step":
                expect.setdefault(tensorboard_tag(row["type"], key), []).append((row["step"], float(value)))
    got = tensorboard_values(run)
    assert sorted(got) == sorted(expect)
    for tag in expect:
        assert sorted(got[tag]) == sorted(expect[tag]), tag


def test_tensorboard_and_csv_hold_the_numbers_of_metrics_jsonl(tmp_path, data_dir):
    run = tmp_path / "run"
    train(mom_cfg(), tcfg(max_steps=6, log_interval=2, eval_interval=3), out=run, data=str(data_dir), progress=False)
    rows = tracked(run)
    assert [r["type"] for r in rows].count("val") == 3 and rows[-2]["routing"]
    assert_tracking_matches_jsonl(run)
    tags = tensorboard_values(run)
    assert {"train/loss", "train/lr", "train/grad_norm", "val/loss", "val/ppl",
            "routing/c0.h1.ffn/entropy"} <= set(tags)


def test_a_killed_and_resumed_run_keeps_tracking_equal_to_metrics_jsonl(tmp_path, data_dir):
    """Rows logged after the last checkpoint are redone on resume: the CSV is rebuilt and TensorBoard is told to
    drop them (purge_step), so nothing is counted twice."""
    import shutil

    run = tmp_path / "run"
    t = tcfg(max_steps=8, log_interval=1, eval_interval=3, ckpt_interval=4, keep_checkpoints=2)
    train(mom_cfg(), t, out=run, data=str(data_dir), progress=False, stop_at=6)  # checkpoints at 4 and 6
    # As if killed after logging steps 5 and 6 (all three writers have them) but before the step-6 checkpoint:
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    (run / "latest.json").write_text(json.dumps({"step": 4, "path": "checkpoints/step-00000004"}))
    with open(run / "metrics.jsonl", "a") as f:  # … and a torn last line
        f.write('{"type": "train", "step": 7, "lo')
    train(None, None, out=run, resume=True, progress=False)
    assert [r["step"] for r in tracked(run) if r["type"] == "train"] == list(range(1, 9))
    assert_tracking_matches_jsonl(run)  # TensorBoard's steps 5 and 6 once, not twice


def test_tracking_can_be_switched_off_and_asking_for_a_missing_tensorboard_is_one_error(tmp_path, data_dir,
                                                                                      monkeypatch):
    run = tmp_path / "off"
    train(mom_cfg(), tcfg(max_steps=2, tensorboard=False, csv=False), out=run, data=str(data_dir), progress=False)
    assert not (run / "tensorboard").exists() and not (run / "metrics.csv").exists()
    real = monitor_mod.importlib.util.find_spec
    monkeypatch.setattr(monitor_mod.importlib.util, "find_spec", lambda n: None if n == "tensorboard" else real(n))
    with pytest.raises(MissingExtraError, match=r"pip install 'mixture-of-modules\[tensorboard\]'"):
        train(mom_cfg(), tcfg(max_steps=2, tensorboard=True), out=tmp_path / "x", data=str(data_dir), progress=False)
    assert not (tmp_path / "x").exists()  # found before anything is written
    auto = tmp_path / "auto"  # the default (None): on where installed, so here off
    train(mom_cfg(), tcfg(max_steps=2), out=auto, data=str(data_dir), progress=False)
    assert not (auto / "tensorboard").exists() and (auto / "metrics.csv").is_file()


def test_without_a_visible_progress_bar_every_metrics_row_is_a_console_line(tmp_path, data_dir, capsys):
    evals = []
    train(mom_cfg(), tcfg(max_steps=4, log_interval=2, eval_interval=2), out=tmp_path / "run", data=str(data_dir),
          progress=True, on_eval=evals.append)  # stderr is not a terminal under pytest: no bar
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("step ") and "/4: loss" in line]
    assert [line.split(":")[0] for line in lines] == ["step 2/4", "step 4/4"]
    assert "tok/s" in lines[0] and "ETA" in lines[0] and "lr " in lines[0]
    assert evals == [0, 2, 4]  # the hook runs after each validation row


# ---------------------------------------------------------------------------------------------- extend a run
def test_extending_a_finished_run_continues_its_optimiser_at_min_lr(tmp_path, data_dir):
    t8 = tcfg(max_steps=8, eval_interval=4, ckpt_interval=4)
    run = tmp_path / "run"
    train(mom_cfg(), t8, out=run, data=str(data_dir), progress=False)
    before = read_metrics(run)
    res = train(None, t8.replace(max_steps=12), out=run, resume=True, progress=False)
    assert res.finished and res.step == 12
    rows = read_metrics(run)
    assert rows[:len(before)] == before  # the first 8 steps are kept as they were
    lrs = {r["step"]: r["lr"] for r in rows if r["type"] == "train"}
    assert [lrs[s] for s in range(9, 13)] == [t8.final_lr] * 4  # the cosine had ended: it stays at min_lr
    info = json.loads((run / "run.json").read_text())
    assert info["extended"] == [{"step": 8, "max_steps_before": 8, "max_steps": 12}]
    assert json.loads((run / "checkpoints" / "step-00000012" / "state.json").read_text())["lr_horizons"] == [[8, 8]]
    assert TrainConfig.load(run / "train_config.json").max_steps == 12  # the run's config says what it is now
    assert TrainConfig.load(run / "checkpoints" / "step-00000012" / "train_config.json").max_steps == 12
    # the optimiser went on from step 8's state: AdamW's step count is 12, not 4
    assert json.loads((run / "checkpoints" / "step-00000012" / "state.json").read_text())["optimizer_step"] == 12


def test_extending_mid_run_restretches_the_cosine_and_resumes_exactly(tmp_path, data_dir):
    t8, t12 = tcfg(max_steps=8, ckpt_interval=2), tcfg(max_steps=12, ckpt_interval=2)
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        train(mom_cfg(), t8, out=run, data=str(data_dir), progress=False, stop_at=4)
    train(None, t12, out=a, resume=True, progress=False)  # extended at step 4, straight to the end
    train(None, t12, out=b, resume=True, progress=False, stop_at=7)  # extended at 4, stopped at 7 …
    train(None, None, out=b, resume=True, progress=False)  # … and resumed with the (extended) config unchanged
    lrs = {r["step"]: r["lr"] for r in read_metrics(a) if r["type"] == "train"}
    assert [lrs[s + 1] for s in range(12)] == [lr_at(t12, s, [[4, 8]]) for s in range(12)]
    assert lrs[5] == lr_at(t8, 4)  # continuous: the step after the change has the rate the old schedule had
    assert all(lrs[s] > lrs[s + 1] > t12.final_lr for s in range(5, 12))  # decaying towards min_lr at step 12
    wa, wb = MoM.from_pretrained(a).state_dict(), MoM.from_pretrained(b).state_dict()
    assert all((wa[k] == wb[k]).all() for k in wa)

    def numbers(run):
        return [(r["type"], r["step"], r.get("loss"), r.get("lr"), r.get("grad_norm"), r.get("val_loss"))
                for r in read_metrics(run)]

    assert numbers(a) == numbers(b)


def test_lr_schedule_horizons():
    t = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr=0.1)
    assert [lr_at(t, s, []) for s in range(100)] == [lr_at(t, s) for s in range(100)]
    shorter = t.replace(max_steps=60)
    assert lr_at(shorter, 50, [[50, 100]]) == lr_at(t, 50)
    assert lr_at(shorter, 60, [[50, 100]]) == pytest.approx(0.1)
    # a change during the warm-up keeps it, then decays from lr over the new horizon
    assert lr_at(t.replace(max_steps=200), 105, [[5, 100]]) == pytest.approx(0.1 + 0.5 * (1 + math.cos(math.pi / 2)) * 0.9)
    # two changes: each starts where the previous schedule was
    t3 = t.replace(max_steps=300)
    assert lr_at(t3, 80, [[50, 100], [80, 200]]) == lr_at(t.replace(max_steps=200), 80, [[50, 100]])


def test_resume_with_fewer_steps_than_done_is_one_error_line(tmp_path, data_dir):
    run = tmp_path / "run"
    train(mom_cfg(), tcfg(max_steps=6, ckpt_interval=3), out=run, data=str(data_dir), progress=False)
    before = sorted(p.name for p in run.rglob("*"))
    r = cli("train", "--out", run, "--resume", "--train.max_steps", "4", "--no-progress", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("mom: error: --resume:") and "has already done 6 steps" in lines[0]
    assert sorted(p.name for p in run.rglob("*")) == before
    with pytest.raises(ConfigError, match="has already done 6 steps"):
        train(None, tcfg(max_steps=5), out=run, resume=True, progress=False)


# ---------------------------------------------------------------------------------------------- torch elastic
def test_an_elastic_restart_continues_only_the_run_its_own_job_started(tmp_path, monkeypatch, data_dir):
    run = tmp_path / "run"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    train(mom_cfg(), tcfg(max_steps=4, ckpt_interval=2), out=run, data=str(data_dir), progress=False, stop_at=2)
    assert json.loads((run / "run.json").read_text())["elastic_run_id"] == "job-1"
    assert elastic_continuation(run, False, False) == (False, False, None)  # first attempt: the usual rules
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    resume, force, note = elastic_continuation(run, False, False)
    assert (resume, force) == (True, False) and "continuing" in note and "step 2" in note
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-2")  # another job's restart must not take this run over
    assert elastic_continuation(run, False, False) == (False, False, None)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    (run / "latest.json").unlink()
    import shutil

    shutil.rmtree(run / "checkpoints")  # killed before its first checkpoint: start over
    resume, force, note = elastic_continuation(run, False, False)
    assert (resume, force) == (False, True) and "starting" in note


def test_plots_are_redrawn_at_evaluations_at_most_every_so_often(tmp_path, data_dir):
    from mom.cli.train import PlotRefresher

    often, seldom = tmp_path / "often", tmp_path / "seldom"
    for run, every in ((often, 0.0), (seldom, 3600.0)):
        train(mom_cfg(), tcfg(max_steps=2, eval_interval=1), out=run, data=str(data_dir), progress=False,
              on_eval=PlotRefresher(run, every_s=every))
    assert (often / "loss.png").is_file() and (often / "routing.png").is_file()
    assert not (seldom / "loss.png").exists()  # (mom train draws them at the end in any case)
