"""Benchmarks, measured side by side in one process (these machines are noisy, so only ratios from one run mean
much; the absolute figures are printed with the machine they came from).

``mom bench train`` / ``mom bench forward``: a MoM (fast ``grouped`` dispatcher and the ``loop`` reference)
against the dense GPT-2 with the same width and the same *active* matmul FLOPs per token (see
:func:`active_layers`), alternating after warm-up; reports time per step, tokens/s, achieved FLOP/s (analytic
FLOPs from :mod:`mom.model.flops`), peak-FLOPs utilisation on known GPUs, peak memory (the CUDA allocator, or on the
CPU an untimed step under :mod:`mom.analysis.memory`'s tensor tracker), and the MoM/dense time per active and per routed
FLOP.

``mom bench decode``: KV-cached vs uncached greedy decoding of the same model, and a MoM against vanilla models of
equal depth and of equal active FLOPs, alternating the contenders over several rounds after a warm-up and keeping
each one's best round; for the cached contenders also the KV-cache bytes and the peak memory of a run.
"""

from __future__ import annotations

import functools
import platform
import time

import torch

from mom.analysis.memory import measure_peak, optimizer_state, storage_bytes
from mom.analysis.routes import usage_from_routes
from mom.config.model import resolve_config
from mom.config.train import check_compile_mode, cuda_graphs
from mom.errors import ConfigError
from mom.inference.engine import Engine
from mom.model.flops import PEAK_FLOPS_SOURCE, active_layers, count, modules_per_step, peak_flops, vanilla_with_layers
from mom.model.kv_cache import KVCache
from mom.model.model import MoM
from mom.train.distributed import keep_freed_memory
from mom.train.optim import fused_adamw


def machine(device: str = "cpu") -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _decode_seconds(engine: Engine, prompts: list[list[int]], n: int) -> float:
    t0 = time.perf_counter()
    out = engine.generate(prompts, max_new_tokens=n, temperature=0, ignore_eos=True)
    dt = time.perf_counter() - t0
    assert all(len(g.tokens) == n for g in out)
    return dt


def bench_decode(config: str = "tiny-mom", new_tokens: int = 256, prompt_len: int = 16, rounds: int = 3,
                 uncached_tokens: int | None = None, device: str = "cpu", seed: int = 0,
                 compile: bool = False, batch: int = 1, compile_mode: str | None = None,
                 profile: str | None = None) -> dict:
    """Decode tokens/s: cached vs uncached (same MoM), and MoM vs vanilla models of (a) equal depth and (b) equal
    active FLOPs (all cached; with ``compile`` the cached decode steps of all of them are compiled, in
    ``compile_mode``: "reduce-overhead" replays them as CUDA graphs). ``batch`` random prompts of ``prompt_len``
    tokens decode together; tokens/s counts the tokens of all of them. ``profile``: a directory for the operator
    table of one more, profiled run of each cached contender."""
    check_compile_mode(compile, compile_mode)

    torch.manual_seed(seed)
    cfg = resolve_config(config)
    cfg = cfg.replace(n_ctx=max(cfg.n_ctx, prompt_len + new_tokens))  # random weights: any context fits
    n_active = active_layers(cfg)
    mom = MoM(cfg).to(device).eval()
    v_depth = MoM(vanilla_with_layers(cfg, cfg.depth)).to(device).eval()
    v_active = MoM(vanilla_with_layers(cfg, n_active)).to(device).eval()
    prompts = torch.randint(0, min(cfg.vocab_size, 50000), (batch, prompt_len),
                            generator=torch.Generator().manual_seed(seed)).tolist()
    cached = dict(compile=compile, compile_mode=compile_mode)
    contenders = {
        "mom_cached": (Engine(mom, **cached), new_tokens),
        "mom_uncached": (Engine(mom, use_cache=False), uncached_tokens or new_tokens),
        "vanilla_equal_depth": (Engine(v_depth, **cached), new_tokens),
        "vanilla_equal_active": (Engine(v_active, **cached), new_tokens),
    }
    for engine, _ in contenders.values():  # (every contender decodes exactly its number of tokens: ignore_eos)
        _decode_seconds(engine, prompts, 4)  # warm-up (and compilation)
    best = {k: float("inf") for k in contenders}
    for _ in range(rounds):
        for name, (engine, n) in contenders.items():
            best[name] = min(best[name], _decode_seconds(engine, prompts, n) / (n * batch))
    tps = {k: 1.0 / v for k, v in best.items()}
    # Memory of the cached contenders: the KV cache they allocate for this run, and where it can be measured the
    # peak of one more, untimed run on top of the weights.
    cache_bytes, peak_mem = {}, {}
    for name, (engine, n) in contenders.items():
        if not engine.use_cache:
            continue
        cache_bytes[name] = KVCache(engine.model, batch, engine.cache_length(prompt_len + n - 1)).nbytes
        if memory_measurable(device, compile, compile_mode):
            weights = storage_bytes([*engine.model.parameters(), *engine.model.buffers()])
            run = functools.partial(_decode_seconds, engine, prompts, n)
            peak_mem[name] = weights + measure_peak(torch.device(device), run)[0]
    if profile:
        profile_steps({name: (lambda e=engine, n=n: _decode_seconds(e, prompts, n))
                       for name, (engine, n) in contenders.items() if engine.use_cache}, profile, device)
    return {
        "benchmark": "decode", "machine": machine(device), "config": cfg.name, "depth": cfg.depth,
        "active_layers": n_active, "batch": batch, "new_tokens": new_tokens, "prompt_len": prompt_len,
        "rounds": rounds,
        "compile": compile, "compile_mode": compile_mode if compile else None, "tokens_per_s": tps,
        "cached_over_uncached": tps["mom_cached"] / tps["mom_uncached"],
        "mom_over_vanilla_equal_depth": tps["mom_cached"] / tps["vanilla_equal_depth"],
        "mom_over_vanilla_equal_active": tps["mom_cached"] / tps["vanilla_equal_active"],
        "kv_cache_bytes": cache_bytes, "peak_memory_bytes": peak_mem or None,
    }


def compiled_as(r: dict) -> str:
    """", compiled (mode)" for a compiled run's title line, or nothing."""
    if not r.get("compile"):
        return ""
    return ", compiled" + (f" ({r['compile_mode']})" if r.get("compile_mode") else "")


def format_decode(r: dict) -> str:
    t = r["tokens_per_s"]

    def memory(name: str) -> str:
        peak = (r.get("peak_memory_bytes") or {}).get(name)
        cache = r.get("kv_cache_bytes", {}).get(name)
        return (f", KV cache {human_bytes(cache)}" if cache else "") + (f", peak {human_bytes(peak)}" if peak else "")

    return "\n".join([
        f"decode benchmark on {r['machine']} — {r['config']} (depth {r['depth']}), "
        f"{r['batch']} sequence{'s' if r['batch'] > 1 else ''} × prompt {r['prompt_len']}, "
        f"{r['new_tokens']} new tokens, best of {r['rounds']} alternating rounds{compiled_as(r)}",
        f"  MoM cached              {t['mom_cached']:9.1f} tok/s{memory('mom_cached')}",
        f"  MoM uncached            {t['mom_uncached']:9.1f} tok/s",
        f"  vanilla, equal depth    {t['vanilla_equal_depth']:9.1f} tok/s   ({r['depth']} layers"
        f"{memory('vanilla_equal_depth')})",
        f"  vanilla, equal active   {t['vanilla_equal_active']:9.1f} tok/s   ({r['active_layers']} layers: same matmul "
        f"FLOPs{memory('vanilla_equal_active')})",
        f"  cached / uncached       {r['cached_over_uncached']:9.2f}×",
        f"  MoM / vanilla (depth)   {r['mom_over_vanilla_equal_depth']:9.2f}×",
        f"  MoM / vanilla (active)  {r['mom_over_vanilla_equal_active']:9.2f}×",
    ])


def bench_autocast(device: str):
    """The benchmarks' precision: bf16 autocast on CUDA, plain fp32 on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def make_step(model, idx, *, mode: str = "train", device: str = "cpu", compile: bool = False,
              compile_mode: str | None = None):
    """One benchmark step of ``model`` on the batch ``idx``: forward (``mode="forward"``, no grad) or forward,
    backward and fused AdamW (``"train"``), under bf16 autocast on CUDA, synchronised. ``compile``: under
    ``torch.compile(fullgraph=True, mode=compile_mode)``, except the loop reference (it syncs on ``nonzero`` per
    module, so it cannot compile whole and stays eager). Returns (step, optimiser)."""
    cuda = torch.device(device).type == "cuda"
    amp = bench_autocast(device)
    model.to(device).train(mode == "train")
    compiled = compile and model.config.dispatch != "loop"
    fwd = torch.compile(model, fullgraph=True, mode=compile_mode) if compiled else model
    graphs = compiled and cuda_graphs(compile_mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused_adamw(device)) if mode == "train" else None

    def step():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are done with
        if mode == "train":
            with amp:
                out = fwd(idx, idx)
            (out.loss + out.aux_loss).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), amp:
                fwd(idx)
        if cuda:
            torch.cuda.synchronize()
    return step, opt


CONTENDERS = ("mom_grouped", "mom_loop", "dense")
def memory_measurable(device: str, compile: bool, compile_mode: str | None) -> bool:
    """Whether a contender's peak memory can be measured: on CUDA by the allocator, except under CUDA graphs (their
    memory pool is reserved at capture, before any baseline); on the CPU by mom.analysis.memory's tensor tracker,
    which sees every operator's outputs but not the insides of compiled code, so eager only."""
    if torch.device(device).type == "cuda":
        return not (compile and cuda_graphs(compile_mode))
    return not compile


def bench_step(config: str = "K2H2S", mode: str = "train", batch: int = 4, seq_len: int = 128, rounds: int = 3,
               warmup: int = 2, device: str = "cpu", seed: int = 0, overrides: dict | None = None,
               compile: bool = False, only: tuple[str, ...] = CONTENDERS, profile: str | None = None,
               compile_mode: str | None = None) -> dict:
    """Time one training (or forward) step of a MoM with both dispatchers and of its dense counterpart
    (``compile``: the grouped MoM and the dense model under ``torch.compile(fullgraph=True, mode=compile_mode)``,
    warm-up steps absorbing the compilation; the loop reference stays eager). ``compile_mode="reduce-overhead"``
    replays each compiled forward and backward as CUDA graphs, which takes the host's kernel launches off the
    step: a routed step launches more, smaller kernels than a dense one. ``only``: a subset of
    :data:`CONTENDERS` (ratios need both of their contenders). ``profile``: after timing, profile one more step of
    each contender and write
    its top operators by device time to ``<profile>/<contender>.txt``."""
    check_compile_mode(compile, compile_mode)
    unknown = set(only) - set(CONTENDERS)
    if unknown or not only:
        raise ConfigError(f"unknown contender(s) {sorted(unknown)}; choose from {', '.join(CONTENDERS)}")
    cuda = torch.device(device).type == "cuda"
    if not cuda:
        keep_freed_memory()  # as `mom train` does: no page-fault storm from glibc unmapping big blocks each step
    torch.manual_seed(seed)
    cfg = resolve_config(config)
    if overrides:
        cfg = cfg.replace(**overrides)
    if seq_len > cfg.n_ctx:
        raise ConfigError(f"--seq-len {seq_len} exceeds {cfg.name}'s context length n_ctx={cfg.n_ctx} "
                          "(raise it with --model.n_ctx)")
    dense_cfg = vanilla_with_layers(cfg, active_layers(cfg))
    amp = bench_autocast(device)
    configs = {"mom_grouped": cfg.replace(dispatch="grouped"), "mom_loop": cfg.replace(dispatch="loop"),
               "dense": dense_cfg}
    models = {k: MoM(c) for k, c in configs.items() if k in only}
    if "mom_grouped" in models and "mom_loop" in models:
        models["mom_loop"].load_state_dict(models["mom_grouped"].state_dict())
    idx = torch.randint(0, cfg.vocab_size, (batch, seq_len), device=device)

    steps, opts = {}, {}
    for k, m in models.items():
        steps[k], opts[k] = make_step(m, idx, mode=mode, device=device, compile=compile, compile_mode=compile_mode)
    for step in steps.values():
        for _ in range(warmup):
            step()
    best = {k: float("inf") for k in steps}
    peak_mem: dict[str, int | None] = {k: None for k in steps}
    # CUDA peak memory per contender: the allocator's peak during its steps, less what every contender keeps
    # resident (weights, AdamW state), plus its own resident bytes: what it would need alone on the device.
    measure_mem = cuda and memory_measurable(device, compile, compile_mode)
    resident = torch.cuda.memory_allocated() if cuda else 0
    own = {k: storage_bytes([*m.parameters(), *m.buffers(), *optimizer_state(opts[k])]) for k, m in models.items()}
    for _ in range(rounds):
        for k, step in steps.items():
            if measure_mem:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            step()
            best[k] = min(best[k], time.perf_counter() - t0)
            if measure_mem:
                peak_mem[k] = max(peak_mem[k] or 0, torch.cuda.max_memory_allocated() - resident + own[k])
    if not cuda and memory_measurable(device, compile, compile_mode):
        # CPU: no allocator statistics, so one more, untimed step under the tensor tracker: the tensors it creates,
        # at their peak, on top of the contender's own resident bytes.
        for k, step in steps.items():
            peak_mem[k] = own[k] + measure_peak(torch.device("cpu"), step)[0]
    if profile:
        profile_steps(steps, profile, device)
    tokens = batch * seq_len
    flops_tok = {k: count(m.config, seq_len) for k, m in models.items()}
    per_tok = {k: (c.train_flops_per_token if mode == "train" else c.forward_flops_per_token)
               for k, c in flops_tok.items()}
    peak = peak_flops(device)
    rows = {}
    for k in steps:
        achieved = per_tok[k] * tokens / best[k]
        rows[k] = {"seconds_per_step": best[k], "tokens_per_s": tokens / best[k], "flops_per_token": per_tok[k],
                   "achieved_flops": achieved, "mfu": achieved / peak if peak else None,
                   "peak_memory_bytes": peak_mem[k]}
    per_flop = {k: best[k] / per_tok[k] for k in steps}
    # Active FLOPs count every one of the K picks as a real module. A SKIP pick computes nothing, so per FLOP that
    # is routed (the picks measured on this batch, with the weights as the timed steps left them) is the fairer
    # comparison when the routers pick SKIP often, as they do at initialisation.
    usage, per_routed_flop = None, {}
    mom_name = next((k for k in ("mom_grouped", "mom_loop") if k in models), None)
    if mom_name is not None and cfg.chunks:
        with torch.no_grad(), amp:
            usage = usage_from_routes(models[mom_name](idx, return_routes=True).routes)
        c = count(cfg, seq_len, usage)
        routed = c.train_flops_per_token if mode == "train" else c.forward_flops_per_token
        per_routed_flop = {k: best[k] / (routed if k.startswith("mom") else per_tok[k]) for k in steps}

    def ratio(a: dict, x: str, y: str) -> float | None:
        return a[x] / a[y] if x in a and y in a else None

    return {
        "benchmark": mode, "machine": machine(device), "device": device, "config": cfg.name,
        "dense_layers": dense_cfg.bottom,
        "vocab_size": cfg.vocab_size, "batch": batch, "seq_len": seq_len, "rounds": rounds, "compile": compile,
        "compile_mode": compile_mode if compile else None, "results": rows, "peak_flops": peak,
        "peak_flops_source": PEAK_FLOPS_SOURCE if peak else None,
        "mom_over_dense_time_per_active_flop": ratio(per_flop, "mom_grouped", "dense"),
        "routed_modules_per_step": usage,
        "modules_per_step_if_no_skip": {h: modules_per_step(cfg, h) for h in usage} if usage else None,
        "mom_over_dense_time_per_routed_flop": ratio(per_routed_flop, "mom_grouped", "dense"),
        "loop_over_grouped": ratio(best, "mom_loop", "mom_grouped"),
    }


def profile_steps(steps: dict, directory: str, device: str, rows: int = 400) -> None:
    """One profiled step per contender; writes its operator table sorted by self device time (CPU time on CPU)."""
    from pathlib import Path

    from torch.profiler import ProfilerActivity, profile

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    for name, step in steps.items():
        step()  # unprofiled, right before: the profiled step then sees the memory this contender's steps reuse
        with profile(activities=activities) as prof:
            step()
        (out / f"{name}.txt").write_text(prof.key_averages().table(sort_by=key, row_limit=rows))


def human_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def format_step(r: dict) -> str:
    lines = [f"{r['benchmark']} benchmark on {r['machine']} — {r['config']} vs dense {r['dense_layers']}-layer GPT-2 "
             f"(equal active matmul FLOPs), batch {r['batch']}×{r['seq_len']}, best of {r['rounds']} alternating rounds"
             f"{compiled_as(r)}"]
    for k, v in r["results"].items():
        mfu = f", MFU {100 * v['mfu']:.1f}%" if v["mfu"] else ""
        mem = f", peak {human_bytes(v['peak_memory_bytes'])}" if v.get("peak_memory_bytes") else ""
        lines.append(f"  {k:<12} {v['seconds_per_step'] * 1e3:9.1f} ms/step {v['tokens_per_s']:10.0f} tok/s "
                     f"{v['achieved_flops'] / 1e12:8.3f} TFLOP/s{mfu}{mem}")
    if r["mom_over_dense_time_per_active_flop"] is not None:
        lines.append(f"  MoM / dense time per active FLOP  {r['mom_over_dense_time_per_active_flop']:.2f}×")
    if r.get("mom_over_dense_time_per_routed_flop") is not None:
        picks = ", ".join(f"{h} {u:.2f} of {r['modules_per_step_if_no_skip'][h]:g}"
                          for h, u in r["routed_modules_per_step"].items())
        lines.append(f"  MoM / dense time per routed FLOP  {r['mom_over_dense_time_per_routed_flop']:.2f}×"
                     f"  (real picks per step: {picks})")
    if r["loop_over_grouped"] is not None:
        lines.append(f"  loop / grouped time per step       {r['loop_over_grouped']:.2f}×")
    return "\n".join(lines)
