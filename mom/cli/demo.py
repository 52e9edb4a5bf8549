"""``mom demo`` (what ``make demo`` runs): the paper's two-phase recipe end to end, at a size two CPU cores finish in
about ten minutes, with a report that can be read.

1. the built-in corpus (Wikipedia leads + Gutenberg books + news) under a 4,096-token byte-level BPE learnt from its
   train split, prepared into ``data/bpe4096`` on first use (``--data`` overrides);
2. for each seed 0 … N−1 (``--seeds N``, into ``OUT/seed-S/``):
   phase 1: ``mom train --config tiny`` — a 6-layer vanilla GPT-2 (d = 128) from scratch, 800 steps of 16 × 256;
   phase 2: ``mom train --config tiny-mom --init-from PHASE1`` — the same 6 layers decomposed into 1 bottom layer
   + a pool of 4 attention and 4 FFN modules assembled for H = 6 steps with top-2 routing + an anchor layer (depth 8
   at equal parameters), 80 steps; the compute-matched baseline: ``mom train --config tiny --init-from PHASE1`` for
   the same extra tokens (``--match flops``: the MoM's training FLOPs);
3. measurements: the MoM's routing health over the validation windows, greedy and sampled continuations of three
   fixed prompts from each model, all written to ``OUT/demo.json``;
4. ``OUT/report.md`` (+ ``OUT/loss.png``) built from ``demo.json`` alone (:mod:`mom.analysis.demo_report`;
   ``--report-only`` rebuilds it), and the summary table and verdict on the console.

Stages (:mod:`mom.cli.demo_stages`) that already finished with the same settings are reused, interrupted ones
resumed; ``--force`` starts everything over.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mom.errors import MomError
from mom.extras import import_extra
from mom.fileio import write_json_atomic

PHASE1_STEPS = 800
PHASE2_STEPS = 80
BATCH_SIZE = 16
SEQ_LEN = 256
GEN_TOKENS = 40


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="where the runs, demo.json and report.md go")
    p.add_argument("--data", metavar="DIR", help="dataset directory (default: the built-in corpus under a 4,096-token "
                                                 "BPE in data/bpe4096, prepared on first use)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="run the three stages for seeds 0 … N−1 and pair MoM and vanilla continuation by seed")
    p.add_argument("--phase1-steps", type=int, default=PHASE1_STEPS, metavar="N", help="steps of the vanilla phase 1")
    p.add_argument("--phase2-steps", type=int, default=PHASE2_STEPS, metavar="N",
                   help="steps of the MoM phase 2 (the vanilla continuation gets the same tokens, or FLOPs)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, metavar="B", help="sequences per step")
    p.add_argument("--seq-len", type=int, default=SEQ_LEN, metavar="T", help="tokens per sequence")
    p.add_argument("--eval-tokens", type=int, default=0, metavar="N",
                   help="validation tokens per evaluation (0 = the whole val split)")
    p.add_argument("--gen-tokens", type=int, default=GEN_TOKENS, metavar="N",
                   help="new tokens per generated continuation in the report")
    p.add_argument("--match", choices=("tokens", "flops"), default="tokens",
                   help="what the vanilla continuation matches: the MoM's extra tokens (the paper's same extra "
                        "steps) or its training FLOPs")
    p.add_argument("--model-overrides", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="model fields set on all three runs (e.g. n_ctx=64 for a faster smoke test)")
    p.add_argument("--force", action="store_true", help="start every stage over")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild OUT/report.md (and loss.png) from OUT/demo.json without training")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo, overrides=())


def _check(args: argparse.Namespace) -> None:
    for name in ("seeds", "phase1_steps", "phase2_steps", "batch_size", "seq_len", "gen_tokens"):
        if getattr(args, name) < 1:
            raise MomError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.eval_tokens < 0:
        raise MomError(f"--eval-tokens must be ≥ 0 (0 = the whole val split), got {args.eval_tokens}")


def run_demo(args: argparse.Namespace, overrides: dict[str, dict[str, str]]) -> int:
    _check(args)
    out = Path(args.out)
    if args.report_only:
        from mom.analysis.demo_report import console_summary, load_demo, write_report

        doc = load_demo(out)
        print(f"{console_summary(doc)}\n\n[demo] report rebuilt from {out / 'demo.json'}: {write_report(out, doc)}")
        return 0
    import_extra("matplotlib", "plots", "mom demo (the figures of its report)")  # now, not after minutes of training
    from mom.analysis.demo_measure import machine
    from mom.analysis.demo_report import FORMAT, FORMAT_VERSION, console_summary, write_report
    from mom.cli import demo_stages as st

    settings = st.Settings(phase1_steps=args.phase1_steps, phase2_steps=args.phase2_steps,
                           batch_size=args.batch_size, seq_len=args.seq_len, eval_tokens=args.eval_tokens,
                           match=args.match, seeds=args.seeds, model_overrides=list(args.model_overrides))
    settings.configs()  # a bad override is one error line now, not after the data
    host = machine()
    t_all = t0 = time.perf_counter()
    data, prepared = st.ensure_data(args.data, args.force, not args.no_progress)
    timings = {"prepare": round(time.perf_counter() - t0, 2)}
    seeds = [{"seed": seed, "stages": st.run_seed(settings, data, out, seed, args.force, not args.no_progress)}
             for seed in range(args.seeds)]
    t0 = time.perf_counter()
    gens = st.measure(seeds, data, settings, args.gen_tokens)
    timings["measure"] = round(time.perf_counter() - t0, 2)
    timings["total"] = round(time.perf_counter() - t_all, 2)
    host["load_before"], host["load_after"] = host.pop("load_average_1_5_15"), machine()["load_average_1_5_15"]
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION,
           "settings": {**vars(settings), "vanilla_steps": st.vanilla_steps_of(seeds), "gen_tokens": args.gen_tokens},
           "data": st.data_record(data, prepared, args.data is not None), "machine": host, "timings_s": timings,
           "seeds": seeds, "generations": gens}
    write_json_atomic(out / "demo.json", doc)
    report = write_report(out, doc)
    print(f"\n{console_summary(doc)}\n\n[demo] finished in {timings['total'] / 60:.1f} min; report: {report}")
    return 0
