"""Smoke runs of `mom bench train|forward` (the benchmark itself is not a test: only that it runs and reports)."""

import json

import pytest
import torch

from mom.analysis.bench import bench_step, format_step
from mom.config.model import resolve_config
from mom.errors import ConfigError
from mom.model.model import MoM

TINY = dict(vocab_size=512, n_ctx=32, d_model=64, n_head=2, d_ff=128)


def test_bench_train_reports_all_contenders_and_ratios():
    r = bench_step("tiny-mom", "train", batch=1, seq_len=16, rounds=1, warmup=1, overrides=TINY)
    assert set(r["results"]) == {"mom_grouped", "mom_loop", "dense"}
    params = sum(p.numel() * 4 for p in MoM(resolve_config("tiny-mom").replace(**TINY)).parameters())
    for row in r["results"].values():
        assert row["seconds_per_step"] > 0 and row["tokens_per_s"] > 0 and row["mfu"] is None  # no peak on CPU
    # CPU peak memory, from the tensor tracker: weights, AdamW's two moments and the gradients at least
    for name in ("mom_grouped", "mom_loop"):
        assert r["results"][name]["peak_memory_bytes"] > 4 * params
    assert r["results"]["dense"]["peak_memory_bytes"] > 0
    assert "MiB" in format_step(r)
    assert r["mom_over_dense_time_per_active_flop"] > 0 and r["loop_over_grouped"] > 0
    assert r["vocab_size"] == 512 and json.loads(json.dumps(r)) == r
    assert "MoM / dense" in format_step(r)
    # SKIP picks compute nothing: the measured real picks are at most K, so per routed FLOP MoM is no cheaper.
    for half, used in r["routed_modules_per_step"].items():
        assert 0 < used <= r["modules_per_step_if_no_skip"][half]
    assert r["mom_over_dense_time_per_routed_flop"] >= r["mom_over_dense_time_per_active_flop"]
    assert "per routed FLOP" in format_step(r)


def test_bench_only_and_profile(tmp_path):
    r = bench_step("tiny-mom", "forward", batch=1, seq_len=16, rounds=1, warmup=1, overrides=TINY,
                   only=("dense",), profile=str(tmp_path / "prof"))
    assert set(r["results"]) == {"dense"}
    assert r["mom_over_dense_time_per_active_flop"] is None and r["loop_over_grouped"] is None
    assert r["mom_over_dense_time_per_routed_flop"] is None
    assert "MoM / dense" not in format_step(r)
    table = (tmp_path / "prof" / "dense.txt").read_text()
    assert "aten::" in table and "Self CPU" in table


def test_bench_unknown_contender_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown contender"):
        bench_step("tiny-mom", "train", only=("mom_grouped", "fast"))


def test_bench_compile_mode_is_checked_and_reported():
    with pytest.raises(ConfigError, match="unknown compile mode"):
        bench_step("tiny-mom", "train", compile=True, compile_mode="fastest")
    with pytest.raises(ConfigError, match="needs --compile"):
        bench_step("tiny-mom", "train", compile_mode="reduce-overhead")
    r = bench_step("tiny-mom", "forward", batch=1, seq_len=16, rounds=1, warmup=1, overrides=TINY, only=("dense",),
                   compile=True, compile_mode="max-autotune-no-cudagraphs")
    assert r["compile_mode"] == "max-autotune-no-cudagraphs" and "(max-autotune-no-cudagraphs)" in format_step(r)


@pytest.mark.parametrize("args, message", [
    (["bench", "forward", "--config", "tiny", "--batch", "0"], "--batch must be ≥ 1, got 0"),
    (["bench", "forward", "--config", "tiny", "--rounds", "0"], "--rounds must be ≥ 1, got 0"),
    (["bench", "decode", "--new-tokens", "0"], "--new-tokens must be ≥ 1, got 0"),
    (["bench", "train", "--config", "tiny", "--seq-len", "100000"], "--seq-len 100000 exceeds tiny's context length"),
    (["bench", "decode", "--device", "gpu0"], "--device: unknown device 'gpu0'"),
    pytest.param(["bench", "train", "--device", "cuda"], "--device cuda: no CUDA device is available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    (["bench", "train", "--device", "cuda:64"], "CUDA device" if torch.cuda.is_available() else "no CUDA device"),
])
def test_bench_sizes_and_device_are_checked(args, message, capsys):
    # found by a user audit: a traceback, or "inf ms/step" with exit 0
    from mom.cli.main import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mom: error: ") and message in err and err.count("\n") == 1, err


def test_cpu_bench_suite_runs_and_prints_the_tables(tmp_path, capsys):
    """scripts/cpu_bench.py (make bench) at toy sizes: each benchmark in its own process, JSON written, and the
    table rows of docs/benchmarks.md printed with the commit."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "cpu_bench.py"
    spec = importlib.util.spec_from_file_location("cpu_bench", path)
    cpu_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu_bench)
    out = tmp_path / "bench.json"
    assert cpu_bench.main(["--quick", "--rounds", "1", "--only", "train_8,decode_eager", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert set(saved["results"]) == {"train_8", "decode_eager"} and saved["quick"]
    assert saved["results"]["train_8"]["results"]["mom_grouped"]["seconds_per_step"] > 0
    printed = capsys.readouterr().out
    assert f"| 8 | {saved['commit']} |" in printed and f"| eager ({saved['commit']}) |" in printed
    with pytest.raises(SystemExit):
        cpu_bench.main(["--only", "train_16"])
    assert "unknown benchmark(s) train_16" in capsys.readouterr().err
