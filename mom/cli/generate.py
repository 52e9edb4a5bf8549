"""``mom generate``: text from a model directory or training run, through the KV-cached engine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mom.config.train import COMPILE_MODES, check_compile_mode
from mom.device import pick_device
from mom.errors import MomError
from mom.inference.engine import DEFAULT_TEMPERATURE, Engine, Generation, SamplingParams
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


WRAP = 100  # characters per labelled line when several prompts stream at once
HALF_CONTEXT = object()  # --slide without a number: keep n_ctx/2 tokens (argparse converts a string const by type)


def add_generate_arguments(g: argparse.ArgumentParser) -> None:
    g.add_argument("--ckpt", required=True, metavar="DIR",
                   help="a mom model directory (model.safetensors + config.json) or a training run (its latest "
                        "checkpoint)")
    g.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    g.add_argument("--prompt-file", metavar="FILE", help="one prompt per non-empty line")
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per prompt at most")
    g.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help="sampling temperature (0 = greedy; the same for the Python API)")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling: the smallest set of tokens with this "
                                                             "much probability")
    g.add_argument("--seed", type=int, default=None, help="make sampling repeatable")
    g.add_argument("--stop", action="append", help="stop string, cut from the output (repeatable)")
    g.add_argument("--slide", nargs="?", type=int, const=HALF_CONTEXT, default=None, metavar="WINDOW",
                   help="generate past the context n_ctx: when it is full, keep the last WINDOW tokens and go on "
                        "(WINDOW < n_ctx; without a number, n_ctx/2)")
    g.add_argument("--stream", action="store_true", help="print the continuations as they are generated (several "
                                                         "prompts: lines labelled [1], [2], …)")
    g.add_argument("--no-cache", action="store_true", help="recompute the full forward every step (reference)")
    g.add_argument("--compile", action="store_true", help="torch.compile the decode step (pays off for long outputs)")
    g.add_argument("--compile-mode", default=None, choices=COMPILE_MODES,
                   help="torch.compile mode with --compile (reduce-overhead: CUDA graphs, for GPUs)")
    g.add_argument("--device", default=None, help="cpu, cuda or auto (default: cuda if available)")
    g.set_defaults(func=run_generate, overrides=("model",))


def read_prompts(args: argparse.Namespace) -> list[str]:
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
    return prompts


def run_generate(args: argparse.Namespace, overrides: dict[str, dict[str, str]]) -> int:
    check_compile_mode(args.compile, args.compile_mode)
    prompts = read_prompts(args)
    device = pick_device(args.device)  # like every other command: auto, and one line for a device that is not there
    # A model directory, or a training run (finished or not: its latest checkpoint), as for eval, flops and prune.
    model = load_model(args.ckpt, device, **overrides["model"])
    slide = model.config.n_ctx // 2 if args.slide is HALF_CONTEXT else args.slide
    note = gibberish_note(args.ckpt)
    if note:
        print(f"mom: note: {note}", file=sys.stderr, flush=True)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, stop=args.stop or [], slide=slide)
    engine = Engine(model, use_cache=not args.no_cache, compile=args.compile, compile_mode=args.compile_mode,
                    log=lambda msg: print(msg, file=sys.stderr, flush=True))
    results: list[Generation] = []
    if args.stream and len(prompts) == 1:
        print(prompts[0], end="", flush=True)
        for _, piece in engine.stream_text(prompts, params, results=results):
            print(piece, end="", flush=True)
        print()
    elif args.stream:
        stream_labelled(engine, prompts, params, results)
    else:
        results = engine.generate(prompts, params)
        for g in results:
            print(g.prompt + g.text)
            if len(prompts) > 1:
                print("-" * 40)
    print(summary(results), file=sys.stderr, flush=True)
    return 0


def stream_labelled(engine: Engine, prompts: list[str], params: SamplingParams, results: list) -> None:
    """Several prompts streamed at once: each row's text (prompt, then its continuation) is printed in lines
    labelled ``[i]`` as they complete: at a newline of the text, or at a space once the line is long."""
    pending = {b: p for b, p in enumerate(prompts)}

    def emit(b: int, final: bool) -> None:
        text = pending[b]
        while True:
            cut = text.find("\n")
            if cut < 0 and len(text) >= WRAP:
                cut = text.rfind(" ", 0, WRAP)
                cut = cut if cut > 0 else text.find(" ", WRAP)
            if cut < 0:
                break
            print(f"[{b + 1}] {text[:cut]}", flush=True)
            text = text[cut + 1:]
        if final and text:
            print(f"[{b + 1}] {text}", flush=True)
            text = ""
        pending[b] = text

    for b, piece in engine.stream_text(prompts, params, results=results):
        pending[b] += piece
        emit(b, final=False)
    for b in pending:
        emit(b, final=True)


def summary(results: list[Generation]) -> str:
    """One stderr line: new tokens, time, tokens/s, compile time, and how each prompt finished."""
    if not results:
        return "generated nothing"
    g0 = results[0]
    tokens = sum(len(g.tokens) for g in results)
    run_s = max(g0.seconds - g0.compile_seconds, 1e-9)
    compiled = (f"; compiling the decode step took {g0.compile_seconds:.1f} s (not counted)" if g0.compile_seconds
                else "")
    finish = (g0.finish_reason if len(results) == 1
              else ", ".join(f"[{i + 1}] {g.finish_reason}" for i, g in enumerate(results)))
    return (f"generated {tokens} tokens for {len(results)} prompt{'s' if len(results) > 1 else ''} in "
            f"{g0.seconds:.2f} s: {tokens / run_s:.1f} tokens/s{compiled}; finish: {finish}")
