"""``mom eval ppl | glue | xsum | lm-eval | export-proxy``: the evaluations of :mod:`mom.eval` from the command
line, with their reports as text or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from mom.cli.common import check_output_file, resolve_data_dir, write_atomic
from mom.data.proxies import export_proxy, load_classification, news_xsum
from mom.data.tasks import SUMMARY_PROXIES, load_xsum
from mom.device import pick_device
from mom.errors import DataError, MomError
from mom.eval.finetune import TrainParams, parse_seeds, quiet
from mom.eval.glue import GlueParams, run_glue
from mom.eval.lm_eval import run_lm_eval
from mom.eval.perplexity import check_stride, perplexity, read_eval_tokens
from mom.eval.xsum import SummaryParams, run_xsum
from mom.runs import load_model, resolve_model_dir


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt(mean: dict[str, float], std: dict[str, float] | None, runs: list[dict]) -> list[str]:
    lines = []
    for k, m in mean.items():
        if k == "score" and len(mean) == 2:
            continue  # a single-metric task: its score is that metric
        spread = f" ± {100 * std[k]:.2f}" if std else ""
        values = ", ".join(f"{100 * r['metrics'][k]:.2f}" for r in runs)
        per = f"   (seeds: {values})" if len(runs) > 1 else ""
        lines.append(f"  {k:<12} {100 * m:6.2f}{spread}{per}")
    return lines


def _print_report(report: dict, as_json: bool, header: str) -> None:
    if as_json:
        print(json.dumps(report, indent=1, ensure_ascii=False))
        return
    print(header)
    print("\n".join(_fmt(report["mean"], report["std"], report["runs"])))
    r0 = report["runs"][0]
    print(f"  train loss {r0['train_loss_first']:.4f} → {r0['train_loss_last']:.4f} over {r0['updates']} updates "
          f"(seed {r0['seed']})")


def run_ppl(args: argparse.Namespace, overrides) -> int:
    if args.max_tokens is not None and args.max_tokens < 2:
        raise MomError(f"--max-tokens must be ≥ 2, got {args.max_tokens}")
    if args.batch_size < 1:
        raise MomError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    ckpt = resolve_model_dir(args.ckpt)  # a missing checkpoint is named first, as by every other command
    data = args.data
    if data is None:  # the built-in corpus, checked before the model loads (a given path is read_eval_tokens' to check)
        data = resolve_data_dir(None, "perplexity", "DIR|FILE (a dataset directory from 'mom prepare --out DIR', "
                                "a .bin token file or a UTF-8 text file)")
    device = pick_device(args.device)
    model = load_model(ckpt, device)
    if args.stride is not None:
        check_stride(args.stride, model.config.n_ctx)  # before reading and tokenising the data
    tokens, source, tok = read_eval_tokens(data, args.split, model)
    if args.max_tokens is not None:
        tokens = tokens[:args.max_tokens]
    res = perplexity(model, tokens, stride=args.stride, batch_size=args.batch_size,
                     causal_routing=not args.train_routing, log=quiet if args.json else _stderr,
                     byte_lengths=tok.byte_lengths(model.config.vocab_size))
    report = {"model": str(args.ckpt), "data": source, "tokenizer": tok.name, **asdict(res),
              "routing": "training (sequence-level)" if args.train_routing else "causal"}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        bpb = f", {res.bpb:.4f} bits/byte" if res.bpb is not None else ""
        print(f"{source}: perplexity {res.ppl:.3f} (nll {res.nll:.4f} nats/token{bpb} over {res.scored:,} tokens; "
              f"n_ctx {res.n_ctx}, stride {res.stride}, {res.windows} windows; {tok.name})")
    return 0


def _params(cls, args) -> TrainParams:
    fields = {k: getattr(args, k) for k in cls.__dataclass_fields__ if getattr(args, k, None) is not None}
    return cls(**fields)


def run_glue_command(args: argparse.Namespace, overrides) -> int:
    device = pick_device(args.device)
    params = _params(GlueParams, args)
    params.validate()
    seeds = parse_seeds(args.seeds)
    n_ctx = load_model(args.ckpt).config.n_ctx  # fail on a missing checkpoint before reading data
    if args.max_len is not None and args.max_len > n_ctx:
        # the default (128) is capped silently; a value the user typed is worth a word (the report says n_ctx)
        _stderr(f"mom: note: --max-len {args.max_len} is more than the model's n_ctx; using {n_ctx}")
    data = load_classification(args.task, args.data)
    report = run_glue(args.ckpt, data, params=params, seeds=seeds, device=device,
                      log=quiet if args.json else _stderr)
    sizes = ", ".join(f"{k} {v:,}" for k, v in report["sizes"].items())
    _print_report(report, args.json, f"{report['task']} ({sizes}; {len(seeds)} seed(s)) — {args.ckpt}")
    return 0


def run_xsum_command(args: argparse.Namespace, overrides) -> int:
    device = pick_device(args.device)
    params = _params(SummaryParams, args)
    params.validate()
    seeds = parse_seeds(args.seeds)
    if args.predictions is not None:
        check_output_file(args.predictions, "--predictions")  # now, not after fine-tuning and decoding
    load_model(args.ckpt)
    if args.task is not None:
        if args.task.lower() not in SUMMARY_PROXIES:
            raise DataError(f"unknown summarisation task '{args.task}'; built in: {', '.join(SUMMARY_PROXIES)} "
                            "(or give --data FILE.jsonl|DIR)")
        data = news_xsum()
    else:
        data = load_xsum(args.data)
    report = run_xsum(args.ckpt, data, params=params, seeds=seeds, device=device,
                      log=quiet if args.json else _stderr, keep_predictions=args.predictions is not None)
    if args.predictions is not None:
        rows = report.pop("predictions")
        write_atomic(args.predictions, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    sizes = ", ".join(f"{k} {v:,}" for k, v in report["sizes"].items())
    decoding = "greedy" if params.beams == 1 else f"beam {params.beams}"
    title = f"{args.task or 'xsum'} ({sizes}; {decoding}; {len(seeds)} seed(s)) — {args.ckpt}"
    _print_report(report, args.json, title)
    return 0


def run_lm_eval_command(args: argparse.Namespace, overrides) -> int:
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise MomError("--tasks needs at least one lm-eval task name")
    report = run_lm_eval(args.ckpt, names, include_path=args.include_path, limit=args.limit,
                         num_fewshot=args.num_fewshot, batch_size=args.batch_size, device=pick_device(args.device))
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return 0
    for task, metrics in report["results"].items():
        shown = ", ".join(f"{k.split(',')[0]} {v:.4f}" for k, v in metrics.items()
                          if isinstance(v, (int, float)) and "stderr" not in k and k != "sample_len")
        print(f"{task}: {shown}")
    return 0


def run_export_proxy(args: argparse.Namespace, overrides) -> int:
    sizes = export_proxy(args.task, args.out, overwrite=args.force)
    fmt = {"rt-polarity": "SST-2 tsv", "bible-para": "MRPC tsv", "news-xsum": "XSUM jsonl"}[args.task.lower()]
    print(f"wrote {args.task} ({fmt}: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()) + f") to {args.out}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, metavar="DIR", help="a mom model directory (or a training run)")
    p.add_argument("--device", default="auto", help="cpu, cuda (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (progress lines are silenced)")


def _finetune_args(p: argparse.ArgumentParser, batch: int, eval_batch: int) -> None:
    p.add_argument("--epochs", type=int, default=3, help="passes over the training examples")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    p.add_argument("--batch-size", type=int, default=batch, help="examples per fine-tuning step")
    p.add_argument("--eval-batch-size", type=int, default=eval_batch, help="examples per forward when scoring")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay of the fine-tuning")
    p.add_argument("--warmup", type=float, default=0.06, help="fraction of updates for linear warm-up")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; several give mean ± std (default 0)")
    p.add_argument("--max-train", type=int, default=None, metavar="N", help="use the first N training examples")
    p.add_argument("--max-eval", type=int, default=None, metavar="N", help="score the first N evaluation examples")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """``mom eval ppl|glue|xsum|lm-eval|export-proxy``."""
    sub = parser.add_subparsers(dest="eval_command", required=True, parser_class=type(parser),
                                metavar="{ppl,glue,xsum,lm-eval,export-proxy}")

    def add_parser(name: str, **kw) -> argparse.ArgumentParser:  # with the defaults in --help, as every command
        return sub.add_parser(name, formatter_class=parser.formatter_class, description=kw.get("help"), **kw)

    p = add_parser("ppl", help="sliding-window perplexity on a prepared dataset or a text file")
    _common(p)
    p.add_argument("--data", default=None, metavar="DIR|FILE",
                   help="prepared dataset directory or .bin (mom prepare), or a UTF-8 text file "
                        "(default: data/builtin if prepared)")
    p.add_argument("--split", default="val", help="split of a dataset directory (default val)")
    p.add_argument("--stride", type=int, default=None,
                   help="window step in tokens, 1 to n_ctx - 1 (default n_ctx/2)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N", help="score the first N tokens only")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward (default 8)")
    p.add_argument("--train-routing", action="store_true",
                   help="expert-choice models: the training-time (whole-sequence) selection instead of the causal rule")
    p.set_defaults(func=run_ppl, overrides=())

    g = add_parser("glue", help="fine-tune a classification head on a GLUE-format task and report its metric")
    _common(g)
    g.add_argument("--task", required=True,
                   help="cola, sst2, mrpc, stsb, qqp, mnli (mnli-m, mnli-mm), qnli, rte, wnli; or the offline "
                        "proxies rt-polarity, bible-para (no --data)")
    g.add_argument("--data", default=None, metavar="DIR", help="the task's GLUE directory (train.tsv, dev.tsv)")
    _finetune_args(g, 16, 64)
    g.add_argument("--max-len", type=int, default=None,
                   help="tokens per example (default 128); capped at the model's n_ctx, with a note on stderr "
                        "when a larger value is given; the report records the value used")
    g.set_defaults(func=run_glue_command, overrides=())

    x = add_parser("xsum", help="fine-tune on document → summary, generate, report ROUGE")
    _common(x)
    src = x.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="FILE|DIR",
                     help="XSUM-format .jsonl (document, summary), or a directory with train.jsonl + test.jsonl")
    src.add_argument("--task", help="offline proxy: news-xsum")
    _finetune_args(x, 8, 16)
    x.add_argument("--beams", type=int, default=1, help="1 = greedy (KV-cached engine), >1 = beam search")
    x.add_argument("--max-new-tokens", type=int, default=64, help="summary tokens to generate at most")
    x.add_argument("--max-doc-tokens", type=int, default=None, help="cut documents to N tokens (default: fill n_ctx)")
    x.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam search: score / length**penalty (a finite number; default 1.0)")
    x.add_argument("--predictions", metavar="FILE", default=None,
                   help="write every summary to this .jsonl (its directory must exist; checked before fine-tuning)")
    x.set_defaults(func=run_xsum_command, overrides=())

    h = add_parser("lm-eval", help="run lm-eval-harness tasks (e.g. local task YAMLs) on a checkpoint")
    _common(h)
    h.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    h.add_argument("--include-path", default=None, metavar="DIR",
                   help="a directory of task YAMLs; only those tasks are indexed (fast, offline)")
    h.add_argument("--limit", type=float, default=None,
                   help="examples per task: a whole number N ≥ 1, or a fraction in (0, 1) of each task")
    h.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (≥ 0; default: the task's)")
    h.add_argument("--batch-size", type=int, default=8, help="sequences per forward when scoring (≥ 1)")
    h.set_defaults(func=run_lm_eval_command, overrides=())

    e = add_parser("export-proxy", help="write an offline proxy in its real format (GLUE tsv / XSUM jsonl)")
    e.add_argument("--task", required=True, choices=["rt-polarity", "bible-para", "news-xsum"],
                   help="the proxy to export")
    e.add_argument("--out", required=True, metavar="DIR", help="directory to write the task's files into")
    e.add_argument("--force", action="store_true", help="replace the task's files already in --out")
    e.set_defaults(func=run_export_proxy, overrides=())
