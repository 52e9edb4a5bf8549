"""The ``mom`` command line.

Every subcommand lives in one ``cmd_*`` function; user errors (:class:`~mom.errors.MomError`, argparse errors)
end as one line ``mom: error: <what and why>`` on stderr and exit code 2, never a traceback.
Config fields are overridden with ``--model.<field> VALUE`` (e.g. ``--model.top_k 2``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import shutil
import sys
from pathlib import Path

from mom.errors import MomError

EXIT_USAGE = 2
# Characters that end a line (str.splitlines' set): a message quoting a user's path or argument that holds one
# is still printed as one line, with the character escaped.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage dump) with a pointer to --help."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise MomError(f"{message} (see '{self.prog} --help')")


def _split_overrides(extra: list[str], allowed: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Parse ``--model.top_k 2`` / ``--model.top_k=2`` style arguments left over by argparse."""
    out: dict[str, dict[str, str]] = {g: {} for g in allowed}
    i = 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or "." not in arg:
            raise MomError(f"unrecognized argument '{arg}'")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise MomError(f"{arg} needs a value")
            value = extra[i + 1]
            i += 1
        group, _, field = key.partition(".")
        if group not in allowed or not field:
            hint = (f"overrides look like {' or '.join(f'--{g}.FIELD VALUE' for g in allowed)}" if allowed
                    else "this command takes no --model./--train. overrides")
            raise MomError(f"unrecognized argument '{arg}' ({hint})")
        out[group][field] = value
        i += 1
    return out


def _model_config(spec: str, overrides: dict[str, str]):
    from mom.config import resolve_config

    cfg = resolve_config(spec)
    return cfg.replace(**overrides) if overrides else cfg


# ---------------------------------------------------------------------------------------------- configs
def _layout(cfg) -> str:
    if cfg.is_vanilla:
        return f"{cfg.depth} layers"
    parts = [str(cfg.bottom)] if cfg.bottom else []
    k = cfg.k("attn") if cfg.k("attn") == cfg.k("ffn") else f"{cfg.k('attn')}/{cfg.k('ffn')}"
    sel = f"K{k}" if cfg.selection == "token" else f"cap{cfg.capacity:g}"
    n = cfg.n_attn if cfg.n_attn == cfg.n_ffn else f"{cfg.n_attn}A/{cfg.n_ffn}F"
    block = f"{cfg.chunks}×[{n} mod, H{cfg.steps}, {sel}{', skip' if cfg.skip else ''}, {cfg.router}]"
    parts.append(block + ("+anchor" if cfg.anchor else ""))
    if cfg.top:
        parts.append(str(cfg.top))
    return " + ".join(parts)


def cmd_configs(args, overrides) -> int:
    from mom.analysis import check_positive
    from mom.config import preset_names
    from mom.flops import count

    check_positive("--seq-len", args.seq_len)
    names = [args.config] if args.config else preset_names()
    rows = []
    for name in names:
        cfg = _model_config(name, overrides["model"])
        if args.seq_len is not None and args.seq_len > cfg.n_ctx and args.config:
            raise MomError(f"--seq-len {args.seq_len} exceeds {cfg.name}'s context length n_ctx={cfg.n_ctx}")
        c = count(cfg, args.seq_len)
        rows.append({"name": cfg.name, "layout": _layout(cfg), **c.as_dict(), "config": cfg.to_dict()})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'preset':<14} {'params':>9} {'active':>9} {'depth':>5} {'fwd GFLOP/tok':>13}  layout")
    for r in rows:
        print(f"{r['name']:<14} {r['params'] / 1e6:8.1f}M {r['active_params'] / 1e6:8.1f}M {r['depth']:>5} "
              f"{r['forward_flops_per_token'] / 1e9:13.3f}  {r['layout']}")
    if not args.config:
        print("\nGrid points K{K}H{H}{S|M|L} (e.g. K3H1S) are built on demand: mom configs --config K3H1S")
    lengths = sorted({r["seq_len"] for r in rows})
    T = lengths[0] if len(lengths) == 1 else "each preset's n_ctx"
    print(f"FLOPs: 2·(active matmul params) + 4·d·T per attention core, T = {T} "
          "(nanoGPT/PaLM counting; token choice assumes no SKIP picks). Active params count a module once per use.")
    return 0


# ---------------------------------------------------------------------------------------------- convert
@contextlib.contextmanager
def _output_dir(out: Path):
    """Create an output directory (with parents) once the inputs have loaded, for the writes in the ``with`` body;
    an OS refusal is one error line. If the body fails, a directory created here is removed again (nothing
    half-written is left behind); one that existed keeps what it had, as the writes are atomic file by file."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MomError(f"{out}: cannot create the output directory ({e.strerror or e})") from None
    try:
        yield out
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def cmd_convert(args, overrides) -> int:
    from mom.gpt2 import from_gpt2, to_hf
    from mom.model import MoM

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MomError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not args.force:
        raise MomError(f"{out} exists and is not empty; pass --force to overwrite")
    if out.resolve() == Path(args.from_hf or args.to_hf).resolve():
        raise MomError("--out must differ from the model being converted (it would overwrite its files)")
    if args.from_hf:
        cfg = _model_config(args.config, overrides["model"]) if args.config else None
        model = from_gpt2(args.from_hf, cfg)
        with _output_dir(out):
            model.save_pretrained(out)
        print(f"wrote {model.config.name} ({model.num_params() / 1e6:.2f}M params, depth {model.config.depth}) to {out}")
    else:
        model = MoM.from_pretrained(args.to_hf)
        with _output_dir(out):
            to_hf(model, out)
        print(f"wrote HF GPT2LMHeadModel ({model.config.depth} layers) to {out}")
    return 0


# ---------------------------------------------------------------------------------------------- generate
def cmd_generate(args, overrides) -> int:
    from mom.config import check_compile_mode
    from mom.engine import Engine, SamplingParams

    check_compile_mode(args.compile, args.compile_mode)
    prompts = list(args.prompt or [])
    if args.prompt_file:
        try:
            text = Path(args.prompt_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MomError(f"{args.prompt_file}: prompt file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise MomError(f"{args.prompt_file}: cannot read prompts ({e})") from None
        prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise MomError("no prompt: give --prompt TEXT or --prompt-file FILE")
    if any(not p.strip() for p in prompts):
        raise MomError("empty prompt")
    from mom.analysis import load_model, pick_device

    device = pick_device(args.device)  # like every other command: auto, and one line for a device that is not there
    # A model directory, or a training run (finished or not: its latest checkpoint), as for eval, flops and prune.
    model = load_model(args.ckpt, device, **overrides["model"])
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, stop=args.stop or [])
    engine = Engine(model, use_cache=not args.no_cache, compile=args.compile, compile_mode=args.compile_mode)
    if args.stream:
        if len(prompts) > 1:
            raise MomError("--stream takes a single prompt")
        print(prompts[0], end="", flush=True)
        done: list[int] = []
        for step in engine.stream(prompts, params):
            if step[0] is not None and step[0] != engine.eot:
                done.append(step[0])
                print(engine.decode(done[-1:]), end="", flush=True)
        print()
        return 0
    for g in engine.generate(prompts, params):
        print(g.prompt + g.text)
        if len(prompts) > 1:
            print("-" * 40)
    return 0


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mom", description="Mixture-of-Modules: build, train, run and analyse MoM models.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("configs", help="list presets with parameters, depth and FLOPs")
    c.add_argument("--config", help="one preset, grid point (K3H1S) or JSON config instead of all presets")
    c.add_argument("--seq-len", type=int, default=None, help="sequence length for the attention FLOPs (default n_ctx)")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.set_defaults(func=cmd_configs, overrides=("model",))

    v = sub.add_parser("convert", help="import an HF GPT-2 directory, or export a vanilla model to HF format")
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="DIR", help="HF GPT-2 directory (config.json + safetensors/bin)")
    src.add_argument("--to-hf", metavar="DIR", help="a mom model directory with a vanilla layout")
    v.add_argument("--out", required=True, metavar="DIR")
    v.add_argument("--config", help="decompose into this preset/JSON layout (with --from-hf); default: keep vanilla")
    v.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    v.set_defaults(func=cmd_convert, overrides=("model",))

    from mom.bench import cmd_bench
    from mom.config import COMPILE_MODES

    g = sub.add_parser("generate", help="generate text from a checkpoint with the KV-cached engine")
    g.add_argument("--ckpt", required=True, metavar="DIR", help="a mom model directory (model.safetensors + config.json) or a training run (its latest checkpoint)")
    g.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    g.add_argument("--prompt-file", metavar="FILE", help="one prompt per non-empty line")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    g.add_argument("--no-cache", action="store_true", help="recompute the full forward every step (reference)")
    g.add_argument("--compile", action="store_true", help="torch.compile the decode step (pays off for long outputs)")
    g.add_argument("--compile-mode", default=None, choices=COMPILE_MODES,
                   help="torch.compile mode with --compile (reduce-overhead: CUDA graphs, for GPUs)")
    g.add_argument("--device", default=None, help="cpu, cuda or auto (default: cuda if available)")
    g.set_defaults(func=cmd_generate, overrides=("model",))

    b = sub.add_parser("bench", help="benchmarks measured side by side in one process")
    b.add_argument("what", choices=["train", "forward", "decode"],
                   help="train/forward: MoM (grouped, loop) vs dense of equal active FLOPs; decode: KV cache")
    b.add_argument("--config", default=None, help="preset or JSON config, random weights (default: K2H2S; tiny-mom for decode)")
    b.add_argument("--batch", type=int, default=None, help="sequences per step (default: 4; decode: 1)")
    b.add_argument("--seq-len", type=int, default=128)
    b.add_argument("--new-tokens", type=int, default=256)
    b.add_argument("--prompt-len", type=int, default=16)
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--device", default="cpu")
    b.add_argument("--compile", action="store_true", help="torch.compile the models (decode: the cached decode steps)")
    b.add_argument("--compile-mode", default=None, choices=COMPILE_MODES,
                   help="torch.compile mode with --compile (reduce-overhead: CUDA graphs; decode: of the decode steps)")
    b.add_argument("--only", default=None, help="train/forward: comma-separated subset of mom_grouped,mom_loop,dense")
    b.add_argument("--profile", default=None, metavar="DIR",
                   help="profile one extra step (decode: run) per contender, operator tables in DIR/<contender>.txt")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench, overrides=("model",))

    from mom import data

    d = sub.add_parser("prepare", help="tokenise a corpus into train.bin/val.bin (nanoGPT format)")
    data.add_prepare_arguments(d)
    d.set_defaults(func=lambda a, o: data.cli_prepare(a), overrides=())

    from mom import demo, train

    t = sub.add_parser("train", help="train a model (phase 1, phase 2 with --init-from, resume, DDP via torchrun)")
    train.add_train_arguments(t)
    t.set_defaults(func=train.cli_train, overrides=("model", "train"))

    m = sub.add_parser("demo", help="the whole two-phase pipeline at tiny scale, ending in runs/demo/report.md")
    demo.add_demo_arguments(m)
    m.set_defaults(func=lambda a, o: demo.cli_demo(a), overrides=())

    from mom import analysis, flops, memory, prune

    f = sub.add_parser("flops", help="forward/training FLOPs per token, measured routing, vs the vanilla counterpart")
    flops.add_flops_arguments(f)
    f.set_defaults(func=flops.cli_flops, overrides=("model",))

    y = sub.add_parser("memory", help="measured peak forward and training-step memory, vs the vanilla counterpart")
    memory.add_memory_arguments(y)
    y.set_defaults(func=memory.cli_memory, overrides=("model",))

    r = sub.add_parser("prune", help="remove the least used (or smallest) modules from every pool")
    prune.add_prune_arguments(r)
    r.set_defaults(func=prune.cli_prune, overrides=("model",))

    a = sub.add_parser("routes", help="routing analysis: route heatmap, SKIP rate, effective depth, co-occurrence")
    analysis.add_routes_arguments(a)
    a.set_defaults(func=analysis.cli_routes, overrides=("model",))

    from mom import evaluate

    e = sub.add_parser("eval", help="perplexity, GLUE-format classification, XSUM-format summarisation")
    evaluate.add_eval_arguments(e)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        overrides = _split_overrides(extra, args.overrides)
        rc = args.func(args, overrides)
        sys.stdout.flush()  # here, so that a failing write of buffered output is handled below, not at exit
        return rc
    except BrokenPipeError:
        # The reader went away (``mom configs | head``): stop quietly, as Unix tools do; point stdout at devnull so
        # the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the shell's status for a tool killed by a closed pipe
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"mom: error: {e.strerror or e} (writing {getattr(e, 'filename', None) or 'output'})", file=sys.stderr)
        return EXIT_USAGE
    except MomError as e:
        print(f"mom: error: {str(e).translate(_LINE_BREAKS)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mom: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        # Too large a model, batch or sequence for this machine is the user's to change, not a bug; PyTorch's CPU
        # allocator reports it as a plain RuntimeError (with a C++ stack in the message).
        if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
                or "can't allocate memory" in str(e)):
            raise
        size = re.search(r"tried to allocate ([0-9.]+) ?(\w*)", str(e), re.IGNORECASE)
        what = f" (tried to allocate {size.group(1)} {size.group(2) or 'bytes'})" if size else ""
        print(f"mom: error: out of memory{what}: use a smaller model (--model.*), batch or sequence length",
              file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
