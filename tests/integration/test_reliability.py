"""Reliability (issue 8): checkpoint integrity, numerical faults, router-collapse warnings, resource errors, and
a crash harness that SIGKILLs `mom train` at many moments (inside checkpoint writes too) and checks that nothing
is lost and the resumed run equals an uninterrupted one bit for bit."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mom.errors import CheckpointError, MomError
from mom.fileio import MANIFEST, verify_manifest, write_manifest
from mom.model.model import MoM
from mom.runs import read_latest, read_metrics
from mom.train.checkpoint import CHECKPOINT_FILES, _prune, load_checkpoint
from mom.train.loop import train
from mom.train.monitor import CollapseWatch, collapse_advice
from mom.train.optim import make_optimizer
from tests.train.test_train import REPO, cli, mom_cfg, tcfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir) -> Path:
    """A finished short MoM run with its final checkpoint (kept read-only: tests copy it)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    train(mom_cfg(), tcfg(max_steps=4, ckpt_interval=2, keep_checkpoints=2, eval_interval=0), out=out,
          data=str(data_dir), progress=False)
    return out


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def losses(run: Path) -> list[tuple]:
    return [(r["type"], r["step"], r.get("loss"), r.get("val_loss"), r.get("grad_norm")) for r in read_metrics(run)]


# ---------------------------------------------------------------------------------------------- integrity
def test_every_checkpoint_and_model_directory_carries_a_verified_manifest(run_dir):
    ckpt = read_latest(run_dir)[1]
    assert sorted(verify_manifest(ckpt)) == sorted(CHECKPOINT_FILES)
    assert sorted(verify_manifest(run_dir)) == ["config.json", "model.safetensors"]  # the final model
    manifest = json.loads((ckpt / MANIFEST).read_text())
    entry = manifest["files"]["model.safetensors"]
    assert entry["bytes"] == (ckpt / "model.safetensors").stat().st_size and len(entry["sha256"]) == 64


def _damage(kind: str, ckpt: Path) -> str:
    """Damage a checkpoint one way; returns the part of the error message that must name the problem."""
    f = ckpt / "model.safetensors"
    if kind == "truncated":
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
        return f"{f}: truncated ({len(data) // 2:,} of {len(data):,} bytes)"
    if kind == "corrupted":  # same size, one byte flipped in the tensor data
        data = bytearray(f.read_bytes())
        data[-5] ^= 0xFF
        f.write_bytes(bytes(data))
        return f"{f}: corrupted (sha256 differs"
    if kind == "missing":
        (ckpt / "train_state.safetensors").unlink()
        return f"{ckpt / 'train_state.safetensors'}: missing"
    # The remaining kinds are well-formed files of the wrong kind, re-manifested so only the content check can
    # catch them (what a user copying files between runs would produce).
    if kind == "wrong-shape":
        sd = load_file(str(f))
        sd["wpe.weight"] = torch.zeros(7, 32)
        save_file(sd, str(f), metadata={"format": "mom"})
        expect = "wpe.weight"
    elif kind == "foreign":
        save_file({"h.0.attn.c_attn.weight": torch.zeros(2, 2)}, str(f), metadata={"format": "pt"})
        expect = f"{f}: not a mom file (its metadata names format 'pt'"
    elif kind == "wrong-version":
        st = json.loads((ckpt / "state.json").read_text())
        st["format_version"] = 99
        (ckpt / "state.json").write_text(json.dumps(st))
        expect = "training-state format_version 99 is not supported"
    elif kind == "newer-manifest":
        m = json.loads((ckpt / MANIFEST).read_text())
        m["version"] = 2
        (ckpt / MANIFEST).write_text(json.dumps(m))
        return "manifest version 2 is not supported"
    elif kind == "optimizer-shape":
        g = ckpt / "train_state.safetensors"
        sd = load_file(str(g))
        key = next(k for k in sd if k.startswith("exp_avg/"))
        sd[key] = torch.zeros(3)
        save_file(sd, str(g), metadata={"format": "mom-train-state"})
        expect = f"optimiser state for {key.split('/', 1)[1]} is missing or has the wrong shape"
    else:
        raise AssertionError(kind)
    write_manifest(ckpt, list(CHECKPOINT_FILES))
    return expect


KINDS = ["truncated", "corrupted", "missing", "wrong-shape", "foreign", "wrong-version", "newer-manifest",
         "optimizer-shape"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_checkpoint_is_named_on_resume(tmp_path, run_dir, kind):
    run = copy_run(run_dir, tmp_path / "run")
    ckpt = read_latest(run)[1]
    expect = _damage(kind, ckpt)
    with pytest.raises(CheckpointError) as e:
        train(None, None, out=run, resume=True, progress=False)
    msg = str(e.value)
    assert expect in msg and "\n" not in msg


def test_cli_damaged_checkpoint_is_one_line_exit_2_and_an_earlier_one_can_be_used(tmp_path, run_dir, data_dir):
    run = copy_run(run_dir, tmp_path / "run")
    latest = read_latest(run)[1]
    _damage("truncated", latest)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    r = cli("train", "--out", run, "--resume", "--no-progress", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mom: error: ") and "truncated" in lines[0]
    assert f"to resume from the checkpoint before it, delete {latest}" in lines[0]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing touched
    # Following the advice: the damaged step-4 checkpoint goes, the run resumes from step 2.
    import shutil

    shutil.rmtree(latest)
    r = cli("train", "--out", run, "--resume", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "(step 2)" in r.stdout and read_latest(run)[0] == 4


@pytest.mark.parametrize("kind", ["truncated", "corrupted", "wrong-shape", "foreign"])
def test_a_damaged_model_directory_is_named_on_load(tmp_path, run_dir, kind):
    model_dir = copy_run(run_dir, tmp_path / "m")
    f = model_dir / "model.safetensors"
    if kind == "truncated":
        f.write_bytes(f.read_bytes()[:100])
        expect = "truncated (100 of"
    elif kind == "corrupted":
        data = bytearray(f.read_bytes())
        data[-1] ^= 1
        f.write_bytes(bytes(data))
        expect = "corrupted"
    else:
        if kind == "wrong-shape":
            sd = load_file(str(f))
            sd["chunks.0.pool.attn.c_attn.weight"] = sd["chunks.0.pool.attn.c_attn.weight"][:1]
            save_file(sd, str(f), metadata={"format": "mom"})
            expect = "chunks.0.pool.attn.c_attn.weight"
        else:
            save_file({"x": torch.zeros(1)}, str(f))  # no metadata at all
            expect = "not a mom file (its metadata names format None"
        write_manifest(model_dir, ["model.safetensors", "config.json"])
    with pytest.raises(CheckpointError, match=re.escape(expect)):
        MoM.from_pretrained(model_dir)
    r = cli("generate", "--ckpt", model_dir, "--prompt", "hi", "--max-new-tokens", "2", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and expect.split(" (")[0] in r.stderr


def test_nothing_is_unpickled_from_checkpoints():
    """Every torch.load in the package refuses pickled code (weights_only=True); checkpoints are safetensors."""
    for path in (REPO / "mom").glob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.search(r"\btorch\.load\(", line):
                assert "weights_only=True" in line, f"{path.name}: {line.strip()}"
            assert "pickle.load" not in line, f"{path.name}: {line.strip()}"


# ---------------------------------------------------------------------------------------------- faults
def _poison(monkeypatch, at_calls: set[int], param: str | None = "chunks.0.pool.mlp.c_fc.weight", module: int = 1):
    """Make the training forward at the given call numbers produce a NaN: through one pool module's weights
    (so exactly that module's gradient is NaN), or in the loss itself when ``param`` is None."""
    real = MoM.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None, **kw):
        out = real(self, idx, targets, **kw)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] in at_calls:
                nan = torch.tensor(float("nan"))
                bad = dict(self.named_parameters())[param][module].sum() * nan if param else nan
                out.loss = out.loss + bad
        return out

    monkeypatch.setattr(MoM, "forward", forward)


def test_a_nan_step_is_skipped_named_and_the_run_goes_on(tmp_path, data_dir, monkeypatch):
    ref = train(mom_cfg(), tcfg(max_steps=4, eval_interval=0), out=tmp_path / "ref", data=str(data_dir),
                progress=False)
    _poison(monkeypatch, {3})  # the third step
    res = train(mom_cfg(), tcfg(max_steps=4, eval_interval=0), out=tmp_path / "run", data=str(data_dir),
                progress=False)
    assert res.finished
    rows = read_metrics(tmp_path / "run")
    faults = [r for r in rows if r["type"] == "fault"]
    assert len(faults) == 1 and faults[0]["step"] == 3 and faults[0]["skipped"]
    assert "loss nan" in faults[0]["what"]
    assert "chunks.0.pool.mlp.c_fc.weight (module 1)" in faults[0]["what"]
    train_steps = [r["step"] for r in rows if r["type"] == "train"]
    assert train_steps == [1, 2, 4]  # the bad step has no averaged row (log_interval 1)
    assert all(torch.isfinite(v).all() for v in MoM.from_pretrained(tmp_path / "run").state_dict().values())
    # Steps 1-2 are the reference's exactly: nothing of the bad step leaked into them.
    ref_rows = {r["step"]: r["loss"] for r in read_metrics(ref.run_dir) if r["type"] == "train"}
    assert [r["loss"] for r in rows if r["type"] == "train"][:2] == [ref_rows[1], ref_rows[2]]


def test_the_update_of_a_bad_step_is_not_applied(tmp_path, data_dir, monkeypatch):
    """With lr 0 after warm-up nothing changes anyway; so compare weights before and after a lone bad step:
    a run stopped right after step 2 equals one whose step 3 was poisoned and stopped after step 3, apart from
    AdamW never having seen step 3 (its step counter is unchanged)."""
    a = train(mom_cfg(), tcfg(max_steps=6, eval_interval=0), out=tmp_path / "a", data=str(data_dir), progress=False,
              stop_at=2)
    _poison(monkeypatch, {3}, param=None)
    b = train(mom_cfg(), tcfg(max_steps=6, eval_interval=0), out=tmp_path / "b", data=str(data_dir), progress=False,
              stop_at=3)
    wa = load_file(str(read_latest(a.run_dir)[1] / "model.safetensors"))
    wb = load_file(str(read_latest(b.run_dir)[1] / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = json.loads((read_latest(a.run_dir)[1] / "state.json").read_text())
    sb = json.loads((read_latest(b.run_dir)[1] / "state.json").read_text())
    assert sa["optimizer_step"] == sb["optimizer_step"] == 2.0


def test_too_many_bad_steps_stop_the_run_with_the_checkpoint_intact(tmp_path, data_dir, monkeypatch):
    _poison(monkeypatch, {5, 6}, param=None)
    out = tmp_path / "run"
    with pytest.raises(MomError) as e:
        train(mom_cfg(), tcfg(max_steps=8, ckpt_interval=2, eval_interval=0, max_bad_steps=2), out=out,
              data=str(data_dir), progress=False)
    msg = str(e.value)
    assert "training stopped at step 6: 2 step(s) in a row" in msg and "the last checkpoint (step 4) is intact" in msg
    assert read_latest(out)[0] == 4 and verify_manifest(read_latest(out)[1])
    monkeypatch.undo()
    assert train(None, None, out=out, resume=True, progress=False).finished  # and it resumes


def test_router_collapse_is_reported_once_per_episode():
    def row(share0):  # 3 modules + SKIP, top-1: module 0 takes share0 of the tokens
        return {"chunk": 0, "step": 1, "half": "ffn", "choices": 3, "picks": 1,
                "token_share": [share0, (1 - share0) / 2, (1 - share0) / 2, 0.0]}

    w = CollapseWatch(share=0.9, patience=3)
    seen = [w.update([row(s)]) for s in (0.95, 0.97, 0.99, 0.99, 0.5, 0.95, 0.95, 0.95)]
    assert [len(x) for x in seen] == [0, 0, 1, 0, 0, 0, 0, 1]
    assert seen[2][0] == {"chunk": 0, "routing_step": 1, "half": "ffn", "module": 0, "token_share": 0.99, "rows": 3}
    # A step that cannot spread its picks (layer-skip: one module or SKIP; K = N) is never a collapse.
    fixed = CollapseWatch(share=0.9, patience=1)
    assert fixed.update([{**row(1.0), "choices": 1}]) == []
    # Under router_init=layer_map the step's own module of the layer map is where routing starts, not a collapse.
    started = CollapseWatch(share=0.9, patience=1, expected={(1, "ffn"): {0}})
    assert started.update([row(1.0)]) == []
    assert len(started.update([{**row(0.0), "token_share": [0.0, 1.0, 0.0, 0.0]}])) == 1


def test_router_collapse_warning_lands_in_the_metrics(tmp_path, data_dir):
    """A run whose routers send nearly every token to one module (here: an impossible threshold) logs it."""
    train(mom_cfg(), tcfg(max_steps=6, eval_interval=0, collapse_share=0.01, collapse_patience=2, router_lr_mult=0.5),
          out=tmp_path / "run", data=str(data_dir), progress=False)
    warn = [r for r in read_metrics(tmp_path / "run") if r["type"] == "warning"]
    assert warn and all(r["kind"] == "router_collapse" for r in warn) and warn[0]["step"] >= 2
    assert {"chunk", "routing_step", "half", "module", "token_share"} <= set(warn[0])
    # ... with what to change, naming the current values
    assert warn[0]["advice"] == ("raise --model.balance_coef (now 0.01) or --model.z_coef (now 0.001), lower "
                                 "--train.router_lr_mult (now 0.5), raise --model.temperature (now 1), or centre "
                                 "the router input (--model.router_norm centered)")
    # a router that already centres its input is not told to
    assert "router_norm" not in collapse_advice(mom_cfg(router_norm="centered"), tcfg())


# ---------------------------------------------------------------------------------------------- resources
@pytest.mark.parametrize("error", ["cuda-oom", "host-oom"])
def test_out_of_memory_is_one_message_and_the_run_resumes_with_a_smaller_batch(tmp_path, data_dir, monkeypatch,
                                                                               error):
    real = MoM.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None, **kw):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 4:
                if error == "cuda-oom":
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return real(self, idx, targets, **kw)

    monkeypatch.setattr(MoM, "forward", forward)
    out = tmp_path / "run"
    cfg = tcfg(max_steps=6, ckpt_interval=2, eval_interval=0, batch_size=4, tokens_per_step=64)
    with pytest.raises(MomError) as e:
        train(mom_cfg(), cfg, out=out, data=str(data_dir), progress=False)
    msg = str(e.value)
    assert msg.startswith("out of memory at step 4") and "the last checkpoint (step 2) is intact" in msg
    assert "--train.tokens_per_step 64" in msg
    monkeypatch.undo()
    # The advice works: half the micro-batch, twice the accumulation, same tokens per step.
    res = train(None, cfg.replace(batch_size=2), out=out, resume=True, progress=False)
    assert res.finished and json.loads((out / "run.json").read_text())["resumed_at"] == [2]


def test_a_full_disk_while_logging_is_a_clear_message(tmp_path, data_dir, monkeypatch):
    out = tmp_path / "run"
    real = json.dumps
    calls = {"n": 0}

    def dumps(obj, *a, **kw):  # the metrics writer serialises each row just before writing it
        if isinstance(obj, dict) and obj.get("type") == "train":
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, *a, **kw)

    monkeypatch.setattr(json, "dumps", dumps)
    with pytest.raises(MomError) as e:
        train(mom_cfg(), tcfg(max_steps=6, ckpt_interval=2, eval_interval=0), out=out, data=str(data_dir),
              progress=False)
    assert "disk full at step 3 (No space left on device); the last checkpoint (step 2) is intact" in str(e.value)
    monkeypatch.undo()
    assert train(None, None, out=out, resume=True, progress=False).finished


# ---------------------------------------------------------------------------------------------- crash harness
def _check_run_dir(run: Path, floor: int) -> int:
    """After a kill: the latest checkpoint is complete and verifies, no step went backwards, and every step
    directory is whole (a checkpoint becomes visible only by renaming a finished directory)."""
    latest = read_latest(run) if run.exists() else None
    step = latest[0] if latest else 0
    assert step >= floor, f"checkpoint lost: latest step {step} < {floor}"
    for d in (run / "checkpoints").glob("step-*") if (run / "checkpoints").is_dir() else []:
        assert verify_manifest(d, required=True)
    if latest:  # and it loads
        model = MoM(mom_cfg())
        opt, names = make_optimizer(model, tcfg(), torch.device("cpu"))
        load_checkpoint(latest[1], model, opt, names, torch.device("cpu"))
    return step


def _names(d: Path) -> list[str]:
    """The entries of a directory a live `mom train` may be removing (a `--force` start clears the run): [] if gone."""
    try:
        return [p.name for p in os.scandir(d)]
    except FileNotFoundError:
        return []


def _tmp_step(name: str) -> int:
    """The step of a checkpoint being written (``.tmp-step-00000012-PID``), else -1."""
    m = re.match(r"\.tmp-step-(\d+)-", name)
    return int(m.group(1)) if m else -1


def _kill_harness(tmp_path: Path, data_dir: Path, kills: int, max_steps: int, seed: int) -> dict[str, int]:
    """SIGKILL a `mom train` subprocess ``kills`` times — alternately inside a checkpoint write (as soon as its
    temporary directory appears) and at a random moment — resuming each time, then let it finish; the metrics
    and the final weights must equal an uninterrupted run's bit for bit."""
    rng = random.Random(seed)
    cfg_path = tmp_path / "cfg.json"
    mom_cfg().save(cfg_path)
    settings = tcfg(max_steps=max_steps, ckpt_interval=1, eval_interval=5, keep_checkpoints=2)
    tc_path = tmp_path / "train.json"
    settings.save(tc_path)
    run, ref = tmp_path / "killed", tmp_path / "ref"
    base = ["train", "--config", str(cfg_path), "--train-config", str(tc_path), "--data", str(data_dir),
            "--no-progress"]
    # Both runs in subprocesses with the same thread count: CPU kernels may sum in another order with another one.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "mom.cli", *base, "--out", str(ref)], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    base += ["--out", str(run)]
    floor, stats = 0, {"kills": 0, "mid_checkpoint": 0, "startup": 0, "random": 0, "restarts_without_checkpoint": 0,
                    "left_a_partial_checkpoint": 0}
    while stats["kills"] < kills:
        fresh = read_latest(run) is None if run.exists() else True
        if fresh and run.exists():
            stats["restarts_without_checkpoint"] += 1
        argv = base + (["--force"] if fresh else ["--resume"])
        proc = subprocess.Popen([sys.executable, "-m", "mom.cli", *argv], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env, cwd=tmp_path)
        mode = "mid_checkpoint" if stats["kills"] % 2 == 0 else "startup" if stats["kills"] % 10 == 1 else "random"
        ckpts = run / "checkpoints"
        # Bounded progress per cycle so that many kills fit in one run: interrupt the write of checkpoint `target`
        # (as soon as its temporary directory appears), or kill a random few milliseconds after checkpoint `after`
        # (mid-step, mid-evaluation, mid-metrics-row or mid-checkpoint, wherever that lands), or during start-up.
        target, after = floor + rng.randint(1, 3), floor + rng.randint(0, 3)
        deadline, t_kill = time.time() + 120, time.time() + rng.uniform(0.1, 1.5)
        armed_at = None
        while proc.poll() is None and time.time() < deadline:
            if mode == "mid_checkpoint":  # (a later write than `target` will do if this poll missed its window)
                if any(_tmp_step(name) >= target for name in _names(ckpts)):
                    break
                time.sleep(0.0005)
            elif mode == "startup":
                if time.time() >= t_kill:
                    break
                time.sleep(0.01)
            else:
                if armed_at is None:
                    latest = read_latest(run) if run.exists() else None
                    if latest and latest[0] >= after:
                        armed_at = time.time() + rng.uniform(0, 0.05)
                    time.sleep(0.002)
                elif time.time() >= armed_at:
                    break
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        rc = proc.wait()
        assert rc in (0, -signal.SIGKILL), proc.stderr.read().decode()
        proc.stderr.close()
        if rc == 0:  # finished before the kill (max_steps too small for this many kills)
            break
        stats["kills"] += 1
        stats[mode] += 1
        # Evidence that the kill landed inside a write: the half-written temporary directory is still there
        # (the next start clears it).
        stats["left_a_partial_checkpoint"] += any(p.name.startswith(".tmp-") for p in os.scandir(ckpts)) \
            if ckpts.is_dir() else 0
        floor = _check_run_dir(run, floor)
    if not (run / "model.safetensors").exists():
        argv = base + (["--resume"] if read_latest(run) is not None else ["--force"])
        r = subprocess.run([sys.executable, "-m", "mom.cli", *argv], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=600)
        assert r.returncode == 0, r.stderr
    assert losses(run) == losses(ref)
    a, b = load_file(str(run / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return stats


def test_sigkill_at_twenty_moments_loses_nothing_and_resumes_bit_exactly(tmp_path, data_dir):
    stats = _kill_harness(tmp_path, data_dir, kills=20, max_steps=80, seed=0)
    print(stats)
    assert stats["kills"] == 20 and stats["mid_checkpoint"] >= 10 and stats["left_a_partial_checkpoint"] >= 8, stats


@pytest.mark.slow
def test_sigkill_harness_many_kills(tmp_path, data_dir):
    stats = _kill_harness(tmp_path, data_dir, kills=40, max_steps=150, seed=1)
    print(stats)
    assert stats["kills"] == 40 and stats["mid_checkpoint"] >= 20 and stats["left_a_partial_checkpoint"] >= 16, stats


def test_pruning_and_a_missing_pointer_never_leave_an_unusable_run(tmp_path, run_dir):
    """Two windows the kill harness found or implies: a checkpoint being pruned is renamed away before it is
    deleted (a kill inside the delete left a step directory without its manifest), and a run killed between
    renaming its first checkpoint into place and writing latest.json still resumes from it."""
    run = copy_run(run_dir, tmp_path / "run")
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000002", "step-00000004"]
    (ckpts / ".trash-step-00000001-99999").mkdir()  # what a kill inside a prune leaves now
    _prune(ckpts, keep=1, latest=ckpts / "step-00000004")
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000004"]
    (run / "latest.json").unlink()
    assert read_latest(run) == (4, ckpts / "step-00000004")
    r = cli("train", "--out", run, "--resume", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0 and "already finished (4 of 4 steps)" in r.stdout, r.stderr
