"""``mom routes``, ``mom flops``, ``mom prune`` and ``mom bench``: measuring trained or random models (``mom memory``:
:mod:`mom.cli.memory`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mom.analysis.bench import CONTENDERS, bench_decode, bench_step, format_decode, format_step
from mom.analysis.flops import measure_flops
from mom.analysis.prune import check_out, check_prunable, keep_count, prune, save_atomic
from mom.analysis.report import render_html, render_png, report_from
from mom.analysis.routes import collect_stats
from mom.cli.common import check_output_file, check_positive, iter_batches, resolve_data_dir, write_atomic
from mom.config.model import HALVES, resolve_config
from mom.config.train import COMPILE_MODES
from mom.data.tokens import val_windows
from mom.device import pick_device
from mom.errors import MomError
from mom.model.flops import count, modules_per_step, vanilla_counterpart
from mom.model.route_health import format_health
from mom.runs import load_model, resolve_model_dir

OUT_FORMATS = (".png", ".html", ".json")


def add_routes_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, metavar="DIR", help="a mom model directory (or a training run)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="analyse this text (the model's tokenizer: its tokenizer.json, else GPT-2; "
                                    "truncated to the context length)")
    src.add_argument("--data", metavar="DIR", help="analyse validation windows of this dataset (val.bin)")
    p.add_argument("--out", metavar="FILE", help="report file: .png (figure), .html (self-contained page with tables "
                                                 "and the figure) or .json (numbers); needed unless --json")
    p.add_argument("--json", action="store_true", help="print the numbers (what a .json report holds: usage, SKIP, "
                                                       "effective depth, routing health per chunk) to stdout")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per window with --data (default: n_ctx, ≤ 256)")
    p.add_argument("--windows", type=int, default=16, help="validation windows with --data (default 16)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward with --data")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens shown in the route heatmap (default 64)")
    p.add_argument("--device", default="auto", help="cpu, cuda (default: cuda if available)")
    p.set_defaults(func=run_routes, overrides=("model",))


def routes_out(args: argparse.Namespace) -> Path | None:
    """``mom routes``' report file, checked before any work (None: ``--json`` alone)."""
    if args.out is None:
        if not args.json:
            raise MomError("give --out FILE (.png, .html or .json) or --json")
        return None
    out = Path(args.out)
    if out.suffix.lower() not in OUT_FORMATS:
        raise MomError(f"--out {out}: unsupported extension '{out.suffix}' (use .png, .html or .json)")
    check_output_file(out, "--out")
    return out


def run_routes(args: argparse.Namespace, overrides: dict[str, dict[str, str]]) -> int:
    out = routes_out(args)
    for name in ("seq_len", "windows", "batch_size", "max_tokens"):
        check_positive("--" + name.replace("_", "-"), getattr(args, name))
    device = pick_device(args.device)
    model = load_model(args.ckpt, device, **overrides.get("model", {}))
    cfg = model.config
    if cfg.is_vanilla:
        raise MomError(f"{args.ckpt}: '{cfg.name}' is a vanilla model (no assembled block): nothing is routed")

    if args.text is not None:
        if not args.text.strip():
            raise MomError("--text is empty")
        tok = model.tokenizer
        ids = tok.encode_ordinary(args.text)[: cfg.n_ctx]
        if max(ids) >= cfg.vocab_size:
            raise MomError(f"--text: {tok.name} token id {max(ids)} is outside this model's vocabulary "
                           f"({cfg.vocab_size}); use --data with tokens of its vocabulary")
        windows = torch.tensor([ids], dtype=torch.long)
        source = f"--text ({len(ids)} tokens{', truncated to n_ctx' if len(ids) == cfg.n_ctx else ''})"
    else:
        seq_len = args.seq_len or min(cfg.n_ctx, 256)
        if seq_len > cfg.n_ctx:
            raise MomError(f"--seq-len {seq_len} exceeds the model's context length {cfg.n_ctx}")
        windows = val_windows(args.data, cfg.vocab_size, seq_len, args.windows, getattr(model, "tokenizer", None))
        source = f"{windows.shape[0]} validation windows × {seq_len} tokens of {args.data}"
    stats, first = collect_stats(model, iter_batches(windows, args.batch_size, device))
    suffix = None if out is None else out.suffix.lower()
    numbers = (json.dumps({"model": str(args.ckpt), "source": source, **stats.summary()}, indent=1)
               if args.json or suffix == ".json" else None)
    if suffix == ".json":
        write_atomic(out, numbers)
    elif out is not None:
        rep = report_from(stats, first, windows[0], cfg, args.max_tokens, source, str(args.ckpt), model.tokenizer)
        write_atomic(out, render_html(rep) if suffix == ".html" else render_png(rep))
    if args.json:
        print(numbers)
        return 0
    print(f"{stats.tokens:,} tokens: mean effective depth {stats.mean_depth():.2f} of {cfg.depth} layers, "
          f"{stats.mean_applications():.2f} module applications per token; wrote {out}")
    for c in stats.chunks():
        health = {h: stats.health(c, h) for h in HALVES if any(k[0] == c and k[2] == h for k in stats.steps)}
        health = {h: v for h, v in health.items() if v["skip"] is not None}
        if health:
            print(f"chunk {c} routing: {format_health(health)}")
    return 0


ROWS = (("params", "parameters"), ("active_params", "active parameters / token"),
        ("forward_flops_per_token", "forward FLOPs / token"), ("train_flops_per_token", "training FLOPs / token"),
        ("depth", "depth (layers)"), ("attention_cores", "attention cores"))


def _si(v: float) -> str:
    """A count with an SI prefix, 4 significant digits (12.35M, 1.105G)."""
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.4g}{unit}"
    return f"{v:g}"


def add_flops_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a preset or JSON config: analytic counts (token choice: no SKIP assumed)")
    src.add_argument("--ckpt", metavar="DIR", help="a mom model directory (or a training run): counts with the "
                                                   "module usage and SKIP rate measured on data")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length T of the attention term and of the "
                                                             "measuring windows (default: n_ctx)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="with --ckpt: dataset whose val split is measured (default: data/builtin if prepared)")
    p.add_argument("--windows", type=int, default=8, help="with --ckpt: validation windows measured (default 8)")
    p.add_argument("--batch-size", type=int, default=4, help="with --ckpt: windows per forward (default 4)")
    p.add_argument("--device", default="auto", help="with --ckpt: cpu, cuda (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_flops, overrides=("model",))


def run_flops(args, overrides) -> int:
    for name in ("seq_len", "windows", "batch_size"):
        check_positive("--" + name.replace("_", "-"), getattr(args, name))
    if args.config is not None:
        if args.data:
            raise MomError("--data needs --ckpt (a config has random weights: its routing means nothing)")
        model, cfg = None, resolve_config(args.config)
        if overrides.get("model"):
            cfg = cfg.replace(**overrides["model"])
    else:
        device = pick_device(args.device)
        model = load_model(args.ckpt, device, **overrides.get("model", {}))
        cfg = model.config
    T = args.seq_len or cfg.n_ctx
    if T > cfg.n_ctx:
        raise MomError(f"--seq-len {T} exceeds the model's context length {cfg.n_ctx}")
    measured = usage = source = None
    if model is not None and not cfg.is_vanilla:  # a checkpoint's routers decide: measure what they pick
        data = resolve_data_dir(args.data)
        windows = val_windows(data, cfg.vocab_size, T, args.windows, getattr(model, "tokenizer", None))
        measured = measure_flops(model, iter_batches(windows, args.batch_size, device))
        usage = measured.usage
        source = f"{windows.shape[0]} validation windows × {T} tokens of {data}"
    base_cfg = vanilla_counterpart(cfg)
    mine, base = count(cfg, T, usage), count(base_cfg, T)
    ratios = {key: getattr(mine, key) / getattr(base, key) for key, _ in ROWS}
    result = {"config": cfg.name, "vanilla_config": base_cfg.name, "seq_len": T, "model": mine.as_dict(),
              "vanilla": base.as_dict(), "ratios": ratios, "usage": usage, "measured_on": source,
              "usage_upper_bound": {h: modules_per_step(cfg, h) for h in ("attn", "ffn")} if cfg.chunks else None}
    if measured is not None:
        result["flop_counter_forward_per_token"] = measured.forward_per_token
    if args.json:

        print(json.dumps(result, indent=2))
        return 0
    what = f"{cfg.name}{' (' + str(args.ckpt) + ')' if args.ckpt else ''}, T = {T}"
    if cfg.is_vanilla:
        print(f"FLOPs of {what} (a vanilla model: its own counterpart)")
        print(f"{'':<28} {cfg.name[:16]:>16}")
        for key, label in ROWS:
            print(f"{label:<28} {_si(getattr(mine, key)):>16}")
    else:
        print(f"FLOPs of {what}; vanilla counterpart {base_cfg.name}: {base_cfg.depth} GPT-2 layers of the same "
              "width (equal parameters up to the routers)")
        print(f"{'':<28} {cfg.name[:16]:>16} {base_cfg.name[:16]:>16} {'ratio':>7}")
        for key, label in ROWS:
            a, b = getattr(mine, key), getattr(base, key)
            print(f"{label:<28} {_si(a):>16} {_si(b):>16} {ratios[key]:7.3f}")
    if cfg.chunks and usage is None:
        print("routing: analytic upper bound — every pick is a real module "
              f"({', '.join(f'{h} {modules_per_step(cfg, h):g}' for h in ('attn', 'ffn'))} modules per step); "
              "measure a checkpoint (--ckpt) for the real usage")
    elif usage is not None:
        parts = [f"{h} {usage[h]:.3f} of {modules_per_step(cfg, h):g}" for h in ("attn", "ffn") if h in usage]
        print(f"routing measured on {source}: real modules per step {', '.join(parts)}")
        print(f"FlopCounterMode on the same passes: {_si(measured.forward_per_token)} forward FLOPs / token "
              f"(analytic / measured = {mine.forward_flops_per_token / measured.forward_per_token:.4f})")
    print("Conventions: 2 FLOPs per matmul weight per token (routers and tied LM head included), attention "
          "4·d·T per core with T in full; training = 3 × forward; LayerNorm/GELU/softmax not counted.")
    return 0


def add_bench_arguments(b: argparse.ArgumentParser) -> None:
    b.add_argument("what", choices=["train", "forward", "decode"],
                   help="train/forward: MoM (grouped, loop) vs dense of equal active FLOPs; decode: KV cache")
    b.add_argument("--config", default=None,
                   help="preset or JSON config, random weights (default: K2H2S; tiny-mom for decode)")
    b.add_argument("--batch", type=int, default=None, help="sequences per step (default: 4; decode: 1)")
    b.add_argument("--seq-len", type=int, default=128, help="train/forward: tokens per sequence")
    b.add_argument("--new-tokens", type=int, default=256, help="decode: tokens generated per round")
    b.add_argument("--prompt-len", type=int, default=16, help="decode: prompt tokens")
    b.add_argument("--rounds", type=int, default=3, help="alternating timed rounds (the best is reported)")
    b.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    b.add_argument("--compile", action="store_true", help="torch.compile the models (decode: the cached decode steps)")
    b.add_argument("--compile-mode", default=None, choices=COMPILE_MODES,
                   help="torch.compile mode with --compile (reduce-overhead: CUDA graphs; decode: of the decode steps)")
    b.add_argument("--only", default=None, help="train/forward: comma-separated subset of mom_grouped,mom_loop,dense")
    b.add_argument("--profile", default=None, metavar="DIR",
                   help="profile one extra step (decode: run) per contender, operator tables in DIR/<contender>.txt")
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    b.set_defaults(func=run_bench, overrides=("model",))


def run_bench(args: argparse.Namespace, overrides: dict[str, dict[str, str]]) -> int:
    if args.batch is None:
        args.batch = 1 if args.what == "decode" else 4
    for name in ("batch", "seq_len", "new_tokens", "prompt_len", "rounds"):
        check_positive("--" + name.replace("_", "-"), getattr(args, name))
    args.device = str(pick_device(args.device))  # one error line for a device that is not there
    if args.what == "decode":
        r = bench_decode(args.config or "tiny-mom", args.new_tokens, args.prompt_len, args.rounds, device=args.device,
                         compile=args.compile, batch=args.batch, compile_mode=args.compile_mode,
                         profile=args.profile)
        print(json.dumps(r, indent=2) if args.json else format_decode(r))
        return 0
    r = bench_step(args.config or "K2H2S", args.what, args.batch, args.seq_len, args.rounds, device=args.device,
                   overrides=overrides["model"], compile=args.compile, warmup=3 if args.compile else 2,
                   only=tuple(args.only.split(",")) if args.only else CONTENDERS, profile=args.profile,
                   compile_mode=args.compile_mode)
    print(json.dumps(r, indent=2) if args.json else format_step(r))
    return 0


def add_prune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, metavar="DIR", help="a mom model directory (or a training run)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the pruned checkpoint")
    p.add_argument("--attn-keep", type=float, default=1.0, metavar="F",
                   help="fraction of each pool's attention modules to keep, in (0, 1] (paper: 0.5)")
    p.add_argument("--ffn-keep", type=float, default=1.0, metavar="F",
                   help="fraction of each pool's FFN modules to keep, in (0, 1] (paper: 0.75)")
    p.add_argument("--by", choices=("usage", "norm"), default="usage",
                   help="usage: router weight received on data (default); norm: weight norm (no data needed)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="with --by usage: dataset whose val split is measured (default: data/builtin if prepared)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="with --by usage: tokens per window (default: n_ctx, ≤ 256)")
    p.add_argument("--windows", type=int, default=None, help="with --by usage: validation windows (default 32)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward when measuring usage")
    p.add_argument("--device", default="auto", help="cpu, cuda (default: cuda if available)")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier pruned checkpoint in --out (a directory holding other files is refused)")
    p.set_defaults(func=run_prune, overrides=("model",))


def run_prune(args: argparse.Namespace, overrides: dict[str, dict[str, str]]) -> int:
    keep_count(1, args.attn_keep, "--attn-keep")  # bad fractions fail before any loading
    keep_count(1, args.ffn_keep, "--ffn-keep")
    for name in ("seq_len", "windows", "batch_size"):
        check_positive("--" + name.replace("_", "-"), getattr(args, name))
    if args.by == "norm":
        given = [f for f, v in (("--data", args.data), ("--seq-len", args.seq_len), ("--windows", args.windows)) if v]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise MomError(f"{', '.join(given)} {verb} only to --by usage (--by norm needs no data)")
    src = resolve_model_dir(args.ckpt)
    out = Path(args.out)
    if out.resolve() == src.resolve():
        raise MomError("--out must differ from the checkpoint being pruned")
    check_out(out, args.force)  # before any loading
    device = pick_device(args.device)
    model = load_model(src, device, **overrides.get("model", {}))
    check_prunable(model.config)
    batches, source = None, None
    if args.by == "usage":
        cfg = model.config
        data = resolve_data_dir(args.data)
        seq_len = args.seq_len or min(cfg.n_ctx, 256)
        if seq_len > cfg.n_ctx:
            raise MomError(f"--seq-len {seq_len} exceeds the model's context length {cfg.n_ctx}")
        windows = val_windows(data, cfg.vocab_size, seq_len, args.windows or 32, getattr(model, "tokenizer", None))
        batches = iter_batches(windows, args.batch_size, device)
        source = f"{windows.shape[0]} validation windows × {seq_len} tokens of {data}"
    pruned, report = prune(model, args.attn_keep, args.ffn_keep, args.by, batches)
    report = {"source": str(src), "data": source, **report}
    save_atomic(pruned, out, report, args.force)
    for note in report["notes"]:
        print(f"note: {note}")
    (a0, a1), (f0, f1), (p0, p1) = report["n_attn"], report["n_ffn"], report["params"]
    print(f"pruned by {args.by}{' on ' + source if source else ''}: attention modules {a0} → {a1}, FFN modules "
          f"{f0} → {f1} per chunk; parameters {p0 / 1e6:.3f}M → {p1 / 1e6:.3f}M ({p1 / p0 - 1:+.1%})")
    for c, ch in enumerate(report["chunks"]):
        print(f"  chunk {c}: removed attention {ch['attn']['removed'] or 'none'}, FFN {ch['ffn']['removed'] or 'none'}")
    print(f"wrote {out}; train it further with: mom train --config {out} --init-from {out}")
    return 0
