"""scripts/reproduce: the plans of every setting (claims, seeds, one phase 1 per seed), the smoke setting end to end,
resuming, the gpu plan dry-run with tiny shapes, and the report's claims and tables against its JSON."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.reproduce import runner
from scripts.reproduce.experiments import CLAIMS, EXPERIMENTS, SETTINGS, experiment_runs, needed_runs
from scripts.reproduce.report import build_report, verdict

REPO = Path(__file__).resolve().parents[2]
TINY = dict(d_model=32, n_head=2, n_ctx=64, router_hidden=16)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the smoke models are tiny and the test machine is shared
    return subprocess.run([sys.executable, "-m", "scripts.reproduce", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


def _table(md: str, heading: str) -> list[list[str]]:
    """Body rows (cells) of the first table after ``heading``."""
    lines = md[md.index(heading):].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| ---")) + 1
    rows = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


def _docs_text(d: Path) -> Path:
    d.mkdir(parents=True)
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")]))
    (d / "docs.txt").write_text(text, encoding="utf-8")
    return d / "docs.txt"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke setting on a 512-token BPE of this repository's docs (real English; no dependence on data/)."""
    from mom.data.prepare import prepare

    tmp = tmp_path_factory.mktemp("reproduce")
    prepare([str(_docs_text(tmp / "text"))], tmp / "data", progress=False, tokenizer="bpe:512", val_fraction=0.1)
    js, md = tmp / "smoke.json", tmp / "smoke.md"
    p = _run("--setting", "smoke", "--out", str(tmp / "runs"), "--json", str(js), "--report", str(md),
             "--data", str(tmp / "data"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return tmp, js, md, p.stdout


# ================================================================================================ plans
@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_plan_covers_every_claim_with_three_seeds_and_one_phase1_per_seed(name):
    setting = SETTINGS[name]
    assert set(setting.experiments) == set(EXPERIMENTS) and len(set(setting.seeds)) >= 3
    runs, exp = experiment_runs(setting)
    order = needed_runs(runs, exp, list(setting.experiments))
    for c in CLAIMS:
        assert c.a in exp[c.experiment] and c.b in exp[c.experiment], c.id
    # one phase-1 pretrain per seed, shared: every run that starts from another run of its seed ends at phase1,
    # and every phase-2 layout decomposes exactly the phase-1 vanilla model
    scratch = [n for n in order if not runs[n].deps()]
    assert scratch == ["phase1", "universal", "mom-p-scratch"]
    for n in order:
        chain, spec = [n], runs[n]
        while spec.deps():
            chain.append(spec.deps()[0])
            spec = runs[chain[-1]]
        assert chain[-1] in scratch
        if runs[n].init == "phase1" and runs[n].cfg is not None:
            assert runs[n].cfg.gpt2_layers == runs["phase1"].cfg.bottom, n
    assert sum(1 for n in order if runs[n].init and "phase1" in runs[n].init) >= 15
    # equal FLOPs: the FLOP-matched vanilla gets MoM_P's training FLOPs (± one step)
    from mom.model.flops import count

    def train_flops(n):
        return count(runs[n].cfg, setting.seq_len).train_flops_per_token * runs[n].steps

    assert abs(train_flops("vanilla-flops") / train_flops("mom-p") - 1) < 1 / runs["vanilla-flops"].steps + 1e-9


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_every_run_config_builds(name):
    import torch

    from mom.model.model import MoM

    setting = SETTINGS[name]
    runs, exp = experiment_runs(setting)
    for n in needed_runs(runs, exp, list(setting.experiments)):
        cfg = runs[n].cfg
        if cfg is None:
            continue
        cfg.validate()
        assert cfg.vocab_size >= (4096 if setting.tokenizer == "bpe:4096" else 50257)
        with torch.device("meta"):
            MoM(cfg)
    if name == "gpu":
        assert 512 <= runs["phase1"].cfg.d_model <= 768
        # >= 20M tokens in every phase-2 arm of the main comparison
        assert min(runs[n].steps for n in exp["main"] if n != "phase1") * setting.batch * setting.seq_len >= 20e6


def test_gpu_plan_dry_run_with_tiny_shapes(smoke, tmp_path):
    """The gpu setting's whole plan (its layouts, steps per run, pruning, upcycling, proxies, memory) end to end at
    2 steps a run with d = 32 models on the smoke's 512-token data: what `--dry-run` does at full size."""
    import dataclasses

    data = smoke[0] / "data"
    setting = dataclasses.replace(runner.dry_run_setting(SETTINGS["gpu"], {**TINY, "vocab_size": 512}),
                                  tokenizer="bpe:512", paper_scale=False)  # GPT-2-large at random: minutes
    runner.check_data(data, setting, print)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runner's runs (28 tiny runs; more threads only contend on a shared machine)
    try:
        res = runner.reproduce(setting, tmp_path / "runs", tmp_path / "gpu.json", data, list(setting.experiments),
                               lambda m: None)
    finally:
        torch.set_num_threads(threads)
    runs, exp = experiment_runs(setting)
    assert {r["name"] for r in res["runs"]} == set(needed_runs(runs, exp, list(setting.experiments)))
    for r in res["runs"]:
        assert r["steps"] == runs[r["name"]].steps and math.isfinite(r["val_loss"])
        assert (r["config"]["d_model"], r["config"]["n_ctx"], r["config"]["vocab_size"]) == (32, 64, 512)
    assert res["runs"][0]["train_config"]["compile"] is False and SETTINGS["gpu"].compile


def test_data_of_another_tokenizer_is_refused(smoke):
    from mom.errors import DataError

    tmp, *_ = smoke
    with pytest.raises(DataError, match="needs bpe:4096"):
        runner.check_data(tmp / "data", SETTINGS["cpu"], print)


# ================================================================================================ smoke, end to end
def test_smoke_json_holds_every_run_with_its_scale_and_provenance(smoke):
    tmp, js, md, _ = smoke
    res = json.loads(js.read_text())
    setting = SETTINGS["smoke"]
    runs, exp = experiment_runs(setting)
    want = needed_runs(runs, exp, list(setting.experiments))
    assert {(r["seed"], r["name"]) for r in res["runs"]} == {(s, n) for s in setting.seeds for n in want}
    for r in res["runs"]:
        assert math.isfinite(r["val_loss"]) and r["fingerprint"] == runs[r["name"]].fingerprint(setting, runs)
        assert r["unigram_loss"] > 0 and r["val_bpb"] > 0 and r["commit"] and r["config"]["vocab_size"] == 512
        assert r["fwd_flops_per_token"] > 0
        assert ("memory" in r) == runs[r["name"]].memory and ("proxies" in r) == runs[r["name"]].proxies
        if r["kind"] == "train":
            assert r["train_config"]["max_steps"] == runs[r["name"]].steps == r["steps"]
    by = {r["name"]: r for r in res["runs"]}
    # bpb is the loss on the bytes' scale: the same factor for every model (same windows)
    ratio = by["phase1"]["val_bpb"] / by["phase1"]["val_loss"]
    assert by["mom-p"]["val_bpb"] / by["mom-p"]["val_loss"] == pytest.approx(ratio)
    m = by["mom-e"]["memory"]
    assert m["train_peak_bytes"] > m["forward_peak_bytes"] > m["param_bytes"] > 0 and m["cache_bytes"] > 0
    assert (by["prune-a50-f75"]["config"]["n_attn"], by["prune-a50-f75"]["config"]["n_ffn"]) == (2, 3)
    assert (by["pools-a50-f75"]["config"]["n_attn"], by["pools-a50-f75"]["config"]["n_ffn"]) == (2, 3)
    assert set(res["proxy_baselines"]) >= {"rt-polarity", "news-xsum"}


def test_smoke_report_claims_and_tables_match_json(smoke):
    _, js, md, _ = smoke
    res, text = json.loads(js.read_text()), md.read_text()
    claims = _table(text, "## Claims")
    assert len(claims) == len(CLAIMS)
    for row, c in zip(claims, CLAIMS):
        assert row[0].startswith(c.text) and row[2] == c.paper
        assert row[4] == "not run"  # the gpu column
        assert "smoke: one seed: not read" in row[5] or "smoke: not read" in row[5]
    by = {r["name"]: r for r in res["runs"]}
    models = _table(text, "## 1. Models")
    row = next(r for r in models if r[0] == by["mom-p"]["label"])
    assert row[7] == f"{by['mom-p']['val_loss']:.4f}" and row[8] == f"{by['mom-p']['val_bpb']:.4f}"
    assert row[9] == f"{by['mom-p']['unigram_loss']:.3f} / {by['mom-p']['unigram_bpb']:.3f}"
    assert len(_table(text, "## Appendix")) == len(res["runs"])
    for heading in ("## 2. FLOPs and memory", "## 3. K × H grid", "## 4. Chunking", "## 5. Pruning"):
        assert heading in text


def test_report_only_regenerates_identical_markdown(smoke):
    tmp, js, md, _ = smoke
    again = tmp / "again.md"
    p = _run("--setting", "smoke", "--json", str(js), "--report", str(again), "--report-only")
    assert p.returncode == 0, p.stderr
    assert again.read_text() == md.read_text()


def test_rerun_skips_finished_runs_and_resumes_an_interrupted_one(smoke):
    from mom.train.loop import train

    tmp, js, md, _ = smoke
    res = json.loads(js.read_text())
    before = {(r["seed"], r["name"]): r for r in res["runs"]}
    # a finished run keeps its model, not its resume checkpoints
    assert (tmp / "runs" / "seed0" / "mom-p" / "model.safetensors").is_file()
    assert not (tmp / "runs" / "seed0" / "mom-p" / "checkpoints").exists()
    # mom-p-scratch "interrupted" after 2 of its 6 steps: its record gone, its directory as a killed run leaves it
    setting = SETTINGS["smoke"]
    runs, _ = experiment_runs(setting)
    spec, out = runs["mom-p-scratch"], tmp / "runs" / "seed0" / "mom-p-scratch"
    res["runs"] = [r for r in res["runs"] if r["name"] != "mom-p-scratch"]
    js.write_text(json.dumps(res))
    shutil.rmtree(out)
    out.mkdir()
    (out / runner.FINGERPRINT_FILE).write_text(spec.fingerprint(setting, runs) + "\n")
    train(spec.cfg, runner.train_config(setting, spec, 0), out=out, data=str(tmp / "data"), force=True,
          progress=False, stop_at=2)
    assert not (out / "model.safetensors").exists()
    p = _run("--setting", "smoke", "--out", str(tmp / "runs"), "--json", str(js), "--report", str(tmp / "r.md"),
             "--data", str(tmp / "data"), "--only", "two-phase")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "4 of 5 runs done earlier; 1 to run" in p.stdout
    after = {(r["seed"], r["name"]): r for r in json.loads(js.read_text())["runs"]}
    rec = after[(0, "mom-p-scratch")]
    assert rec["resumed"] and rec["steps"] == spec.steps == before[(0, "mom-p-scratch")]["steps"]
    # resuming is exact: the same final loss as the uninterrupted run
    assert rec["val_loss"] == pytest.approx(before[(0, "mom-p-scratch")]["val_loss"], abs=1e-6)
    assert {k: v for k, v in after.items() if k[1] != "mom-p-scratch"} == \
        {k: v for k, v in before.items() if k[1] != "mom-p-scratch"}


# ================================================================================================ verdicts
def test_verdict_wording():
    assert verdict([0.1], "lower") == "one seed: not read"
    assert verdict([-0.1, -0.12, -0.11], "lower").startswith("**reproduces**")
    assert "within the seed noise" in verdict([-0.1, 0.05, -0.2], "lower")
    assert verdict([0.1, 0.12, 0.11], "lower").startswith("**does not reproduce**")
    assert verdict([0.01, 0.012, 0.011], "match", 0.05).startswith("**reproduces**")
    assert verdict([0.2, 0.21, 0.22], "match", 0.05).startswith("**does not reproduce**")


def test_claims_read_only_in_the_learning_regime(smoke):
    """Three seeds (the smoke records, values set): MoM_P 0.1 nats below vanilla on every seed reproduces when
    vanilla is 2 nats below the yardstick, and is not read when it is 1 nat below; rt-polarity is not read when
    vanilla is no better than the constant predictor."""
    _, js, _, _ = smoke
    res = json.loads(js.read_text())
    recs = []
    for seed, noise in ((0, 0.0), (1, 0.01), (2, -0.01)):
        for r in res["runs"]:
            r = copy.deepcopy(r)
            r["seed"], r["unigram_loss"] = seed, 7.0
            if r["name"] in ("mom-p", "vanilla-cont"):
                r["val_loss"] = 5.0 - (0.1 + noise if r["name"] == "mom-p" else 0.0)
                r["proxies"]["rt-polarity"]["accuracy"] = res["proxy_baselines"]["rt-polarity"]["constant_accuracy"]
            recs.append(r)
    res["runs"] = recs
    row = next(r for r in _table(build_report(res), "## Claims") if r[0].startswith(CLAIMS[0].text))
    assert row[3].startswith("-0.1000 ± 0.0100 nats (3 seeds)") and "smoke: **reproduces**" in row[5]
    glue = next(r for r in _table(build_report(res), "## Claims") if "rt-polarity" in r[0])
    assert "not read: vanilla" in glue[5] and "constant predictor" in glue[5]
    for r in recs:
        r["unigram_loss"] = 6.0
    row = next(r for r in _table(build_report(res), "## Claims") if r[0].startswith(CLAIMS[0].text))
    assert "not read: vanilla's loss − the unigram yardstick = -1.00 nats over seeds (needs ≤ -1.5)" in row[5]


def test_time_layouts_times_every_distinct_layout(smoke, tmp_path):
    tmp, *_ = smoke
    small = runner.dry_run_setting(SETTINGS["smoke"])
    out = runner.time_layouts(small, tmp / "data", 2, lambda m: None, ["main", "baselines"])
    assert set(out) == {"phase1", "mom-p", "mom-e", "layerskip", "mod", "moe", "universal"}  # vanilla-cont: = phase1
    assert all(v["tokens_per_s"] > 0 and v["tokens"] == 2 * small.batch * small.seq_len for v in out.values())
    # the sizing: every run of main + baselines, seeds × steps × tokens a step / its layout's speed
    runs, exp = experiment_runs(small)
    want = sum(runs[n].steps * small.batch * small.seq_len / out["phase1" if n.startswith("vanilla") else n]["tokens_per_s"]
               for n in needed_runs(runs, exp, ["main", "baselines"]))
    assert runner.training_seconds(small, runs, out, ["main", "baselines"]) == pytest.approx(want * len(small.seeds))
    shutil.rmtree(tmp_path, ignore_errors=True)
