"""A/B of two versions of the package in one process: this checkout's ``mom`` against an earlier commit's, side by
side with the dense GPT-2 of equal active FLOPs (alternating rounds, best kept), so a change's effect on the
training step is measured on the same machine at the same moment, not across sessions.

    python scripts/ab_bench.py --prepare 54849b4      # here: writes .ab/mom_old (git archive, renamed)
    python scripts/ab_bench.py --device cuda --compile --batch 16 --seq-len 1024 --vocab-size 50304 --json
                                                      # there: run(..., carry=[".ab"])

The old package is the commit's ``mom/`` with its imports and custom-op namespace renamed (``mom_old``), so both
register their ops side by side. Both MoMs get the same weights (the old one loads the new one's state dict;
parameter names have not changed). Prints per-contender ms/step and the ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AB_DIR = REPO / ".ab"


def prepare(commit: str) -> Path:
    """Write ``.ab/mom_old``: ``mom/`` at ``commit``, renamed so that it imports and registers as its own package."""
    dest = AB_DIR / "mom_old"
    if dest.exists():
        shutil.rmtree(dest)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "old.tar"
        subprocess.run(["git", "archive", "-o", str(archive), commit, "mom"], cwd=REPO, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        shutil.copytree(Path(tmp) / "mom", dest)
    for f in dest.rglob("*.py"):
        text = f.read_text()
        for a, b in (("from mom.", "from mom_old."), ("from mom import", "from mom_old import"),
                     ("import mom.", "import mom_old."), ('"mom::', '"mom_old::'),
                     ("torch.ops.mom.", "torch.ops.mom_old.")):
            text = text.replace(a, b)
        f.write_text(text)
    (AB_DIR / "COMMIT").write_text(commit + "\n")
    print(f"wrote {dest} from {commit}")
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prepare", metavar="COMMIT", help="write .ab/mom_old from COMMIT and exit")
    ap.add_argument("--config", default="K2H2S")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="model config override, e.g. --set n_attn=8 (repeatable)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.prepare:
        prepare(args.prepare)
        return 0
    if not (AB_DIR / "mom_old").is_dir():
        sys.exit("ab_bench: no .ab/mom_old: run `python scripts/ab_bench.py --prepare COMMIT` first")
    sys.path.insert(0, str(AB_DIR))
    sys.path.insert(0, str(REPO))
    import mom_old.model
    import torch

    from mom.analysis.bench import bench_autocast, machine, make_step
    from mom.config.model import resolve_config
    from mom.model.flops import active_layers, vanilla_with_layers
    from mom.model.model import MoM

    if torch.device(args.device).type == "cpu":
        from mom.train.distributed import keep_freed_memory

        keep_freed_memory()  # as `mom bench` and `mom train` do on the CPU
    torch.manual_seed(0)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    cfg = resolve_config(args.config).replace(vocab_size=args.vocab_size, n_ctx=max(args.seq_len, 64), **overrides)
    def old_twin(model):
        """The old package's model of the same config (fields it knows) and weights."""
        fields = mom_old.config.MoMConfig.__dataclass_fields__
        twin = mom_old.model.MoM(mom_old.config.MoMConfig.from_dict(
            {k: v for k, v in model.config.to_dict().items() if k in fields}))
        twin.load_state_dict(model.state_dict())
        return twin

    new = MoM(cfg)
    old = old_twin(new)
    dense = MoM(vanilla_with_layers(cfg, active_layers(cfg)))
    # The dense model of each version: a change to code both share (the single forms of vanilla layers) moves the
    # dense baseline too, and each version's MoM / dense ratio must use its own.
    dense_old = old_twin(dense)
    idx = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len), device=args.device)
    losses = {}
    for name, m in (("mom_new", new), ("mom_old", old)):  # the same function before any step moves the weights
        with torch.no_grad(), bench_autocast(args.device):
            losses[name] = m.to(args.device)(idx, idx).loss.item()
    steps = {name: make_step(m, idx, device=args.device, compile=args.compile, compile_mode=args.compile_mode)[0]
             for name, m in (("mom_old", old), ("mom_new", new), ("dense_old", dense_old), ("dense", dense))}
    for step in steps.values():
        for _ in range(3 if args.compile else 2):
            step()
    best = {k: float("inf") for k in steps}
    for _ in range(args.rounds):
        for k, step in steps.items():
            t0 = time.perf_counter()
            step()
            best[k] = min(best[k], time.perf_counter() - t0)
    report = {"machine": machine(args.device), "torch": torch.__version__, "config": cfg.name,
              "old_commit": (AB_DIR / "COMMIT").read_text().strip() if (AB_DIR / "COMMIT").exists() else None,
              "batch": args.batch, "seq_len": args.seq_len, "compile": args.compile, "compile_mode": args.compile_mode,
              "initial_loss": losses, "ms_per_step": {k: round(v * 1e3, 2) for k, v in best.items()},
              "new_over_old": best["mom_new"] / best["mom_old"],
              "dense_new_over_old": best["dense"] / best["dense_old"],
              "new_over_dense": best["mom_new"] / best["dense"], "old_over_dense": best["mom_old"] / best["dense_old"]}
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:>16}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
