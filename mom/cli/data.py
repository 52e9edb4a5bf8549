"""``mom prepare``: a corpus tokenised into train.bin / val.bin / meta.json (nanoGPT's layout)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mom.data.prepare import prepare


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``mom prepare``'s arguments (``--corpus``, ``--out``, ``--tokenizer``, ``--seed``, ``--val-fraction``,
    ``--force``)."""
    parser.add_argument(
        "--corpus",
        nargs="+",
        default=["builtin"],
        metavar="builtin|PATH",
        help="'builtin' (offline Wikipedia leads + Gutenberg books + news, ~5M tokens) and/or .txt files, "
        ".jsonl files with a 'text' field per line, or directories of them; write ./builtin for a path "
        "of that name (default: builtin)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output directory for train.bin, val.bin, meta.json"
    )
    parser.add_argument(
        "--tokenizer", default="gpt2", metavar="gpt2|bpe:N",
        help="gpt2 (GPT-2's 50,257 tokens; needed for GPT-2 weights) or bpe:N, a byte-level BPE of N tokens "
        "(257 to 65536) learnt from the train split and stored as tokenizer.json (default: gpt2)",
    )
    parser.add_argument(
        "--seed", type=int, default=1337, help="seed of the document-level train/val split (default: 1337)"
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.01, metavar="F", help="fraction of documents for val (default: 0.01)"
    )
    parser.add_argument("--force", action="store_true", help="replace a dataset already in --out")
    parser.set_defaults(func=run_prepare, overrides=())


def run_prepare(args: argparse.Namespace, overrides: dict[str, dict[str, str]]) -> int:
    """Run ``mom prepare`` from parsed arguments; prints a short summary and returns exit code 0."""
    meta = prepare(
        getattr(args, "corpus", None) or ["builtin"],
        args.out,
        val_fraction=getattr(args, "val_fraction", 0.01),
        seed=getattr(args, "seed", 1337),
        overwrite=bool(getattr(args, "force", False)),
        progress=True,
        tokenizer=getattr(args, "tokenizer", "gpt2"),
    )
    for s in meta["sources"]:
        print(f"  {s['name']}: {s['documents']:,} documents, {s['tokens']:,} tokens")
    print(
        f"train: {meta['train_tokens']:,} tokens ({meta['train_documents']:,} documents); "
        f"val: {meta['val_tokens']:,} tokens ({meta['val_documents']:,} documents)"
    )
    per_token = meta["train_bytes"] / max(1, meta["train_tokens"])
    bpb = "" if meta["unigram_bpb"] is None else f" ({meta['unigram_bpb']:.3f} bpb)"
    print(f"tokenizer {meta['tokenizer']}: {per_token:.2f} bytes/token on train; knowing only token frequencies "
          f"scores {meta['unigram_loss']:.3f} nats{bpb} on val")
    extra = ", tokenizer.json" if "tokenizer_file" in meta else ""
    print(f"wrote {Path(args.out) / 'train.bin'}, val.bin{extra}, meta.json")
    return 0
