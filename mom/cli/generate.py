"""``mom generate``: text from a model directory or training run, through the KV-cached engine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mom.config.train import COMPILE_MODES, check_compile_mode
from mom.device import pick_device
from mom.errors import MomError
from mom.inference.engine import Engine, SamplingParams
from mom.runs import last_validation, load_model

#: A model whose last validation loss is not this far below the unigram yardstick gets a note: expect gibberish.
GIBBERISH_MARGIN = 0.5


def gibberish_note(spec: str) -> str | None:
    """One line when the run ``spec`` comes from last validated within :data:`GIBBERISH_MARGIN` nats of knowing only
    token frequencies (its metrics.jsonl's val rows), so nobody takes its gibberish for a bug; else None."""
    row = last_validation(spec)
    if row is None:
        return None
    val, uni = float(row["val_loss"]), float(row["unigram_loss"])
    gap = uni - val
    if gap >= GIBBERISH_MARGIN:
        return None
    where = f"val loss {val:.3f} vs {uni:.3f} nats at step {row.get('step', '?')}"
    if gap >= 0:
        return f"this model is within {gap:.2f} nats of knowing only token frequencies ({where}): expect gibberish"
    return f"this model is {-gap:.2f} nats worse than knowing only token frequencies ({where}): expect gibberish"


def add_generate_arguments(g: argparse.ArgumentParser) -> None:
    g.add_argument("--ckpt", required=True, metavar="DIR",
                   help="a mom model directory (model.safetensors + config.json) or a training run (its latest "
                        "checkpoint)")
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
    g.set_defaults(func=run_generate, overrides=("model",))


def run_generate(args: argparse.Namespace, overrides: dict[str, dict[str, str]]) -> int:
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
    device = pick_device(args.device)  # like every other command: auto, and one line for a device that is not there
    # A model directory, or a training run (finished or not: its latest checkpoint), as for eval, flops and prune.
    model = load_model(args.ckpt, device, **overrides["model"])
    note = gibberish_note(args.ckpt)
    if note:
        print(f"mom: note: {note}", file=sys.stderr, flush=True)
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
