"""Benchmarks, measured side by side in one process (these machines are noisy, so only ratios from one run mean
much; the absolute figures are printed with the machine they came from).

``mom bench decode``: KV-cached vs uncached greedy decoding of the same model, and a MoM against the vanilla model
of equal active depth (same width, as many vanilla layers as the MoM's depth), alternating the contenders over
several rounds after a warm-up and keeping each one's best round.
"""

from __future__ import annotations

import json
import platform
import time

import torch

from mom.config import MoMConfig, resolve_config
from mom.engine import Engine


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def vanilla_of_equal_depth(cfg: MoMConfig) -> MoMConfig:
    return MoMConfig(name=f"vanilla-{cfg.depth}L", vocab_size=cfg.vocab_size, n_ctx=cfg.n_ctx, d_model=cfg.d_model,
                     n_head=cfg.n_head, d_ff=cfg.d_ff, bottom=cfg.depth, top=0, chunks=0)


def _decode_seconds(engine: Engine, prompt: list[int], n: int) -> float:
    t0 = time.perf_counter()
    out = engine.generate([prompt], max_new_tokens=n, temperature=0)
    dt = time.perf_counter() - t0
    assert len(out[0].tokens) == n
    return dt


def bench_decode(config: str = "tiny-mom", new_tokens: int = 256, prompt_len: int = 16, rounds: int = 3,
                 uncached_tokens: int | None = None, device: str = "cpu", seed: int = 0) -> dict:
    """Decode tokens/s: cached vs uncached (same MoM), and MoM vs vanilla of equal depth (both cached)."""
    from mom.model import MoM

    torch.manual_seed(seed)
    cfg = resolve_config(config)
    cfg = cfg.replace(n_ctx=max(cfg.n_ctx, prompt_len + new_tokens))  # random weights: any context fits
    mom = MoM(cfg).to(device).eval()
    vanilla = MoM(vanilla_of_equal_depth(cfg)).to(device).eval()
    # The vanilla model never emits EOT early either: both decode exactly `new_tokens` (EOT is ignored below).
    prompt = torch.randint(0, min(cfg.vocab_size, 50000), (prompt_len,), generator=torch.Generator().manual_seed(seed)).tolist()
    contenders = {
        "mom_cached": (Engine(mom), new_tokens),
        "mom_uncached": (Engine(mom, use_cache=False), uncached_tokens or new_tokens),
        "vanilla_cached": (Engine(vanilla), new_tokens),
    }
    for engine, _ in contenders.values():
        engine.eot = -1  # measure a fixed number of tokens
        _decode_seconds(engine, prompt, 4)  # warm-up
    best = {k: float("inf") for k in contenders}
    for _ in range(rounds):
        for name, (engine, n) in contenders.items():
            best[name] = min(best[name], _decode_seconds(engine, prompt, n) / n)
    tps = {k: 1.0 / v for k, v in best.items()}
    return {
        "benchmark": "decode", "machine": machine(), "config": cfg.name, "depth": cfg.depth,
        "vanilla_depth": cfg.depth, "new_tokens": new_tokens, "prompt_len": prompt_len, "rounds": rounds,
        "tokens_per_s": tps,
        "cached_over_uncached": tps["mom_cached"] / tps["mom_uncached"],
        "mom_over_vanilla": tps["mom_cached"] / tps["vanilla_cached"],
    }


def format_decode(r: dict) -> str:
    t = r["tokens_per_s"]
    return "\n".join([
        f"decode benchmark on {r['machine']} — {r['config']} (depth {r['depth']}), prompt {r['prompt_len']}, "
        f"{r['new_tokens']} new tokens, best of {r['rounds']} alternating rounds",
        f"  MoM cached        {t['mom_cached']:9.1f} tok/s",
        f"  MoM uncached      {t['mom_uncached']:9.1f} tok/s",
        f"  vanilla cached    {t['vanilla_cached']:9.1f} tok/s   (vanilla GPT-2 of equal depth {r['vanilla_depth']})",
        f"  cached / uncached {r['cached_over_uncached']:9.2f}×",
        f"  MoM / vanilla     {r['mom_over_vanilla']:9.2f}×",
    ])


def cmd_bench(args, overrides) -> int:
    r = bench_decode(args.config, args.new_tokens, args.prompt_len, args.rounds, device=args.device)
    print(json.dumps(r, indent=2) if args.json else format_decode(r))
    return 0
