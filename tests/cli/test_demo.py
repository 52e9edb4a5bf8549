"""``mom demo`` end to end at a toy size on a tiny corpus BPE: two seeds of three runs each, demo.json and a report
with the unigram yardstick, bits per byte, the pairing by seed, the MoM's routing health and generations from the
three models; the report rebuilt from demo.json; a second invocation reuses the finished stages; changed settings
and bad arguments are one error line. The verdict's rules are checked on synthetic results (no training)."""

import json
import re
import shutil

import pytest

from mom.analysis import demo_report
from mom.cli import demo_stages
from mom.cli.main import main
from mom.data.prepare import prepare
from mom.errors import MomError
from mom.runs import read_metrics
from tests.conftest import cli_error, write_text_corpus, write_tokens

SMALL = ["--phase1-steps", "4", "--phase2-steps", "2", "--batch-size", "2", "--seq-len", "16", "--eval-tokens", "64",
         "--gen-tokens", "4", "--model-overrides", "n_ctx=64", "d_model=32", "n_head=4", "router_hidden=16",
         "--no-progress"]


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory):
    corpus = write_text_corpus(tmp_path_factory.mktemp("corpus") / "docs")
    out = tmp_path_factory.mktemp("data") / "bpe400"
    prepare([corpus], out, val_fraction=0.2, progress=False, tokenizer="bpe:400")
    return out


def test_demo_two_seeds_report_and_reuse(bpe_data, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--data", str(bpe_data), "--seeds", "2", *SMALL]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed and "unigram yardstick:" in printed
    assert "No verdict from 2 seeds" in printed  # the verdict on the console: 2 seeds are below the 3 asked for
    for seed in (0, 1):
        for run, steps in (("phase1", 4), ("mom", 2), ("vanilla", 2)):
            d = out / f"seed-{seed}" / run
            assert max(r["step"] for r in read_metrics(d)) == steps, d
            assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
        # The vanilla continuation starts exactly where phase 1 ended; the seeds differ.
        p1 = [r for r in read_metrics(out / f"seed-{seed}" / "phase1") if r["type"] == "val"]
        van = [r for r in read_metrics(out / f"seed-{seed}" / "vanilla") if r["type"] == "val"]
        assert van[0]["val_loss"] == p1[-1]["val_loss"]
    doc = json.loads((out / "demo.json").read_text())
    assert [s["seed"] for s in doc["seeds"]] == [0, 1]
    assert doc["seeds"][0]["stages"]["phase1"]["val"] != doc["seeds"][1]["stages"]["phase1"]["val"]
    assert doc["seeds"][0]["stages"]["mom"]["tokens"] == doc["seeds"][0]["stages"]["vanilla"]["tokens"]

    report = (out / "report.md").read_text()
    uni, uni_bpb = demo_report.yardstick(doc)
    assert f"**{uni:.4f} nats per token = {uni_bpb:.3f} bits per byte**" in report
    assert "| bits per byte |" in report and "| below yardstick (nats) |" in report
    for s in doc["seeds"]:  # every model's row carries its final bits per byte
        for name in demo_stages.STAGES:
            assert f"| {s['stages'][name]['val'][-1]['val_bpb']:.3f} |" in report
    # Pairing by seed: one row per seed, the mean and the spread.
    for s, m, v in demo_report.pairs(doc):
        assert f"| {s} | {m:.4f} | {v:.4f} | {m - v:+.4f} |" in report
    assert "| mean |" in report and "| sd across seeds |" in report
    # Routing health of each seed's MoM, both halves, measured over the validation windows.
    section = report.split("## Routing health")[1].split("## Generations")[0]
    assert len(re.findall(r"^\| [01] \| (attention|FFN) \|", section, flags=re.M)) == 4
    assert doc["seeds"][0]["routing"]["tokens"] == 64 and 0 <= doc["seeds"][0]["routing"]["attn"]["same_path"] <= 1
    # Generations: greedy and sampled from all three models for every prompt.
    gens = report.split("## Generations")[1]
    for prompt in doc["generations"]["prompts"]:
        assert f"`{prompt}`" in gens
    for label in ("phase 1", "MoM", "vanilla cont."):
        for kind in ("greedy", "sampled"):
            assert len(re.findall(rf"^ *{re.escape(label)} +{kind}: \[", gens, flags=re.M)) == 3
    assert "![train and validation loss of every stage](loss.png)" in report and (out / "loss.png").is_file()
    assert len(re.findall(r"^mom train .*$", report, flags=re.M)) == 6 and "## Wall time and machine" in report
    assert "Where phase 2 starts" in report

    # The report comes from demo.json alone: rebuilt without the runs, it is the same.
    (out / "report.md").unlink()
    assert main(["demo", "--out", str(out), "--report-only"]) == 0
    assert (out / "report.md").read_text() == report
    capsys.readouterr()

    # Again: every stage is reused (resumed at its final step), nothing retrained.
    before = {p: p.read_text() for p in out.glob("seed-*/*/metrics.jsonl")}
    assert main(argv) == 0
    assert "already finished" in capsys.readouterr().out
    assert {p: p.read_text() for p in before} == before
    assert "resumed/reused" in (out / "report.md").read_text()

    # Different settings against existing runs: one clear error that names --force.
    changed = list(argv)
    changed[argv.index("--phase1-steps") + 1] = "5"
    err = cli_error(capsys, changed)
    assert "demo stage 'seed-0/phase1'" in err and "max_steps: 4 in the run, 5 now" in err and "--force" in err


def test_demo_one_seed_flop_matching(bpe_data, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--data", str(bpe_data), "--match", "flops", *SMALL]) == 0
    doc = json.loads((out / "demo.json").read_text())
    st = doc["seeds"][0]["stages"]
    # The vanilla continuation got more steps, so its training FLOPs approach the MoM's.
    assert st["vanilla"]["steps"] > st["mom"]["steps"] == 2
    report = (out / "report.md").read_text()
    assert "at matched training FLOPs" in report and "**This is one seed.**" in report
    assert "One seed" in demo_report.verdict(doc)


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be ≥ 1, got 0"),
    (["--phase1-steps", "0"], "--phase1-steps must be ≥ 1"),
    (["--eval-tokens", "-1"], "--eval-tokens must be ≥ 0"),
    (["--model-overrides", "n_ctx"], "--model-overrides takes FIELD=VALUE"),
])
def test_bad_arguments_are_one_error_line(tmp_path, capsys, argv, message):
    err = cli_error(capsys, ["demo", "--out", str(tmp_path / "d"), "--data", str(tmp_path / "none"), *argv])
    assert message in err
    assert not (tmp_path / "d").exists()


def test_report_only_needs_a_demo(tmp_path, capsys):
    err = cli_error(capsys, ["demo", "--out", str(tmp_path), "--report-only"])
    assert "demo.json: not found" in err


def test_the_demo_dataset_is_reused_when_valid_and_a_foreign_one_refused(bpe_data, tmp_path, monkeypatch):
    monkeypatch.setattr(demo_stages, "DEMO_TOKENIZER", "bpe:400")
    monkeypatch.setattr(demo_stages, "DEMO_DATA_DIR", bpe_data)
    # Not the built-in corpus: refused (the demo's data must be what the report says it is).
    with pytest.raises(MomError, match="not the built-in corpus alone.*--force.*--data"):
        demo_stages.ensure_data(None, force=False, progress=False)
    # The same files as if prepared from the built-in corpus: reused as they are.
    mine = tmp_path / "bpe"
    shutil.copytree(bpe_data, mine)
    meta = json.loads((mine / "meta.json").read_text())
    meta["sources"] = [{**src, "kind": "builtin"} for src in meta["sources"]]
    (mine / "meta.json").write_text(json.dumps(meta))
    monkeypatch.setattr(demo_stages, "DEMO_DATA_DIR", mine)
    assert demo_stages.ensure_data(None, force=False, progress=False) == (mine, False)
    assert demo_stages.ensure_data(str(tmp_path), force=False, progress=False) == (tmp_path, False)  # --data wins
    # Truncated token files, or a dataset of another tokenizer: refused.
    (mine / "val.bin").write_bytes((mine / "val.bin").read_bytes()[:-2])
    with pytest.raises(MomError, match="is not the demo's dataset .*meta.json says"):
        demo_stages.ensure_data(None, force=False, progress=False)
    monkeypatch.setattr(demo_stages, "DEMO_DATA_DIR", write_tokens(tmp_path / "foreign", n_train=100, n_val=50))
    with pytest.raises(MomError, match="is not the demo's dataset .no meta.json"):
        demo_stages.ensure_data(None, force=False, progress=False)


# ---------------------------------------------------------------------------------------------- the verdict's rules
def _doc(pairs_, match="tokens"):
    def run(loss, flops=1e12):
        return {"val": [{"val_loss": loss + 0.5}, {"val_loss": loss}], "train_flops": flops, "assembly_steps": 6,
                "top_k": 2}

    return {"settings": {"match": match},
            "seeds": [{"seed": i, "stages": {"phase1": run(m + 0.3), "mom": run(m, 4e12), "vanilla": run(v)}}
                      for i, (m, v) in enumerate(pairs_)]}


@pytest.mark.parametrize("pairs_, expect, never", [
    ([(5.10, 5.12)], ["One seed", "-0.0200", "cannot be read", "tie"], ["MoM ends lower"]),
    ([(5.00, 5.12)], ["One seed", "the MoM ends lower", "but it is one seed", "--seeds 3"], []),
    ([(5.20, 5.12)], ["the vanilla continuation ends lower"], []),
    ([(5.10, 5.12), (5.11, 5.12)], ["No verdict from 2 seeds"], ["ends lower"]),
    ([(5.10, 5.12), (5.11, 5.12), (5.09, 5.12)], ["The MoM ends lower", "3 of 3 seeds"], []),
    ([(5.10, 5.12), (5.14, 5.12), (5.11, 5.12)], ["No clear winner", "2 of 3 seeds"], ["ends lower"]),
])
def test_verdict_reads_no_difference_below_the_seed_noise(pairs_, expect, never):
    text = demo_report.verdict(_doc(pairs_))
    for e in expect:
        assert e in text, (e, text)
    for n in never:
        assert n not in text, (n, text)
    assert "4.00× the vanilla continuation's training FLOPs" in text
