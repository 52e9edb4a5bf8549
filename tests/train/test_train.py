"""mom.train: schedule, decay groups, a run whose loss falls, metrics with routing statistics, exact resume
(in process and after a SIGKILL), phase-2 initialisation, atomic checkpoints on a full disk, one-line CLI
errors, and DDP (gloo, 2 processes) against one process with the same global batch."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mom.train.checkpoint as checkpoint_mod
import mom.train.step as step_mod
from mom.cli.train import write_plots
from mom.config.model import MoMConfig
from mom.config.train import TrainConfig
from mom.errors import CheckpointError, ConfigError, MomError
from mom.model.model import MoM
from mom.runs import read_latest, read_metrics
from mom.train.batches import resolve_data
from mom.train.distributed import Dist
from mom.train.init import init_from
from mom.train.loop import train
from mom.train.monitor import Speed, routing_stats
from mom.train.optim import decay_split, lr_at
from tests.conftest import counting_compile, write_tokens

REPO = Path(__file__).resolve().parents[2]
VOCAB = 97


# ---------------------------------------------------------------------------------------------- fixtures
def vanilla_cfg(layers: int = 2, **kw) -> MoMConfig:
    return MoMConfig(**{**dict(name="t-vanilla", vocab_size=VOCAB, n_ctx=32, d_model=32, n_head=4, bottom=layers,
                               top=0), **kw})


def mom_cfg(**kw) -> MoMConfig:
    """Decomposes 2 vanilla layers: a pool of 2 attention + 2 FFN modules, H = 3 steps, top-1 GRU routing + SKIP."""
    base = dict(name="t-mom", vocab_size=VOCAB, n_ctx=32, d_model=32, n_head=4, bottom=0, top=0, chunks=1,
                n_attn=2, n_ffn=2, steps=3, top_k=1, router="gru", router_hidden=16, skip=True, temperature=1.0,
                z_coef=1e-3)
    return MoMConfig(**{**base, **kw})


def fixed_cfg(layers: int = 2) -> MoMConfig:
    """The fixed-routing decomposition of a vanilla L-layer model: step h runs module h, exactly layer h."""
    return MoMConfig(name="t-fixed", vocab_size=VOCAB, n_ctx=32, d_model=32, n_head=4, bottom=0, top=0, chunks=1,
                     n_attn=layers, n_ffn=layers, steps=layers, router="fixed", skip=False, top_k=1)


def tcfg(**kw) -> TrainConfig:
    base = dict(max_steps=8, batch_size=4, seq_len=16, lr=3e-3, warmup_steps=2, eval_interval=4, eval_tokens=256,
                log_interval=1, ckpt_interval=4, seed=7)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def phase1(tmp_path_factory, data_dir) -> Path:
    """A finished 2-layer vanilla run (shared by the init-from tests)."""
    out = tmp_path_factory.mktemp("runs") / "phase1"
    train(vanilla_cfg(), tcfg(max_steps=6, ckpt_interval=0, eval_interval=0), out=out, data=str(data_dir),
          progress=False)
    return out


def train_rows(run: Path) -> list[dict]:
    return [r for r in read_metrics(run) if r["type"] == "train"]


def val_rows(run: Path) -> list[dict]:
    return [r for r in read_metrics(run) if r["type"] == "val"]


def cli(*args, cwd=None, **kw):
    return subprocess.run([sys.executable, "-m", "mom.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)}, **kw)


# ---------------------------------------------------------------------------------------------- units
def test_lr_schedule_warmup_then_cosine_to_min_lr():
    t = TrainConfig(max_steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(t, 0) == pytest.approx(1e-4) and lr_at(t, 9) == pytest.approx(1e-3)
    assert lr_at(t, 10) == pytest.approx(1e-3)
    assert lr_at(t, 55) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half-way through the cosine
    assert lr_at(t, 100) == pytest.approx(1e-4)
    lrs = [lr_at(t, s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert TrainConfig(lr=2e-3).final_lr == pytest.approx(2e-4)  # default: lr / 10
    assert TrainConfig(max_steps=400).warmup == 20  # default: 5% of the steps
    assert lr_at(TrainConfig(max_steps=10, warmup_steps=2, schedule="constant"), 7) == 1e-3


def test_train_config_errors():
    with pytest.raises(ConfigError, match="warmup_steps \\(50\\) exceeds max_steps \\(10\\)"):
        TrainConfig(max_steps=10, warmup_steps=50)
    with pytest.raises(ConfigError, match="unknown train field 'learning_rate'"):
        TrainConfig().replace(learning_rate="1")
    with pytest.raises(ConfigError, match="min_lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)
    assert TrainConfig().replace(lr="3e-4", compile="true", min_lr="none").lr == 3e-4


def test_weight_decay_only_on_matmul_weights_and_embeddings():
    model = MoM(mom_cfg(bottom=1, anchor=True))
    decay, no_decay = decay_split(model)
    assert "wte.weight" in decay and "wpe.weight" in decay
    assert "chunks.0.pool.attn.c_attn.weight" in decay  # stacked (N, D, 3D)
    assert "chunks.0.router_attn.gru.weight_ih" in decay and "chunks.0.router_attn.out.weight" in decay
    assert "chunks.0.pool.ln_1.weight" in no_decay  # a stacked LayerNorm gain is 2-D (N, D): still not decayed
    assert "bottom.0.ln_2.weight" in no_decay and "ln_f.weight" in no_decay
    assert all(n.rsplit(".", 1)[-1].startswith("bias") or ".ln" in n or n.startswith("ln_f") for n in no_decay)
    assert sorted(decay + no_decay) == sorted(n for n, _ in model.named_parameters())


def test_router_lr_mult_scales_the_routers_learning_rate_only():
    from mom.train.optim import make_optimizer, set_lr

    model = MoM(mom_cfg(bottom=1, anchor=True, router_step="both", router_norm="layernorm"))
    routers = {n for n, _ in model.named_parameters() if ".router_" in n}
    assert any(n.endswith(("step_bias", "step_embed", "norm.weight")) for n in routers)
    plain, names = make_optimizer(model, tcfg(), torch.device("cpu"))
    assert len(plain.param_groups) == 2  # as before the multiplier: decay and no decay
    opt, names = make_optimizer(model, tcfg(router_lr_mult=0.25), torch.device("cpu"))
    params = dict(model.named_parameters())
    assert [id(p) for g in opt.param_groups for p in g["params"]] == [id(params[n]) for n in names]
    assert sorted(names) == sorted(params)
    set_lr(opt, 2e-3)
    for g in opt.param_groups:
        members = {n for n in names if any(params[n] is p for p in g["params"])}
        in_router = {n in routers for n in members}
        assert len(in_router) == 1  # a group holds routers only, or no router
        assert g["lr"] == pytest.approx(2e-3 * (0.25 if in_router == {True} else 1.0))
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.1}
    with pytest.raises(ConfigError, match="router_lr_mult must be in \\(0, 1000\\]"):
        tcfg(router_lr_mult=0.0)


def test_routing_health_of_hand_made_routes():
    """Two steps of 4 tokens, 2 modules + SKIP (index 2), top-1."""
    from mom.model.model import RouteRecord
    from mom.train.monitor import routing_health

    probs = torch.full((1, 4, 3), 1 / 3)
    steps = [torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2])]  # tokens 0, 2, 3 keep their choice
    routes = [RouteRecord(0, h, "attn", idx.view(1, 4, 1), torch.ones(1, 4, 1), probs, 2) for h, idx in enumerate(steps)]
    stats = routing_stats(routes)
    h = routing_health(routes, stats)["attn"]
    # usage: step 0 (1/2, 1/4, 1/4), step 1 (1/4, 1/2, 1/4); entropy 1.5 bits of log2(3) each
    assert [e["entropy_norm"] for e in stats] == [pytest.approx(1.5 / math.log2(3), abs=1e-5)] * 2
    assert h["entropy"] == pytest.approx(1.5 / math.log2(3), abs=1e-5)
    assert h["skip"] == pytest.approx(0.25) and h["same_path"] == pytest.approx(0.75)
    m = [3 / 8, 3 / 8, 1 / 4]
    js = 0.5 * sum(p * math.log2(p / q) for p, q in zip([1 / 2, 1 / 4, 1 / 4], m)) * 2  # symmetric pair
    assert h["step_js_bits"] == pytest.approx(js, abs=1e-5)
    one_step = routing_health(routes[:1], stats[:1])["attn"]
    assert one_step["same_path"] is None and one_step["step_js_bits"] is None


# ---------------------------------------------------------------------------------------------- runs
def test_loss_falls_and_the_run_directory_is_complete(tmp_path, data_dir):
    out = tmp_path / "run"
    res = train(vanilla_cfg(), tcfg(max_steps=40, lr=1e-2, eval_interval=20, ckpt_interval=20, log_interval=5),
                out=out, data=str(data_dir), progress=False)
    assert res.finished and res.step == 40 and res.tokens == 40 * 4 * 16
    rows, vals = train_rows(out), val_rows(out)
    assert [r["step"] for r in vals] == [0, 20, 40]
    assert vals[0]["val_loss"] == pytest.approx(math.log(VOCAB), abs=0.1)  # random init: uniform guess
    assert vals[-1]["val_loss"] < vals[0]["val_loss"] - 1.0, vals
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    for key in ("loss", "aux_loss", "balance_loss", "z_loss", "lr", "grad_norm", "tokens_per_s", "tokens", "tflops"):
        assert key in rows[0], key
    from mom.model.flops import count

    flops_tok = count(vanilla_cfg(), 16).train_flops_per_token
    assert rows[0]["tflops"] == pytest.approx(flops_tok * rows[0]["tokens_per_s"] / 1e12, rel=1e-3, abs=1e-4)
    assert "mfu" not in rows[0]  # no peak table for a CPU
    write_plots(out)  # what `mom train` does after the loop
    for name in ("config.json", "train_config.json", "run.json", "metrics.jsonl", "latest.json", "model.safetensors",
                 "loss.png"):
        assert (out / name).is_file(), name
    assert not (out / "routing.png").exists()  # nothing is routed in a vanilla model
    assert read_latest(out)[0] == 40
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000040"]  # keep_checkpoints=1
    # The final model loads as a model directory.
    m = MoM.from_pretrained(out)
    assert m.config == vanilla_cfg()


def test_metrics_have_routing_statistics(tmp_path, data_dir):
    out = tmp_path / "run"
    cfg = mom_cfg(top_k=2, balance_coef=0.01)
    train(cfg, tcfg(max_steps=4, eval_interval=0, ckpt_interval=0, log_interval=2), out=out, data=str(data_dir),
          progress=False)
    rows = train_rows(out)
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert r["balance_loss"] > 0 and r["aux_loss"] > 0
        stats = r["routing"]
        assert sorted((e["chunk"], e["step"], e["half"]) for e in stats) == sorted(
            (0, h, half) for h in range(3) for half in ("attn", "ffn"))
        for e in stats:
            assert len(e["usage"]) == 3  # 2 modules + SKIP
            assert sum(e["usage"]) == pytest.approx(1.0, abs=1e-4)
            assert 0.0 <= e["entropy"] <= math.log(3) + 1e-6
            assert e["skip"] == e["usage"][-1]
            assert 0.0 <= e["skip_all"] <= e["skip"] + 1e-9
            assert e["modules_per_token"] == pytest.approx(2 * (1 - e["skip"]), abs=1e-4)
            assert 0.0 <= e["entropy_norm"] <= 1.0
        assert set(r["routing_health"]) == {"attn", "ffn"}
        for health in r["routing_health"].values():
            assert set(health) == {"entropy", "skip", "same_path", "step_js_bits"}
            assert all(0.0 <= v <= 1.0 for v in health.values()), health
    write_plots(out)
    assert (out / "routing.png").is_file()


def test_mfu_only_under_bf16_on_a_device_with_a_known_peak(monkeypatch):
    import mom.model.flops
    import mom.train.monitor

    monkeypatch.setattr(mom.train.monitor, "peak_flops", lambda device: 100e12 if device.type == "cuda" else None)
    cfg, cuda = vanilla_cfg(), torch.device("cuda")
    per_token = mom.model.flops.count(cfg, 16).train_flops_per_token
    tok_s = 50e12 / per_token  # 50 TFLOP/s achieved
    assert Speed(cfg, 16, cuda, torch.bfloat16, 1).of(tok_s) == {"tflops": 50.0, "mfu": 0.5}
    assert Speed(cfg, 16, cuda, torch.bfloat16, 2).of(tok_s)["mfu"] == 0.25  # two GPUs' peak
    assert "mfu" not in Speed(cfg, 16, cuda, None, 1).of(tok_s)  # fp32: the bf16 peak does not apply
    assert "mfu" not in Speed(cfg, 16, torch.device("cpu"), torch.bfloat16, 1).of(tok_s)


def test_compiled_training_compiles_one_graph(tmp_path, data_dir, monkeypatch):
    """--train.compile traces the training step once: evaluation runs uncompiled (a no-grad graph and a short last
    batch would each compile again), and routes are returned at every step, not only on logging steps. Counted with
    dynamo's eager backend (tracing only), so the test is fast; results must equal an uncompiled run."""
    counter = counting_compile(monkeypatch)
    settings = dict(max_steps=4, eval_interval=2, eval_tokens=200, ckpt_interval=0, log_interval=2)
    runs = {}
    for compiled in (True, False):
        out = tmp_path / f"compile-{compiled}"
        train(mom_cfg(top_k=2), tcfg(compile=compiled, **settings), out=out, data=str(data_dir), progress=False)
        runs[compiled] = read_metrics(out)
    assert counter.frame_count == 1
    assert [r["step"] for r in runs[True] if "routing" in r] == [2, 4]
    for a, b in zip(runs[True], runs[False], strict=True):
        for key in ("val_loss", "loss", "grad_norm"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5), (key, a["step"])


def test_routing_stats_counts_picks():
    from mom.model.model import RouteRecord

    idx = torch.tensor([[[0, 2]], [[1, 2]], [[2, 2]], [[0, 1]]]).view(1, 4, 2)  # SKIP is index 2
    rec = RouteRecord(0, 1, "ffn", idx, torch.ones(1, 4, 2), torch.full((1, 4, 3), 1 / 3), 2)
    (e,) = routing_stats([rec, RouteRecord(0, 0, "attn", idx, idx.float(), None, 2)])
    assert e["usage"] == [0.25, 0.25, 0.5] and e["skip"] == 0.5 and e["skip_all"] == 0.25
    assert e["modules_per_token"] == 1.0
    assert e["entropy"] == pytest.approx(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)), abs=1e-5)


def test_resume_is_bit_identical(tmp_path, data_dir):
    """8 steps straight == 4 steps, stop, resume for 4 more: every logged number, the weights and AdamW's state."""
    cfg = mom_cfg()
    t = tcfg(max_steps=8, tokens_per_step=2 * 4 * 16, eval_interval=2)  # 2 accumulated micro-batches per step
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(cfg, t, out=straight, data=str(data_dir), progress=False)
    res = train(cfg, t, out=split, data=str(data_dir), progress=False, stop_at=3)
    assert not res.finished and read_latest(split)[0] == 3  # a checkpoint is written where it stops
    res = train(None, None, out=split, resume=True, progress=False)  # everything else comes from the run
    assert res.finished and res.step == 8

    def numbers(run):
        return [(r["type"], r["step"], r.get("loss"), r.get("grad_norm"), r.get("aux_loss"), r.get("val_loss"),
                 r.get("routing")) for r in read_metrics(run)]

    assert numbers(split) == numbers(straight)
    a, b = MoM.from_pretrained(straight).state_dict(), MoM.from_pretrained(split).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    from safetensors.torch import load_file

    sa = load_file(straight / "checkpoints" / "step-00000008" / "train_state.safetensors")
    sb = load_file(split / "checkpoints" / "step-00000008" / "train_state.safetensors")
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert json.loads((split / "run.json").read_text())["resumed_at"] == [3]


@pytest.mark.slow
def test_sigkill_and_resume_gives_identical_losses(tmp_path, data_dir):
    """The real thing: a process killed with SIGKILL mid-run, resumed from the command line."""
    cfg_path = tmp_path / "cfg.json"
    mom_cfg().save(cfg_path)
    args = ["train", "--config", cfg_path, "--data", data_dir, "--no-progress", "--train.max_steps", "24",
            "--train.batch_size", "4", "--train.seq_len", "16", "--train.lr", "3e-3", "--train.warmup_steps", "2",
            "--train.eval_interval", "6", "--train.eval_tokens", "256", "--train.log_interval", "1",
            "--train.ckpt_interval", "3", "--train.seed", "7"]
    ref = cli(*args, "--out", tmp_path / "ref", timeout=300)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mom.cli", *map(str, args), "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        latest = read_latest(run) if (run / "latest.json").exists() else None
        if latest and latest[0] >= 9:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = read_latest(run)[0]
    assert 9 <= killed_at < 24 and not (run / "model.safetensors").exists()
    again = cli(*args, "--out", run, "--resume", timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resumed from {run / 'checkpoints' / f'step-{killed_at:08d}'}" in again.stdout

    def losses(r):
        return [(x["type"], x["step"], x.get("loss"), x.get("val_loss")) for x in read_metrics(r)]

    assert losses(run) == losses(tmp_path / "ref")


def test_phase2_fixed_routing_reproduces_phase1_val_loss_exactly(tmp_path, data_dir, phase1):
    """Decomposing into chunks=1, N_A=N_F=H=L, router='fixed', no SKIP computes the phase-1 model exactly."""
    p1_final = val_rows(phase1)[-1]
    assert p1_final["step"] == 6
    out = tmp_path / "fixed"
    train(fixed_cfg(2), tcfg(max_steps=1, warmup_steps=0, eval_interval=0, ckpt_interval=0), out=out, data=str(data_dir),
          init=str(phase1), progress=False)
    start = val_rows(out)[0]
    assert start["step"] == 0 and start["val_loss"] == p1_final["val_loss"]  # bit for bit
    assert "decomposed the 2-layer vanilla model" in json.loads((out / "run.json").read_text())["init"]
    # A routed decomposition with fresh routers computes something else (the check above can fail).
    routed = tmp_path / "routed"
    train(mom_cfg(), tcfg(max_steps=1, warmup_steps=0, eval_interval=0, ckpt_interval=0), out=routed, data=str(data_dir),
          init=str(phase1), progress=False)
    assert val_rows(routed)[0]["val_loss"] != p1_final["val_loss"]


def test_same_layout_init_from_loads_the_weights(tmp_path, data_dir, phase1):
    """The compute-matched continuation (--config tiny --init-from runs/tiny) starts exactly where phase 1 ended."""
    out = tmp_path / "cont"
    train(vanilla_cfg(), tcfg(max_steps=1, warmup_steps=0, eval_interval=0, ckpt_interval=0), out=out, data=str(data_dir),
          init=str(phase1), progress=False)
    assert val_rows(out)[0]["val_loss"] == val_rows(phase1)[-1]["val_loss"]
    assert "same layout" in json.loads((out / "run.json").read_text())["init"]


def test_init_from_hf_gpt2(tmp_path):
    from tests.conftest import make_hf_gpt2

    hf = make_hf_gpt2(tmp_path / "hf", n_layer=2, n_embd=32, n_head=4, vocab=VOCAB, n_positions=32)
    model = MoM(vanilla_cfg())
    assert "HF GPT-2" in init_from(model, f"hf:{tmp_path / 'hf'}")
    idx = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        assert (model.eval()(idx).logits - hf(idx).logits).abs().max() <= 1e-5
    with pytest.raises(CheckpointError, match="decomposes 3 GPT-2 layers"):
        init_from(MoM(vanilla_cfg(3)), str(tmp_path / "hf"))  # an HF directory is detected without hf:


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, data_dir, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    real = checkpoint_mod.save_safetensors

    def flaky(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint's train state: the disk is full half-way through it
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(tensors, path, metadata)

    monkeypatch.setattr(checkpoint_mod, "save_safetensors", flaky)
    with pytest.raises(CheckpointError) as e:
        train(mom_cfg(), tcfg(max_steps=8, ckpt_interval=2, eval_interval=0), out=out, data=str(data_dir),
              progress=False)
    msg = str(e.value)
    assert "cannot write the step-4 checkpoint (No space left on device)" in msg
    assert "the previous checkpoint (step 2) is intact" in msg
    assert read_latest(out)[0] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]  # no temporary leftovers
    monkeypatch.setattr(checkpoint_mod, "save_safetensors", real)
    res = train(None, None, out=out, resume=True, progress=False)  # and it resumes from there
    assert res.finished and res.step == 8


def test_existing_run_needs_resume_or_force(tmp_path, data_dir, phase1):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(phase1, out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="already holds a training run \\(latest checkpoint: step 6\\); pass --resume"):
        train(vanilla_cfg(), tcfg(), out=out, data=str(data_dir), progress=False)
    train(vanilla_cfg(), tcfg(max_steps=2, eval_interval=0, ckpt_interval=0), out=out, data=str(data_dir),
          progress=False, force=True)
    assert read_latest(out)[0] == 2 and (out / "notes.txt").read_text() == "mine"  # --force only removes run files
    assert [r["step"] for r in val_rows(out)] == [0, 2]


def test_a_run_directory_in_use_is_refused_before_anything_is_written(tmp_path, data_dir, phase1):
    """Two trainings into one directory would interleave their metrics and checkpoints: while one holds it, a second
    one (--resume or --force alike) fails with one line and changes nothing; once the holder is gone it proceeds."""
    import shutil

    from mom.runs import lock_run_dir

    out = tmp_path / "run"
    shutil.copytree(phase1, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with lock_run_dir(out):
        for kw in ({"resume": True}, {"force": True}):
            with pytest.raises(MomError, match=f"another process \\(pid {os.getpid()}\\) is training into this run"):
                train(vanilla_cfg() if "force" in kw else None, tcfg() if "force" in kw else None, out=out,
                      data=str(data_dir), progress=False, **kw)
            assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} \
                == {k: v for k, v in before.items() if k.name != ".lock"}
    res = train(vanilla_cfg(), tcfg(max_steps=2, eval_interval=0, ckpt_interval=0), out=out, data=str(data_dir),
                progress=False, force=True)
    assert res.finished and read_latest(out)[0] == 2


def test_without_data_the_builtin_corpus_is_prepared_once(tmp_path, monkeypatch):
    from mom.data.tokens import read_meta

    monkeypatch.chdir(tmp_path)
    path = resolve_data(None, Dist(), progress=False)
    assert path == Path("data/builtin") and read_meta(path)["train_tokens"] > 4_000_000
    stamp = (path / "train.bin").stat().st_mtime_ns
    assert resolve_data(None, Dist(), progress=False) == path
    assert (path / "train.bin").stat().st_mtime_ns == stamp  # not prepared again


# ---------------------------------------------------------------------------------------------- CLI errors
@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, data_dir, phase1):
    d = tmp_path_factory.mktemp("cli")
    vanilla_cfg().save(d / "vanilla.json")
    vanilla_cfg(3).save(d / "vanilla3.json")
    mom_cfg(n_attn=3, n_ffn=3).save(d / "mom3.json")
    bad = d / "bad"
    bad.mkdir()
    ids = np.arange(1000, dtype=np.uint16) % VOCAB
    ids[500] = 200
    ids.tofile(bad / "train.bin")
    ids[:100].tofile(bad / "val.bin")
    empty = d / "empty"
    empty.mkdir()
    (empty / "train.bin").write_bytes(b"")
    (empty / "val.bin").write_bytes(b"\x01\x00")
    other = write_tokens(d / "other", n_train=3000, n_val=300)
    return {"d": d, "data": data_dir, "phase1": phase1, "bad": bad, "empty": empty, "other": other}


@pytest.mark.parametrize("case", ["missing-data", "id-over-vocab", "empty-bin", "unmappable-init", "width-init",
                                  "resume-other-config", "resume-other-model-field", "resume-other-data", "resume-nothing", "exists",
                                  "bad-train-field", "empty-init"])
def test_cli_errors_are_one_line_exit_2_and_write_nothing(cli_setup, case, tmp_path):
    s = cli_setup
    out = tmp_path / "out"
    common = ["--train.max_steps", "2", "--train.seq_len", "16", "--no-progress"]
    args, message = {
        "missing-data": (["--config", s["d"] / "vanilla.json", "--data", tmp_path / "nope", "--out", out],
                         "no such data directory"),
        "id-over-vocab": (["--config", s["d"] / "vanilla.json", "--data", s["bad"], "--out", out],
                          "token id 200 at position 500 exceeds the vocabulary (97)"),
        "empty-bin": (["--config", s["d"] / "vanilla.json", "--data", s["empty"], "--out", out],
                      "token file is empty"),
        "unmappable-init": (["--config", s["d"] / "mom3.json", "--init-from", s["phase1"], "--data", s["data"],
                             "--out", out], "decomposes 3 GPT-2 layers"),
        "width-init": (["--config", s["d"] / "vanilla.json", "--model.d_model", "64", "--init-from", s["phase1"],
                        "--data", s["data"], "--out", out], "d_model is 32 but the config"),
        "resume-other-config": (["--config", s["d"] / "vanilla.json", "--model.n_head", "2", "--out", s["phase1"],
                                 "--resume"], "was trained with a different model config (n_head: 4 in the run, 2 now)"),
        "resume-other-model-field": (["--out", s["phase1"], "--resume", "--model.n_head", "2"],
                                     "was trained with a different model config (n_head: 4 in the run, 2 now)"),
        "resume-other-data": (["--out", s["phase1"], "--resume", "--data", s["other"]],
                              "is not the run's data (train split: 3,000 tokens, the run had 20,000)"),
        "resume-nothing": (["--config", s["d"] / "vanilla.json", "--out", out, "--resume"],
                           "no such run directory to resume"),
        "exists": (["--config", s["d"] / "vanilla.json", "--data", s["data"], "--out", s["phase1"]],
                   "already holds a training run"),
        "bad-train-field": (["--config", s["d"] / "vanilla.json", "--train.lr", "fast", "--out", out],
                            "lr must be a number, got 'fast'"),
        "empty-init": (["--config", s["d"] / "vanilla.json", "--init-from", "", "--data", s["data"], "--out", out],
                       "--init-from '': empty"),
    }[case]
    before = sorted(p.name for p in s["phase1"].rglob("*"))
    r = cli("train", *args, *(common if "--resume" not in args else ["--no-progress"]), cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("mom: error: ") and message in lines[0], lines[0]
    assert not out.exists()  # nothing half-written
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
    assert sorted(p.name for p in s["phase1"].rglob("*")) == before


def test_cli_resume_of_a_finished_run_is_a_no_op(cli_setup, tmp_path):
    import shutil

    run = tmp_path / "p1"
    shutil.copytree(cli_setup["phase1"], run)
    before = (run / "metrics.jsonl").read_text()
    r = cli("train", "--out", run, "--resume", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "already finished (6 of 6 steps)" in r.stdout
    assert (run / "metrics.jsonl").read_text() == before
    # --model.X without --config is checked against the run's own config (docs/training.md); a matching one passes
    r = cli("train", "--out", run, "--resume", "--model.n_head", "4", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0 and "already finished" in r.stdout, r.stderr


# ---------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_gloo_two_processes_match_one_process(tmp_path, data_dir, parallel):
    """2 gloo processes × 1 micro-batch of 2 == 1 process × 2 accumulated micro-batches of 2 (same global batch),
    with DDP replicas and with FSDP2 shards; an FSDP run's checkpoints are ordinary full ones (resumable by one
    process)."""
    cfg_path = tmp_path / "cfg.json"
    mom_cfg(top_k=2, dispatch="loop").save(cfg_path)  # routed, with SKIP (find_unused_parameters), loop dispatch
    args = ["train", "--config", cfg_path, "--data", data_dir, "--no-progress", "--train.max_steps", "6",
            "--train.batch_size", "2", "--train.seq_len", "16", "--train.tokens_per_step", "64",
            "--train.warmup_steps", "1", "--train.lr", "3e-3", "--train.eval_interval", "3",
            "--train.eval_tokens", "320", "--train.log_interval", "1", "--train.ckpt_interval", "0"]
    one = cli(*args, "--out", tmp_path / "one", timeout=300)
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mom.cli"]
    two = subprocess.run([*torchrun, *map(str, args), "--train.parallel", parallel, "--train.ckpt_interval", "3",
                          "--train.keep_checkpoints", "2",
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert two.returncode == 0, two.stderr[-3000:]
    assert "× 2 processes" in two.stdout and "1 accumulated" not in two.stdout
    a, b = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [(r["type"], r["step"]) for r in a] == [(r["type"], r["step"]) for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "aux_loss", "grad_norm", "val_loss"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["step"], key)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
    wa, wb = MoM.from_pretrained(tmp_path / "one").state_dict(), MoM.from_pretrained(tmp_path / "two").state_dict()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    # The step-3 checkpoint of the 2-process run, continued by one process, ends where the 2-process run ended.
    import shutil

    cont = tmp_path / "cont"
    shutil.copytree(tmp_path / "two", cont)
    shutil.rmtree(cont / "checkpoints" / "step-00000006")
    (cont / "model.safetensors").unlink()
    res = train(None, None, out=cont, resume=True, progress=False)
    assert res.finished and read_latest(cont)[0] == 6
    wc = MoM.from_pretrained(cont).state_dict()
    assert max((wc[k] - wb[k]).abs().max().item() for k in wc) < 1e-4


def test_an_out_below_a_file_is_one_error_and_an_early_interrupt_points_to_force(tmp_path, data_dir, monkeypatch,
                                                                                 capsys):
    # found by a user audit: `--out afile/sub` ended in a NotADirectoryError traceback, and an interrupt before the
    # first checkpoint advised a --resume that could only fail ("no checkpoint to resume from")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MomError, match="afile/sub: cannot create the run directory"):
        train(vanilla_cfg(), tcfg(max_steps=2), out=tmp_path / "afile" / "sub", data=str(data_dir), progress=False)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(step_mod, "full_tensor", interrupt)  # called once per step, inside the training loop
    with pytest.raises(KeyboardInterrupt):
        train(vanilla_cfg(), tcfg(max_steps=4, ckpt_interval=0, eval_interval=0), out=tmp_path / "run",
              data=str(data_dir), progress=False)
    assert "interrupted after step 0; no checkpoint yet: start over with --force" in capsys.readouterr().out


def test_a_run_checkpointed_before_the_package_moved_resumes_bit_exact(tmp_path):
    """tests/fixtures/pre_house: a tiny-mom run stopped at step 2 of 4 by the flat-layout package (ed57a95), and what
    that package computed when it resumed it to step 4. The subpackage layout reads the same checkpoint and ends on
    the same weights, bit for bit."""
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "pre_house"
    shutil.copytree(fixture / "run", tmp_path / "run")
    expected = json.loads((fixture / "expected.json").read_text())
    res = train(None, None, out=tmp_path / "run", data=str(fixture / "data"), resume=True, progress=False)
    assert res.step == expected["step"] and res.val_loss == expected["val_loss"]
    sums = {k: float(v.double().sum()) for k, v in MoM.from_pretrained(tmp_path / "run").state_dict().items()}
    assert sums == expected["param_sums"]
