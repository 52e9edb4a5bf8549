"""The CPU benchmark suite of issue 7 ("on CPU, every change"), in one command: the training step of K2H2S at
GPT-2-small width with 4 and 8 modules per pool (grouped MoM, loop MoM, dense of equal active FLOPs), and tiny-mom
decoding eager and compiled. Each benchmark runs in its own process (`mom bench ... --json`); the results go to a
JSON file, and the table rows of docs/benchmarks.md are printed, stamped with the commit and the machine.

    python scripts/cpu_bench.py                      # ~4 minutes on the 2-core dev box; make bench does the same
    python scripts/cpu_bench.py --quick              # toy sizes, seconds: checks that the suite runs
    python scripts/cpu_bench.py --only train_8 --rounds 4

Ratios within one benchmark are measured side by side in one process; absolute figures move with the machine's
load, so compare those across runs with care (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def suite(quick: bool, rounds: int) -> dict[str, list[str]]:
    """Benchmark name -> arguments of ``mom bench``."""
    r = ["--rounds", str(rounds), "--json"]
    if quick:
        train = ["train", "--config", "tiny-mom", "--batch", "1", "--seq-len", "16"]
        decode = ["decode", "--new-tokens", "4", "--prompt-len", "4"]
        return {"train_4": train + ["--model.n_attn", "4", "--model.n_ffn", "4"] + r,
                "train_8": train + ["--model.n_attn", "8", "--model.n_ffn", "8"] + r,
                "decode_eager": decode + r,
                "decode_compiled": decode + ["--compile"] + r}
    # GPT-2-small width; vocabulary and context cut so that a step takes seconds, not minutes, on 2 cores
    train = ["train", "--config", "K2H2S", "--batch", "4", "--seq-len", "256", "--model.vocab_size", "8192",
             "--model.n_ctx", "256"]
    return {"train_4": train + ["--model.n_attn", "4", "--model.n_ffn", "4"] + r,
            "train_8": train + ["--model.n_attn", "8", "--model.n_ffn", "8"] + r,
            "decode_eager": ["decode"] + r,
            "decode_compiled": ["decode", "--compile"] + r}


def commit() -> str:
    """The checkout's short commit, marked ``-dirty`` with uncommitted changes to tracked files."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def train_row(name: str, r: dict, code: str) -> str:
    ms = {k: v["seconds_per_step"] * 1e3 for k, v in r["results"].items()}
    routed = r.get("mom_over_dense_time_per_routed_flop")
    return (f"| {name.split('_')[1]} | {code} | {ms['mom_grouped']:.1f} | {ms['mom_loop']:.1f} | {ms['dense']:.1f} | "
            f"{r['mom_over_dense_time_per_active_flop']:.2f}× | {f'{routed:.2f}×' if routed else ''} | "
            f"{r['loop_over_grouped']:.2f}× |")


def decode_row(name: str, r: dict, code: str) -> str:
    t = r["tokens_per_s"]
    return (f"| {name.split('_')[1]} ({code}) | {t['mom_cached']:.1f} | {t['mom_uncached']:.1f} | "
            f"{t['vanilla_equal_depth']:.1f} | {t['vanilla_equal_active']:.1f} | {r['cached_over_uncached']:.2f}× | "
            f"{r['mom_over_vanilla_equal_depth']:.2f}× | {r['mom_over_vanilla_equal_active']:.2f}× |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="toy sizes (a smoke run of the suite)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=None,
                    help="comma-separated subset of train_4,train_8,decode_eager,decode_compiled")
    ap.add_argument("--out", default="bench_cpu.json", help="where the results go (JSON)")
    args = ap.parse_args(argv)
    benches = suite(args.quick, args.rounds)
    if args.only:
        unknown = set(args.only.split(",")) - set(benches)
        if unknown:
            ap.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(benches)}")
        benches = {k: v for k, v in benches.items() if k in args.only.split(",")}
    code, results = commit(), {}
    for name, bench_args in benches.items():
        t0 = time.time()
        p = subprocess.run([sys.executable, "-m", "mom.cli", "bench", *bench_args], cwd=REPO, capture_output=True,
                           text=True)
        if p.returncode != 0:
            print(f"{name}: failed (exit {p.returncode})\n{p.stderr.strip()}", file=sys.stderr)
            return 1
        results[name] = json.loads(p.stdout)
        print(f"{name}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps({"commit": code, "quick": args.quick, "results": results}, indent=1))
    machine = next(iter(results.values()))["machine"] if results else ""
    print(f"machine: {machine}; commit {code}; results in {args.out}")
    train = [train_row(k, r, code) for k, r in results.items() if k.startswith("train")]
    if train:
        print("\n| modules per pool | code | grouped ms/step | loop ms/step | dense ms/step "
              "| MoM / dense per active FLOP | per routed FLOP | loop / grouped |\n"
              "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        print("\n".join(train))
    decode = [decode_row(k, r, code) for k, r in results.items() if k.startswith("decode")]
    if decode:
        print("\n| decode step | MoM cached tok/s | MoM uncached tok/s | vanilla, equal depth | vanilla, equal active |"
              " cached / uncached | MoM / vanilla (depth) | MoM / vanilla (active) |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        print("\n".join(decode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
