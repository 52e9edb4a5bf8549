"""torch elastic: a rank killed mid-run under ``torchrun --max-restarts`` makes the job restart and continue its
own run from the latest checkpoint, ending with the weights of an uninterrupted run, bit for bit (gloo, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mom.model.model import MoM
from mom.runs import read_latest, read_metrics
from tests.train.test_train import REPO, mom_cfg

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def _worker(agent: int, local_rank: str, restart: str) -> int | None:
    """The pid of the torchrun worker with this local rank in this attempt of the job."""
    for pid in _children(agent):
        env = _environ(pid)
        if env.get("LOCAL_RANK") == local_rank and env.get("TORCHELASTIC_RESTART_COUNT") == restart:
            return pid
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_a_killed_rank_restarts_the_job_which_finishes_like_an_uninterrupted_run(tmp_path, data_dir):
    cfg_path = tmp_path / "cfg.json"
    mom_cfg().save(cfg_path)
    args = ["train", "--config", cfg_path, "--data", data_dir, "--no-progress", "--train.max_steps", "16",
            "--train.batch_size", "2", "--train.seq_len", "16", "--train.tokens_per_step", "64",
            "--train.warmup_steps", "2", "--train.lr", "3e-3", "--train.eval_interval", "8",
            "--train.eval_tokens", "256", "--train.log_interval", "1", "--train.ckpt_interval", "4"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ref = subprocess.run([*TORCHRUN, "-m", "mom.cli", *map(str, args), "--out", str(tmp_path / "ref")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert ref.returncode == 0, ref.stderr[-3000:]

    run = tmp_path / "run"
    log = open(tmp_path / "elastic.log", "w")
    job = subprocess.Popen([*TORCHRUN, "--max-restarts=1", "--monitor-interval=0.2", "-m", "mom.cli",
                            *map(str, args), "--out", str(run)], stdout=log, stderr=subprocess.STDOUT, env=env)
    killed = None
    deadline = time.time() + 240
    while time.time() < deadline and job.poll() is None and killed is None:
        latest = read_latest(run) if (run / "latest.json").exists() else None
        if latest and latest[0] >= 4:  # a checkpoint exists and the run is mid-way: take rank 1 down
            pid = _worker(job.pid, "1", "0")
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed = latest[0]
        time.sleep(0.05)
    assert killed is not None and killed < 16, "the run finished before a rank could be killed"
    assert job.wait(timeout=300) == 0, (tmp_path / "elastic.log").read_text()[-3000:]
    out = (tmp_path / "elastic.log").read_text()
    assert "elastic restart 1: continuing" in out, out[-3000:]
    info = json.loads((run / "run.json").read_text())
    assert info["resumed_at"] and info["resumed_at"][0] >= killed
    wa, wb = MoM.from_pretrained(tmp_path / "ref").state_dict(), MoM.from_pretrained(run).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bit for bit

    def numbers(r):
        return [(x["type"], x["step"], x.get("loss"), x.get("val_loss")) for x in read_metrics(r)]

    assert numbers(run) == numbers(tmp_path / "ref")
