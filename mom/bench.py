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


def vanilla_with_layers(cfg: MoMConfig, layers: int) -> MoMConfig:
    return MoMConfig(name=f"vanilla-{layers}L", vocab_size=cfg.vocab_size, n_ctx=cfg.n_ctx, d_model=cfg.d_model,
                     n_head=cfg.n_head, d_ff=cfg.d_ff, bottom=layers, top=0, chunks=0)


def active_layers(cfg: MoMConfig) -> int:
    """Vanilla layers with the same active matmul FLOPs per token as ``cfg`` (routers excluded), rounded."""
    from mom.flops import count, router_matmul_params

    c = count(cfg)
    routers = cfg.chunks * cfg.steps * (router_matmul_params(cfg, "attn") + router_matmul_params(cfg, "ffn"))
    per_layer = 4 * cfg.d_model ** 2 + 2 * cfg.d_model * cfg.d_ff
    return max(1, round((c.matmul_params_active - routers - cfg.vocab_size * cfg.d_model) / per_layer))


def _decode_seconds(engine: Engine, prompt: list[int], n: int) -> float:
    t0 = time.perf_counter()
    out = engine.generate([prompt], max_new_tokens=n, temperature=0)
    dt = time.perf_counter() - t0
    assert len(out[0].tokens) == n
    return dt


def bench_decode(config: str = "tiny-mom", new_tokens: int = 256, prompt_len: int = 16, rounds: int = 3,
                 uncached_tokens: int | None = None, device: str = "cpu", seed: int = 0,
                 compile: bool = False) -> dict:
    """Decode tokens/s: cached vs uncached (same MoM), and MoM vs vanilla models of (a) equal depth and (b) equal
    active FLOPs (all cached; with ``compile`` the cached decode steps of all of them are compiled)."""
    from mom.model import MoM

    torch.manual_seed(seed)
    cfg = resolve_config(config)
    cfg = cfg.replace(n_ctx=max(cfg.n_ctx, prompt_len + new_tokens))  # random weights: any context fits
    n_active = active_layers(cfg)
    mom = MoM(cfg).to(device).eval()
    v_depth = MoM(vanilla_with_layers(cfg, cfg.depth)).to(device).eval()
    v_active = MoM(vanilla_with_layers(cfg, n_active)).to(device).eval()
    prompt = torch.randint(0, min(cfg.vocab_size, 50000), (prompt_len,), generator=torch.Generator().manual_seed(seed)).tolist()
    contenders = {
        "mom_cached": (Engine(mom, compile=compile), new_tokens),
        "mom_uncached": (Engine(mom, use_cache=False), uncached_tokens or new_tokens),
        "vanilla_equal_depth": (Engine(v_depth, compile=compile), new_tokens),
        "vanilla_equal_active": (Engine(v_active, compile=compile), new_tokens),
    }
    for engine, _ in contenders.values():
        engine.eot = -1  # every contender decodes exactly its number of tokens
        _decode_seconds(engine, prompt, 4)  # warm-up (and compilation)
    best = {k: float("inf") for k in contenders}
    for _ in range(rounds):
        for name, (engine, n) in contenders.items():
            best[name] = min(best[name], _decode_seconds(engine, prompt, n) / n)
    tps = {k: 1.0 / v for k, v in best.items()}
    return {
        "benchmark": "decode", "machine": machine(), "config": cfg.name, "depth": cfg.depth,
        "active_layers": n_active, "new_tokens": new_tokens, "prompt_len": prompt_len, "rounds": rounds,
        "compile": compile, "tokens_per_s": tps,
        "cached_over_uncached": tps["mom_cached"] / tps["mom_uncached"],
        "mom_over_vanilla_equal_depth": tps["mom_cached"] / tps["vanilla_equal_depth"],
        "mom_over_vanilla_equal_active": tps["mom_cached"] / tps["vanilla_equal_active"],
    }


def format_decode(r: dict) -> str:
    t = r["tokens_per_s"]
    return "\n".join([
        f"decode benchmark on {r['machine']} — {r['config']} (depth {r['depth']}), prompt {r['prompt_len']}, "
        f"{r['new_tokens']} new tokens, best of {r['rounds']} alternating rounds{', compiled' if r['compile'] else ''}",
        f"  MoM cached              {t['mom_cached']:9.1f} tok/s",
        f"  MoM uncached            {t['mom_uncached']:9.1f} tok/s",
        f"  vanilla, equal depth    {t['vanilla_equal_depth']:9.1f} tok/s   ({r['depth']} layers)",
        f"  vanilla, equal active   {t['vanilla_equal_active']:9.1f} tok/s   ({r['active_layers']} layers: same matmul FLOPs)",
        f"  cached / uncached       {r['cached_over_uncached']:9.2f}×",
        f"  MoM / vanilla (depth)   {r['mom_over_vanilla_equal_depth']:9.2f}×",
        f"  MoM / vanilla (active)  {r['mom_over_vanilla_equal_active']:9.2f}×",
    ])


def cmd_bench(args, overrides) -> int:
    r = bench_decode(args.config, args.new_tokens, args.prompt_len, args.rounds, device=args.device,
                     compile=args.compile)
    print(json.dumps(r, indent=2) if args.json else format_decode(r))
    return 0
