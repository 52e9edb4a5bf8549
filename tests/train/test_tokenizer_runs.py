"""A run on a corpus BPE: the model's vocabulary comes from the data, the tokenizer travels with the run, every
checkpoint and the final model (listed in their manifests), validation rows carry bits per byte and the unigram
yardstick of exactly the windows scored, generation decodes with the model's own tokenizer, and vocabulary or
tokenizer mismatches between data, model and --init-from are one error line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mom.cli.generate import gibberish_note
from mom.cli.main import main
from mom.config.model import MoMConfig
from mom.config.train import TrainConfig
from mom.data.prepare import prepare
from mom.data.tokenizer import CorpusBPE, load_tokenizer
from mom.errors import ConfigError
from mom.fileio import read_json
from mom.inference.engine import Engine, SamplingParams
from mom.runs import read_metrics
from mom.train.loop import train
from tests.conftest import write_text_corpus

N = 600
T, EVAL_TOKENS = 16, 160  # 10 validation windows


def cfg(**kw) -> MoMConfig:  # vocab_size left at GPT-2's: the data sets it
    return MoMConfig(**{**dict(name="t-bpe", n_ctx=32, d_model=32, n_head=4, bottom=2, top=0), **kw})


def tcfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(max_steps=4, batch_size=4, seq_len=T, lr=3e-3, warmup_steps=1, eval_interval=2,
                                 eval_tokens=EVAL_TOKENS, log_interval=1, ckpt_interval=2, keep_checkpoints=2, seed=7),
                          **kw})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_text_corpus(tmp_path_factory.mktemp("corpus") / "docs")


@pytest.fixture(scope="module")
def bpe_data(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / f"bpe{N}"
    prepare([corpus], out, val_fraction=0.2, progress=False, tokenizer=f"bpe:{N}")
    return out


@pytest.fixture(scope="module")
def run(bpe_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "bpe-run"
    result = train(cfg(), tcfg(), out=out, data=str(bpe_data), progress=False, vocab_from_data=True)
    assert result.finished and result.val_bpb is not None and result.unigram_loss is not None
    return out


def test_vocabulary_comes_from_the_data_and_the_tokenizer_travels_with_the_model(run, bpe_data):
    want = (bpe_data / "tokenizer.json").read_bytes()
    assert MoMConfig.load(run / "config.json").vocab_size == N
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-00000002", "step-00000004"]
    for d in (run, *ckpts):
        assert (d / "tokenizer.json").read_bytes() == want
        assert "tokenizer.json" in read_json(d / "manifest.json", "manifest")["files"]
        assert load_tokenizer(d).sha256 == json.loads((bpe_data / "meta.json").read_text())["tokenizer_sha256"]
    info = read_json(run / "run.json", "run info")
    assert info["tokenizer"] == f"bpe:{N}" and info["vocab_size"] == N
    assert info["tokenizer_sha256"] == load_tokenizer(bpe_data).sha256
    assert info["unigram_loss"] > 0 and info["unigram_bpb"] > 0 and info["val_targets"] == EVAL_TOKENS


def test_validation_rows_carry_bits_per_byte_and_the_unigram_yardstick_of_the_scored_windows(run, bpe_data):
    tok = load_tokenizer(bpe_data)
    train_ids = np.fromfile(bpe_data / "train.bin", dtype=np.uint16)
    val_ids = np.fromfile(bpe_data / "val.bin", dtype=np.uint16).astype(np.int64)
    # the windows evaluate() scores: consecutive T-token windows from the start; targets are the next tokens
    targets = np.concatenate([val_ids[s + 1:s + T + 1] for s in range(0, EVAL_TOKENS, T)])
    counts = np.bincount(train_ids, minlength=N)
    p = (counts + 1) / (counts.sum() + N)  # add-one over the vocabulary
    nll = -np.log(p[targets])
    n_bytes = sum(len(tok.token_bytes(int(t))) for t in targets)
    rows = [r for r in read_metrics(run) if r["type"] == "val"]
    assert [r["step"] for r in rows] == [0, 2, 4]
    for r in rows:
        assert r["unigram_loss"] == pytest.approx(nll.mean(), rel=1e-12)
        assert r["unigram_bpb"] == pytest.approx(nll.sum() / math.log(2) / n_bytes, rel=1e-12)
        assert r["val_bpb"] == pytest.approx(r["val_loss"] * len(targets) / math.log(2) / n_bytes, rel=1e-12)


def test_generate_decodes_with_the_models_tokenizer(run, bpe_data, capsys):
    from mom.runs import load_model

    model = load_model(run)
    tok = model.tokenizer
    assert isinstance(tok, CorpusBPE) and tok.sha256 == load_tokenizer(bpe_data).sha256
    prompt = "The river année"
    [g] = Engine(model).generate([prompt], SamplingParams(max_new_tokens=6, temperature=1.0, seed=0))
    assert g.prompt_tokens == tok.encode_ordinary(prompt)
    assert g.text == tok.decode([t for t in g.tokens if t != tok.eot_token])
    assert main(["generate", "--ckpt", str(run), "--prompt", prompt, "--max-new-tokens", "6", "--seed", "0",
                 "--temperature", "1.0"]) == 0
    out, err = capsys.readouterr()
    assert out == prompt + g.text + "\n"
    # 4 steps learn nothing beyond token frequencies: say so (once, on stderr)
    assert err.count("mom: note: this model is") == 1 and "knowing only token frequencies" in err
    assert "expect gibberish" in gibberish_note(str(run / "checkpoints" / "step-00000002"))


def test_the_gibberish_note_reads_the_runs_last_validation(run, tmp_path):
    import shutil

    other = tmp_path / "run"
    shutil.copytree(run, other)
    rows = read_metrics(other)
    last = next(r for r in reversed(rows) if r["type"] == "val")
    last["val_loss"] = last["unigram_loss"] - 0.6  # clearly below the yardstick
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert gibberish_note(str(other)) is None
    last["val_loss"] = last["unigram_loss"] - 0.3
    (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "within 0.30 nats of knowing only token frequencies" in gibberish_note(str(other))
    (other / "run.json").unlink()  # a model directory of its own: nothing to compare with
    assert gibberish_note(str(other)) is None


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mom: error: "), err
    return err[0]


def _train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", "tiny", "--data", str(data), "--out", str(out), "--no-progress",
            "--model.n_ctx", "32", "--model.d_model", "32", "--model.n_head", "4", "--train.max_steps", "2",
            "--train.batch_size", "2", "--train.seq_len", "16", "--train.eval_tokens", "32", *extra]


def test_vocabulary_and_tokenizer_mismatches_are_one_error_line(run, bpe_data, corpus, tmp_path, capsys):
    # a model vocabulary smaller than the data's tokenizer
    msg = _error(capsys, _train_argv(bpe_data, tmp_path / "a", "--model.vocab_size", "300"))
    assert f"its tokenizer bpe:{N} has {N} tokens but the model's vocab_size is 300" in msg
    assert not (tmp_path / "a").exists()
    # --init-from a model trained with another tokenizer (another corpus BPE)
    other = tmp_path / "bpe500"
    prepare([corpus], other, val_fraction=0.2, progress=False, tokenizer="bpe:500")
    msg = _error(capsys, _train_argv(other, tmp_path / "b", "--init-from", str(run)))
    assert f"--init-from {run}: its tokenizer is bpe:{N}" in msg and "but the data's is bpe:500" in msg
    assert not (tmp_path / "b").exists()
    # --init-from a model of the data's tokenizer whose embedding is padded to another size
    assert main(_train_argv(bpe_data, tmp_path / "padded", "--model.vocab_size", "640")) == 0
    capsys.readouterr()
    msg = _error(capsys, _train_argv(bpe_data, tmp_path / "c", "--init-from", str(tmp_path / "padded")))
    assert f"its vocab_size is 640 but the model's is {N} (the data's tokenizer bpe:{N} has {N} tokens)" in msg
    # GPT-2 data for a model that carries a corpus BPE, and a resumed run on data of another tokenizer
    gpt2 = tmp_path / "gpt2"
    prepare([corpus], gpt2, val_fraction=0.2, progress=False)
    msg = _error(capsys, _train_argv(gpt2, tmp_path / "d", "--init-from", str(run)))
    assert "its tokenizer is bpe:600" in msg and "the data's is gpt2" in msg
    msg = _error(capsys, ["eval", "ppl", "--ckpt", str(run), "--data", str(gpt2)])
    assert f"{gpt2}: tokenised with gpt2" in msg and f"the model reads bpe:{N}" in msg


def test_resuming_on_data_of_another_tokenizer_is_refused(run, corpus, tmp_path):
    import shutil

    from mom.errors import DataError

    other = tmp_path / "bpe600b"
    write_text_corpus(tmp_path / "docs", seed=1)
    prepare([tmp_path / "docs"], other, val_fraction=0.2, progress=False, tokenizer=f"bpe:{N}")
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with pytest.raises(DataError, match=f"--resume: {other} uses the tokenizer bpe:{N}"):
        train(None, None, out=copy, data=str(other), resume=True, progress=False)


def test_the_python_api_keeps_the_configs_vocabulary_and_checks_it(bpe_data, tmp_path):
    with pytest.raises(ConfigError, match=f"has {N} tokens but the model's vocab_size is 97"):
        train(cfg(vocab_size=97), tcfg(), out=tmp_path / "r", data=str(bpe_data), progress=False)


def test_a_model_directory_carries_its_tokenizer_for_every_command(bpe_data, tmp_path, capsys):
    from mom.errors import CheckpointError
    from mom.model.model import MoM
    from mom.runs import load_model
    from tests.conftest import tiny_config

    tok = load_tokenizer(bpe_data)
    d = tmp_path / "m"
    MoM(tiny_config(vocab_size=N, n_ctx=64)).save_pretrained(d, tokenizer=tok)
    assert load_model(d).tokenizer.sha256 == tok.sha256
    text = "The old river and the city année 1921"
    assert main(["routes", "--ckpt", str(d), "--text", text, "--out", str(tmp_path / "r.json")]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["source"] == f"--text ({len(tok.encode_ordinary(text))} tokens)"
    (d / "tokenizer.json").write_bytes((d / "tokenizer.json").read_bytes() + b" ")
    with pytest.raises(CheckpointError, match="tokenizer.json"):  # listed in the manifest: a change is caught
        load_model(d)


def test_resume_with_the_preset_config_takes_the_runs_vocabulary(run, bpe_data, tmp_path):
    """`mom train --config X --resume` on a run whose vocab_size came from the data: the preset's vocab_size
    (GPT-2's) is the run's, as it was when the run started, not a config change."""
    import shutil

    out = tmp_path / "extend"
    shutil.copytree(run, out)
    result = train(cfg(), tcfg().replace(max_steps=6), out=out, data=str(bpe_data), resume=True, progress=False,
                   vocab_from_data=True)
    assert result.finished and MoMConfig.load(out / "config.json").vocab_size == N
