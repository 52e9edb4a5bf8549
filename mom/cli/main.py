"""The ``mom`` command: one table from command to the module that implements it, and the error funnel.

Each command lives in a module of :mod:`mom.cli` that defines ``add_<command>_arguments(parser)``; that function
adds the command's flags and ``set_defaults(func=run_<command>, overrides=GROUPS)``, where ``GROUPS`` names the
``--model.FIELD`` / ``--train.FIELD`` override groups the command accepts. Only the module of the command being
run is imported, so ``mom --help`` answers without loading torch.

User errors (:class:`~mom.errors.MomError`, argparse errors, a full disk, running out of memory) end as one line
``mom: error: <what and why>`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import sys
from typing import NamedTuple

from mom.cli.args import DefaultsFormatter, Parser, split_overrides
from mom.errors import MomError

EXIT_USAGE = 2
# Characters that end a line (str.splitlines' set): a message quoting a user's path or argument that holds one
# is still printed as one line, with the character escaped.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class Command(NamedTuple):
    module: str  # under mom.cli; defines add_<name>_arguments
    help: str


COMMANDS: dict[str, Command] = {
    "configs": Command("models", "list presets with parameters, depth and FLOPs"),
    "convert": Command("models", "import an HF GPT-2 directory, or export a model to HF format"),
    "prepare": Command("data", "tokenise a corpus into train.bin/val.bin (nanoGPT format)"),
    "train": Command("train", "train a model (phase 1, phase 2 with --init-from, resume, DDP via torchrun)"),
    "plot": Command("plot", "compare training runs: loss against tokens and FLOPs, bits per byte, routing"),
    "demo": Command("demo", "the whole two-phase pipeline at tiny scale, ending in runs/demo/report.md"),
    "generate": Command("generate", "generate text from a checkpoint with the KV-cached engine"),
    "eval": Command("eval", "perplexity, GLUE-format classification, XSUM-format summarisation, lm-eval"),
    "routes": Command("analyze", "routing analysis: route heatmap, SKIP rate, effective depth, co-occurrence"),
    "flops": Command("analyze", "forward/training FLOPs per token, measured routing, vs the vanilla counterpart"),
    "memory": Command("memory", "memory with a KV cache, in training and in a forward, vs the vanilla counterpart"),
    "prune": Command("analyze", "remove the least used (or smallest) modules from every pool"),
    "bench": Command("analyze", "benchmarks measured side by side in one process"),
}


def _command_in(argv: list[str]) -> str | None:
    """The command named on the command line (the first word that is not an option), if it is one."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the command named in ``argv`` gets its flags (all of them when ``argv`` is None)."""
    wanted = None if argv is None else _command_in(argv)
    p = Parser(prog="mom", description="Mixture-of-Modules: build, train, run and analyse MoM models.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        sp = sub.add_parser(name, help=cmd.help, description=cmd.help,
                            formatter_class=DefaultsFormatter)
        if argv is None or name == wanted:
            module = importlib.import_module(f"mom.cli.{cmd.module}")
            getattr(module, f"add_{name}_arguments")(sp)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mixture-of-modules")
    except PackageNotFoundError:  # run from a checkout without installing
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, extra = build_parser(argv).parse_known_args(argv)
        overrides = split_overrides(extra, args.overrides)
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
        if not _out_of_memory(e):
            raise
        return _report_out_of_memory(e)


def _out_of_memory(e: BaseException) -> bool:
    """Too large a model, batch or sequence for this machine is the user's to change, not a bug; PyTorch's CPU
    allocator reports it as a plain RuntimeError (with a C++ stack in the message)."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(e)


def _report_out_of_memory(e: BaseException) -> int:
    size = re.search(r"tried to allocate ([0-9.]+) ?(\w*)", str(e), re.IGNORECASE)
    what = f" (tried to allocate {size.group(1)} {size.group(2) or 'bytes'})" if size else ""
    print(f"mom: error: out of memory{what}: use a smaller model (--model.*), batch or sequence length",
          file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
