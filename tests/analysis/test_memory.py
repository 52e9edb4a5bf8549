"""Measured memory: the tensor tracker, saved activations, a training step's parts, `mom memory`."""

import json

import pytest
import torch
from torch import nn

from mom.analysis.memory import (
    LiveTensorTracker,
    extrapolated_training_forward,
    kv_cache_bytes,
    measure_cache,
    measure_memory,
    random_batch,
    saved_activations,
    training_forward,
)
from mom.cli.main import main
from mom.config.model import preset
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
    assert main(["memory", "--config", str(tmp_path / "cfg.json"), "--mode", "train", "--batch", "2", "--seq-len",
                 "16", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    train = r["modes"]["train"]
    assert r["vanilla_config"] == "gpt2-6L" and train["vanilla"]["grad_bytes"] < train["model"]["grad_bytes"]
    assert train["ratios"]["saved_sdpa_bytes"] > 1 and train["ratios"]["saved_eager_bytes"] > 1
    assert train["ratios"]["grad_bytes"] == pytest.approx(train["model"]["grad_bytes"] / train["vanilla"]["grad_bytes"])
    assert main(["memory", "--config", str(tmp_path / "cfg.json"), "--seq-len", "8", "--forward-only"]) == 0
    out = capsys.readouterr().out
    assert "forward peak" in out and "training-step peak" not in out and "ratio" in out


# ---------------------------------------------------------------------------------------------- the three readings
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fields", [dict(chunks=0, bottom=2, top=0), dict(steps=3)])
def test_cache_reading_bytes_equal_the_hand_count_exactly(fields, dtype):
    """Reading (a): the bytes the cache allocates, measured by the tracker, are per attention core keys and values
    (2·B·T·d elements) and a validity flag per token, plus the real-token flags, key positions, write position and
    pads — counted here by hand."""
    cfg = tiny_config(n_ctx=64, **fields)
    model = MoM(cfg).to(dtype)
    B, T = 3, 40
    cores = cfg.n_vanilla_layers + cfg.chunks * cfg.steps  # 2; or bottom + 3 steps + anchor + top = 6
    hand = cores * (2 * B * T * cfg.d_model * dtype.itemsize + B * T) + B * T + 8 * T + 8 + 8 * B
    r = measure_cache(model, random_batch(cfg.vocab_size, B, T, CPU))
    assert r.cache_bytes == hand == r.counted_cache_bytes == kv_cache_bytes(cfg, B, T, dtype.itemsize)
    assert r.attention_cores == cores and r.dtype == str(dtype).removeprefix("torch.")
    assert r.param_bytes == model.num_params() * dtype.itemsize
    assert r.param_bytes + r.cache_bytes < r.prefill_peak_bytes < r.param_bytes + r.cache_bytes + 2**20


def test_training_reading_matches_the_hand_count_and_eager_keeps_the_scores():
    """Reading (b) on a vanilla model, counted by hand per layer: LayerNorm inputs and outputs, q/k/v, the attention
    output, the c_proj input, the FFN's two hidden activations (16·B·T·d), 4 LayerNorm statistics per token and
    SDPA's log-sum-exp (B·G·T); then ln_f, the logits and the ids. Eager attention instead keeps q, k, v copies,
    the (B, G, T, T) probabilities and the T×T mask. Tolerance 1% (the count is exact on torch 2.13)."""
    L, B, T = 2, 2, 64
    cfg = tiny_config(chunks=0, bottom=L, top=0, n_ctx=T)
    d, G, V, f = cfg.d_model, cfg.n_head, cfg.vocab_size, 4
    layer = (16 * B * T * d + 4 * B * T + B * G * T) * f
    head = (2 * B * T * d + 2 * B * T + B * T * V) * f + 8 * B * T + 8 * T + f  # ids, positions, the loss
    sdpa, _ = training_forward(MoM(cfg), random_batch(V, B, T, CPU), "sdpa")
    assert sdpa == pytest.approx(L * layer + head, rel=0.01)
    eager, _ = training_forward(MoM(cfg), random_batch(V, B, T, CPU), "eager")
    per_core = (B * G * T * T - B * G * T) * f + T * T  # probabilities and mask in, log-sum-exp out
    assert eager - sdpa == pytest.approx(L * per_core, rel=0.01)


def test_forward_reading_is_weights_plus_logits():
    """Reading (c): with a vocabulary large enough for the logits to dominate, the no-grad forward's peak above the
    weights is the B·T·V logits (to 1%: one layer's transients ride on top)."""
    cfg = tiny_config(vocab_size=5000, n_ctx=64)
    B, T = 2, 64
    r = measure_memory(MoM(cfg), random_batch(cfg.vocab_size, B, T, CPU), train=False)
    assert r.forward_activation_bytes == pytest.approx(B * T * cfg.vocab_size * 4, rel=0.01)


@pytest.mark.parametrize("fields", [dict(chunks=0, bottom=2, top=0), dict(steps=3)])
def test_extrapolated_training_reading_matches_a_direct_measurement(fields):
    """For sizes that do not fit: one sequence at short lengths, fitted to b·T + c·T², scaled to B × T, lands
    within 2% of measuring B × T directly, with SDPA and with eager attention."""
    cfg = tiny_config(n_ctx=128, **fields)
    model = MoM(cfg)
    for impl in ("sdpa", "eager"):
        direct, _ = training_forward(model, random_batch(cfg.vocab_size, 2, 64, CPU), impl)
        fit = extrapolated_training_forward(model, 2, 64, impl)
        assert fit["saved_activation_bytes"] == pytest.approx(direct, rel=0.02), impl
        assert len(fit["points"]) >= 2 and all(T < 64 for T, _ in fit["points"])


def test_cli_shows_the_three_readings_side_by_side(capsys):
    assert main(["memory", "--config", "tiny-mom", "--batch", "2", "--seq-len", "32", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["modes"]) == {"cache", "train", "forward"} and r["vanilla_config"] == "gpt2-6L"
    cache = r["modes"]["cache"]
    assert cache["dtype"] == "bfloat16" and r["modes"]["train"]["dtype"] == "float32"
    assert cache["model"]["cache_bytes"] == cache["model"]["counted_cache_bytes"]
    assert cache["ratios"]["cache_bytes"] == pytest.approx(8 / 6, rel=0.01)  # 8 attention cores against 6
    assert main(["memory", "--config", "tiny-mom-e", "--mode", "cache", "--seq-len", "16"]) == 0
    out = capsys.readouterr().out
    assert "(a) generation with a KV cache: batch 16 × 16 tokens, bfloat16" in out and "(b) training" not in out
    assert "can only show in reading (a)" in out


def test_cli_analytic_reading_at_paper_scale_reproduces_the_papers_memory_figure(capsys):
    """MoM_E-large against GPT-2-large, 16 × 1024 tokens, bf16 weights: weights + keys/values of every core is
    −42%, the paper's figure (13 attention cores against 36); the no-grad forward is within 1%."""
    assert main(["memory", "--config", "mom-e-large", "--analytic", "--mode", "cache", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["modes"]["cache"]
    assert (r["batch"], r["seq_len"]) == (16, 1024)
    assert (r["model"]["attention_cores"], r["vanilla"]["attention_cores"]) == (13, 36)
    assert r["ratios"]["weights_plus_cache_bytes"] - 1 == pytest.approx(-0.42, abs=0.005)
    assert main(["memory", "--config", "mom-e-large", "--analytic", "--mode", "forward", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["modes"]["forward"]
    assert r["ratios"]["weights_plus_logits_bytes"] == pytest.approx(1, abs=0.01)
    assert preset("mom-e-large").depth == 13


@pytest.mark.parametrize("args, message", [
    (["memory", "--config", "tiny", "--batch", "0"], "--batch must be ≥ 1"),
    (["memory", "--config", "tiny", "--seq-len", "4096"], "exceeds the model's context length 256"),
    (["memory", "--ckpt", "/nonexistent"], "/nonexistent: checkpoint directory not found"),
    (["memory", "--config", "tiny-mo"], "unknown preset 'tiny-mo'"),
    (["memory", "--config", "tiny", "--forward-only", "--mode", "cache"], "--forward-only contradicts --mode cache"),
    (["memory", "--config", "tiny", "--analytic", "--data", "x"], "--analytic runs no batch"),
])
def test_cli_errors(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mom: error: ") and message in err and err.count("\n") == 1
