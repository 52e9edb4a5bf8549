"""``mom configs`` (presets with their sizes and FLOPs) and ``mom convert`` (HF GPT-2 in and out)."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
from pathlib import Path

from mom.analysis.memory import analytic_cache
from mom.cli.common import check_positive, model_config
from mom.config.model import PAPER_FIGURES, preset_names
from mom.convert.gpt2 import from_gpt2
from mom.errors import MomError
from mom.fileio import read_json
from mom.model.flops import count, vanilla_counterpart
from mom.model.model import MoM
from mom.runs import CHECKPOINTS, read_metrics, resolve_model_dir


# ---------------------------------------------------------------------------------------------- configs
def _layout(cfg) -> str:
    if cfg.is_vanilla:
        return f"{cfg.depth} layers"
    parts = [str(cfg.bottom)] if cfg.bottom else []
    k = cfg.k("attn") if cfg.k("attn") == cfg.k("ffn") else f"{cfg.k('attn')}/{cfg.k('ffn')}"
    sel = f"K{k}" if cfg.selection == "token" else f"cap{cfg.capacity:g}"
    n = cfg.n_attn if cfg.n_attn == cfg.n_ffn else f"{cfg.n_attn}A/{cfg.n_ffn}F"
    extras = "".join([", skip"] * cfg.skip + [", block-routed"] * (cfg.route_unit == "block")
                     + [", qkv sum"] * (cfg.qkv_combine == "sum"))
    block = f"{cfg.chunks}×[{n} mod, H{cfg.steps}, {sel}{extras}, {cfg.router}]"
    parts.append(block + ("+anchor" if cfg.anchor else ""))
    if cfg.top:
        parts.append(str(cfg.top))
    return " + ".join(parts)


def add_configs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="one preset, grid point (K3H1S) or JSON config instead of all presets")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length for the attention FLOPs (default n_ctx)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_configs, overrides=("model",))


def run_configs(args: argparse.Namespace, overrides: dict[str, dict[str, str]]) -> int:
    check_positive("--seq-len", args.seq_len)
    names = [args.config] if args.config else preset_names()
    rows = []
    for name in names:
        cfg = model_config(name, overrides["model"])
        if args.seq_len is not None and args.seq_len > cfg.n_ctx and args.config:
            raise MomError(f"--seq-len {args.seq_len} exceeds {cfg.name}'s context length n_ctx={cfg.n_ctx}")
        rows.append(_row(cfg, args.seq_len))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'preset':<16} {'params':>9} {'active':>9} {'depth':>5} {'fwd GFLOP/tok':>13} "
          f"{'vs GPT-2: params':>16} {'depth':>7} {'FLOPs':>7}  layout")
    for r in rows:
        vs = r["vs_vanilla"]
        rel = ("" if vs is None else
               f"{vs['params'] - 1:+16.1%} {vs['depth'] - 1:+7.1%} {vs['forward_flops_per_token'] - 1:+7.1%}")
        print(f"{r['name']:<16} {r['params'] / 1e6:8.1f}M {r['active_params'] / 1e6:8.1f}M {r['depth']:>5} "
              f"{r['forward_flops_per_token'] / 1e9:13.3f} {rel:>32}  {r['layout']}")
        if r["paper"]:
            print(f"{'':<16} ↳ {r['paper']}; ours: {_ours(r)}")
    print("vs GPT-2: against the vanilla counterpart (the GPT-2 the layout decomposes; for a MoE one layer per "
          "step); memory: weights + KV cache of 16 × n_ctx tokens in bf16 (mom memory --mode cache)")
    if not args.config:
        print("\nGrid points K{K}H{H}{S|M|L} (e.g. K3H1S) are built on demand: mom configs --config K3H1S")
    lengths = sorted({r["seq_len"] for r in rows})
    T = lengths[0] if len(lengths) == 1 else "each preset's n_ctx"
    print(f"FLOPs: 2·(active matmul params) + 4·d·T per attention core, T = {T} "
          "(nanoGPT/PaLM counting; token choice assumes no SKIP picks). Active params count a module once per use.")
    return 0


def _row(cfg, seq_len: int | None) -> dict:
    """A preset's counts, its ratios to the vanilla counterpart and, where the paper states one, its figure."""
    c = count(cfg, seq_len)
    row = {"name": cfg.name, "layout": _layout(cfg), **c.as_dict(), "config": cfg.to_dict(), "vs_vanilla": None,
           "paper": PAPER_FIGURES.get(cfg.name)}
    if not cfg.is_vanilla:
        base_cfg = vanilla_counterpart(cfg)
        base = count(base_cfg, seq_len)
        row["vanilla"] = base_cfg.name
        row["vs_vanilla"] = {k: getattr(c, k) / getattr(base, k) for k in ("params", "depth",
                                                                          "forward_flops_per_token")}
        T = min(1024, cfg.n_ctx)
        mine, theirs = (analytic_cache(x, 16, T, 2)["weights_plus_cache_bytes"] for x in (cfg, base_cfg))
        row["vs_vanilla"]["weights_plus_kv_cache_bf16_16x"] = mine / theirs
    return row


def _ours(r: dict) -> str:
    vs = r["vs_vanilla"]
    if vs is None:
        return "a vanilla model"
    return (f"depth {vs['depth'] - 1:+.1%}, fwd FLOPs {vs['forward_flops_per_token'] - 1:+.1%}, memory "
            f"{vs['weights_plus_kv_cache_bf16_16x'] - 1:+.1%}")


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


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="DIR", help="HF GPT-2 directory (config.json + safetensors/bin)")
    src.add_argument("--to-hf", metavar="MODEL", help="a mom model directory or training run: written as an HF model "
                     "directory (AutoModelForCausalLM with trust_remote_code=True; vanilla layouts as GPT2LMHeadModel)")
    p.add_argument("--out", required=True, metavar="DIR", help="the directory to write (a mom model directory, or with "
                                                                 "--to-hf an HF model directory)")
    p.add_argument("--config", help="decompose into this preset/JSON layout (with --from-hf); default: keep vanilla")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    p.set_defaults(func=run_convert, overrides=("model",))


def run_convert(args: argparse.Namespace, overrides: dict[str, dict[str, str]]) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MomError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not args.force:
        raise MomError(f"{out} exists and is not empty; pass --force to overwrite")
    if out.resolve() == Path(args.from_hf or args.to_hf).resolve():
        raise MomError("--out must differ from the model being converted (it would overwrite its files)")
    if args.from_hf:
        cfg = model_config(args.config, overrides["model"]) if args.config else None
        model = from_gpt2(args.from_hf, cfg)
        with _output_dir(out):
            model.save_pretrained(out)
        cfg = model.config
        print(f"wrote {cfg.name} ({model.num_params() / 1e6:.2f}M params, depth {cfg.depth}) to {out}")
    else:
        source = resolve_model_dir(args.to_hf)
        model = MoM.from_pretrained(source, **overrides["model"]).eval()
        export_hf = _hf_exporter()
        export_hf(model, out, tokenizer_files=_tokenizer_beside(source), metadata=run_facts(args.to_hf),
                  force=args.force)
        kind = "GPT2LMHeadModel" if model.config.is_vanilla else "MoMForCausalLM (trust_remote_code=True)"
        tok = "with its tokenizer" if (out / "tokenizer.json").is_file() else (
            "without tokenizer files (no known tokenizer fits its vocabulary)")
        print(f"wrote HF {kind} ({model.config.name}, depth {model.config.depth}) {tok} to {out}")
    return 0


def _hf_exporter():
    """:func:`mom.convert.hf.export.export_hf`; it needs transformers (the ``hf`` extra), imported only here."""
    try:
        from mom.convert.hf.export import export_hf
    except ImportError as e:
        raise MomError(f"exporting to HF needs transformers ({e}); install it with: "
                       "pip install 'mixture-of-modules[hf]'") from None
    return export_hf


def _tokenizer_beside(model_dir: Path) -> Path | None:
    """The corpus tokenizer a model directory (or the run of a checkpoint) carries; None: the GPT-2 BPE."""
    places = [model_dir] + ([model_dir.parent.parent] if model_dir.parent.name == CHECKPOINTS else [])
    return next((d / "tokenizer.json" for d in places if (d / "tokenizer.json").is_file()), None)


def run_facts(spec: str) -> dict[str, object]:
    """What a training run directory says about its model, for the model card: data and final validation loss."""
    run = Path(spec)
    facts: dict[str, object] = {}
    if (run / "run.json").is_file():
        info = read_json(run / "run.json", "run info")
        if isinstance(info, dict) and info.get("data"):
            facts["training data"] = info["data"]
    vals = [r for r in read_metrics(run) if r.get("type") == "val"]
    if vals:
        facts["validation loss (nats/token)"] = round(vals[-1]["val_loss"], 4)
        facts["training tokens"] = vals[-1]["tokens"]
    return facts
