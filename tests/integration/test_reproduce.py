"""scripts/reproduce: the smoke setting end to end, resuming, and the report's numbers against its JSON."""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.reproduce.experiments import SETTINGS, experiment_runs, needed_runs
from scripts.reproduce.report import MAIN, build_report, verdict

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    # One thread: the smoke models are tiny and the test machine is shared.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "scripts.reproduce", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def _table(md: str, heading: str) -> list[list[str]]:
    """Body rows (cells) of the first table after ``heading``."""
    lines = md[md.index(heading):].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| ---") or ln.startswith("| :--")) + 1
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


def _small_dataset(d: Path) -> Path:
    """A nanoGPT-layout dataset of real English (this repository's docs, GPT-2 tokens): the smoke setting needs a
    few thousand tokens, and the test must not depend on whether data/builtin was prepared on this machine."""
    import numpy as np

    from mom.data.tokenizer import tokenizer

    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted([REPO / "README.md",
                                                                     *(REPO / "docs").glob("*.md")]))
    ids = np.asarray(tokenizer().encode_ordinary(text), dtype=np.uint16)
    cut = int(len(ids) * 0.9)
    d.mkdir(parents=True)
    ids[:cut].tofile(d / "train.bin")
    ids[cut:].tofile(d / "val.bin")
    return d


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reproduce")
    data = _small_dataset(tmp / "data")
    js, md = tmp / "smoke.json", tmp / "smoke.md"
    p = _run("--setting", "smoke", "--out", str(tmp / "runs"), "--json", str(js), "--report", str(md),
             "--data", str(data))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return tmp, js, md, p.stdout


def test_smoke_json_holds_every_run(smoke):
    tmp, js, md, _ = smoke
    res = json.loads(js.read_text())
    setting = SETTINGS["smoke"]
    runs, exp = experiment_runs(setting)
    want = needed_runs(runs, exp, list(setting.experiments))
    got = {(r["seed"], r["name"]) for r in res["runs"]}
    assert got == {(s, n) for s in setting.seeds for n in want}
    for r in res["runs"]:
        assert math.isfinite(r["val_loss"]) and r["fingerprint"] == runs[r["name"]].fingerprint(setting, runs)
        assert r["fwd_flops_per_token"] > 0 and r["fwd_peak_bytes"] > r["param_bytes"] > 0
        if runs[r["name"]].proxies:
            assert set(r["proxies"]) == {"rt-polarity", "bible-para", "news-xsum"}
    by = {r["name"]: r for r in res["runs"]}
    # the pruned model really lost the requested modules, and the MoE started as exactly the vanilla function
    assert (by["prune-a50-f75"]["config"]["n_attn"], by["prune-a50-f75"]["config"]["n_ffn"]) == (2, 3)
    assert by["moe"]["val_loss_start"] == pytest.approx(by["phase1"]["val_loss"], abs=1e-5)
    assert res["invocations"][-1]["wall_seconds"] > 0


def test_smoke_report_tables_match_json(smoke):
    _, js, md, _ = smoke
    res, text = json.loads(js.read_text()), md.read_text()
    main = _table(text, "## 1. Main comparison")
    main_names = [n for n in MAIN if any(r["name"] == n for r in res["runs"])]
    assert len(main) == len(main_names)
    by = {r["name"]: r for r in res["runs"]}
    for row, name in zip(main, main_names):
        assert row[0] == by[name]["label"]
        assert row[4] == f"{by[name]['val_loss']:.4f}"  # one seed: the value itself
    appendix = _table(text, "## Appendix")
    assert len(appendix) == len(res["runs"])
    for row in appendix:
        rec = next(r for r in res["runs"] if r["name"] == row[0] and str(r["seed"]) == row[1])
        assert row[5] == f"{rec['val_loss']:.4f}"
    for heading in ("## 2. FLOPs and memory", "## 5. Two-phase", "## 6. Module pruning"):
        assert heading in text


def test_report_only_regenerates_identical_markdown(smoke):
    tmp, js, md, _ = smoke
    again = tmp / "again.md"
    p = _run("--setting", "smoke", "--json", str(js), "--report", str(again), "--report-only")
    assert p.returncode == 0, p.stderr
    assert again.read_text() == md.read_text()


def test_rerun_skips_finished_runs(smoke):
    tmp, js, md, _ = smoke
    before = json.loads(js.read_text())["runs"]
    p = _run("--setting", "smoke", "--out", str(tmp / "runs"), "--json", str(js), "--report", str(tmp / "r.md"),
             "--data", str(tmp / "data"), "--only", "main")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "done earlier, skipped" in p.stdout and "..." not in p.stdout.replace("done earlier", "")
    assert json.loads(js.read_text())["runs"] == before


def test_mean_sd_and_verdicts_from_several_seeds(smoke):
    """With three seeds (records copied from the smoke run, values changed) every cell is mean ± sample sd of
    the JSON values, and the verdict sentence follows the paired differences."""
    _, js, _, _ = smoke
    res = json.loads(js.read_text())
    recs = []
    for seed, shift in ((0, 0.0), (1, 0.1), (2, 0.3)):
        for r in res["runs"]:
            r = copy.deepcopy(r)
            r["seed"] = seed
            r["val_loss"] += shift
            if r["name"] in ("mom-p", "vanilla-cont"):  # known paired differences: 0.05, 0.10, 0.15
                r["val_loss"] = 5.0 + shift + (0.05 * (seed + 1) if r["name"] == "mom-p" else 0.0)
            recs.append(r)
    res["runs"] = recs
    text = build_report(res)
    main = _table(text, "## 1. Main comparison")
    vals = [r["val_loss"] for r in recs if r["name"] == "mom-p"]
    row = next(r for r in main if r[0] == recs[[x["name"] for x in recs].index("mom-p")]["label"])
    assert row[4] == f"{statistics.fmean(vals):.4f} ± {statistics.stdev(vals):.4f}"
    assert row[-1] == "3"
    # MoM_P − vanilla = 0.05, 0.10, 0.15 nats: higher, and clearly so (mean 0.10, sd 0.05, 2·se ≈ 0.058)
    assert "MoM_P's val loss is higher than vanilla's by 0.1000 ± 0.0500 nats" in text
    assert "**does not reproduce at this scale** (the opposite holds)" in text
    assert len(_table(text, "## Appendix")) == len(recs)


def test_verdict_wording():
    assert "one seed, no verdict" in verdict([0.1], "lower", "val loss", "A", "B")
    assert "reproduces at this scale" in verdict([-0.1, -0.12, -0.11], "lower", "val loss", "A", "B")
    assert "within the seed noise" in verdict([-0.1, 0.05, -0.2], "lower", "val loss", "A", "B")
    assert "does not reproduce" in verdict([0.1, 0.12, 0.11], "lower", "val loss", "A", "B")


def test_every_setting_plans_valid_runs():
    """The gpu setting is never run in the tests, but its configs are built and validated here."""
    for name, setting in SETTINGS.items():
        runs, exp = experiment_runs(setting)
        order = needed_runs(runs, exp, list(setting.experiments))
        assert order.index("phase1") < order.index("mom-p") < order.index("prune-a50-f75")
        for n in order:
            spec = runs[n]
            if spec.cfg is not None and spec.init == "phase1":
                # every phase-2 layout decomposes exactly the phase-1 vanilla model
                assert spec.cfg.gpt2_layers == runs["phase1"].cfg.bottom, (name, n)
