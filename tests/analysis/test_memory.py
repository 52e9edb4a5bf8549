"""Measured memory: the tensor tracker, saved activations, a training step's parts, `mom memory`."""

import json

import pytest
import torch
from torch import nn

from mom.analysis.memory import LiveTensorTracker, measure_memory, random_batch, saved_activations
from mom.cli.main import main
from mom.model.model import MoM
from tests.conftest import tiny_config

CPU = torch.device("cpu")


def test_tracker_counts_new_storages_once_and_releases_them():
    with LiveTensorTracker() as tracker:
        a = torch.empty(1000)  # 4000 bytes
        view = a.view(10, 100)  # a view: no new memory
        c = torch.empty(500)  # 2000
        a.add_(1)  # in place: no new memory
        del a, view  # freed: 4000 back
        d = c * 2  # 2000
    assert (tracker.peak, tracker.current) == (6000, 4000)
    del c, d
    assert tracker.current == 0


def test_saved_activations_exclude_parameters():
    lin = nn.Linear(8, 4, bias=False)
    x = torch.randn(3, 8)
    nbytes, loss = saved_activations(lin, lambda: lin(x).exp().sum())
    assert nbytes == 3 * 8 * 4 + 3 * 4 * 4  # mm saves its input x; exp saves its output; the weight is excluded
    loss.backward()


@pytest.mark.parametrize("fields", [dict(), dict(chunks=0, bottom=3, top=0), dict(selection="expert")])
def test_measured_parts_are_exact_and_deterministic(fields):
    cfg = tiny_config(**fields)
    model = MoM(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    idx = random_batch(cfg.vocab_size, 2, 16, CPU)
    r = measure_memory(model, idx)
    n, tensors = model.num_params(), len(list(model.parameters()))
    assert r.method == "tensor-tracker" and r.param_bytes == 4 * n  # fp32
    assert r.grad_bytes == 4 * n
    assert r.optimizer_bytes == 8 * n + 4 * tensors  # AdamW: exp_avg, exp_avg_sq, and a float32 step per tensor
    assert r.forward_activation_bytes > 0 and r.saved_activation_bytes > 0
    assert r.forward_peak_bytes > r.param_bytes
    assert r.train_peak_bytes > r.param_bytes + r.grad_bytes + r.optimizer_bytes
    assert measure_memory(model, idx) == r  # deterministic
    # measuring leaves the model as it was: weights (AdamW ran with lr = 0) and buffers (expert thresholds)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and model.training


def test_activations_scale_with_batch():
    model = MoM(tiny_config())
    small = measure_memory(model, random_batch(97, 2, 32, CPU))
    big = measure_memory(model, random_batch(97, 4, 32, CPU))
    assert big.saved_activation_bytes / small.saved_activation_bytes == pytest.approx(2, rel=0.1)
    assert big.forward_activation_bytes / small.forward_activation_bytes == pytest.approx(2, rel=0.1)
    assert big.param_bytes == small.param_bytes and big.optimizer_bytes == small.optimizer_bytes


def test_forward_only_skips_training_parts():
    r = measure_memory(MoM(tiny_config()), random_batch(97, 1, 8, CPU), train=False)
    assert r.train_peak_bytes is None and r.saved_activation_bytes is None and r.forward_peak_bytes > 0


def test_deeper_routed_model_saves_more_activations_than_its_vanilla_counterpart(tmp_path, capsys):
    cfg = tiny_config(steps=4, n_ffn=3)  # depth 7 against 6 vanilla layers (+ routers), K = 2
    cfg.save(tmp_path / "cfg.json")
    assert main(["memory", "--config", str(tmp_path / "cfg.json"), "--batch", "2", "--seq-len", "16", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["vanilla_config"] == "gpt2-6L" and r["vanilla"]["param_bytes"] < r["model"]["param_bytes"]
    assert r["ratios"]["saved_activation_bytes"] > 1
    assert r["ratios"]["param_bytes"] == pytest.approx(r["model"]["param_bytes"] / r["vanilla"]["param_bytes"])
    assert main(["memory", "--config", str(tmp_path / "cfg.json"), "--seq-len", "8", "--forward-only"]) == 0
    out = capsys.readouterr().out
    assert "forward peak" in out and "training-step peak" not in out and "ratio" in out


@pytest.mark.parametrize("args, message", [
    (["memory", "--config", "tiny", "--batch", "0"], "--batch must be ≥ 1"),
    (["memory", "--config", "tiny", "--seq-len", "4096"], "exceeds the model's context length 256"),
    (["memory", "--ckpt", "/nonexistent"], "/nonexistent: checkpoint directory not found"),
    (["memory", "--config", "tiny-mo"], "unknown preset 'tiny-mo'"),
])
def test_cli_errors(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mom: error: ") and message in err and err.count("\n") == 1
