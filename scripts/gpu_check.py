"""The prepared device check for a GPU-lent session (issues 4, 5, 7): one call, at most ~8 minutes on one H100.

    run(command="python3 scripts/gpu_check.py", carry=["data/builtin"], timeout_s=560)

Each step runs in its own subprocess with its own time limit, the steps run in order of importance until a
global deadline (``--deadline``, seconds), and the script goes on when one fails, so a single call brings back
everything that worked. The device returns at most 8 files, so results land in three files in $OUT (or
./gpu_check): ``gpu_check.json`` (per step: command, exit code, seconds, parsed JSON where the step prints it,
last output lines), ``gpu_check.log`` (every step's full output) and ``profile.txt`` (operator tables of one
profiled training step per contender). Record what it measured, with the device name, in docs/benchmarks.md.

``--dry-cpu`` runs the same steps on the CPU at toy sizes: it checks the script and its command lines here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Grouped GEMM ops against float32 references, with an empty group and SKIP rows at the tail (the cases a
# random-init model rarely produces), then the K2H2S model: loop vs grouped, values and gradients, under
# bf16 autocast. Prints one JSON line.
DISPATCH_CHECK = r"""
import json, sys, torch
from mom import dispatch
from mom.config import resolve_config
from mom.model import MoM
dev = sys.argv[1]
dt = torch.bfloat16 if dev == "cuda" else torch.float32
native_calls = 0
if hasattr(torch, "_grouped_mm"):
    _orig = torch._grouped_mm
    def _counting(*a, **k):
        global native_calls
        native_calls += 1
        return _orig(*a, **k)
    torch._grouped_mm = _counting
report = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__}
g = torch.Generator().manual_seed(0)
A, D, O, sizes = 1000, 64, 96, [300, 0, 500, 0]
x = torch.randn(A, D, generator=g).to(dev, dt).requires_grad_()
w = torch.randn(4, D, O, generator=g).to(dev, dt).requires_grad_()
b = torch.randn(4, O, generator=g).to(dev, dt).requires_grad_()
offs = torch.tensor(sizes, device=dev).cumsum(0).to(torch.int32)
y = dispatch.grouped_linear(x, w, b, offs)
dy = torch.randn(A, O, generator=g).to(dev, dt)
gx, gw, gb = torch.autograd.grad(y, (x, w, b), dy)
xf, wf, bf, dyf = x.detach().float(), w.detach().float(), b.detach().float(), dy.float()
ref, rgx, rgw, rgb = torch.zeros(A, O, device=dev), torch.zeros(A, D, device=dev), torch.zeros_like(wf), torch.zeros_like(bf)
start = 0
for m, n in enumerate(sizes):
    s = slice(start, start + n)
    ref[s] = xf[s] @ wf[m] + bf[m]
    rgx[s] = dyf[s] @ wf[m].t()
    rgw[m] = xf[s].t() @ dyf[s]
    rgb[m] = dyf[s].sum(0)
    start += n
rel = lambda a, r: ((a.float() - r).abs().max() / (r.abs().max() + 1e-6)).item()
report["ops_rel_err"] = {"y": rel(y, ref), "dx": rel(gx, rgx), "dw": rel(gw, rgw), "db": rel(gb, rgb)}
report["ops_empty_group_dw_max"] = gw[[1, 3]].float().abs().max().item()
# The raw op (bias and SKIP mask outside, as the model uses it on CUDA): the gradient rows past the last group
# (here random) must be ignored by the weight gradient, and the input gradient is compared on the group rows.
n_real = sum(sizes)
gx2, gw2 = torch.autograd.grad(dispatch.grouped_mm(x, w, offs), (x, w), dy)
rgw2 = torch.stack([xf[o - n:o].t() @ dyf[o - n:o] for o, n in zip(torch.tensor(sizes).cumsum(0).tolist(), sizes)])
report["raw_op_rel_err"] = {"dx": rel(gx2[:n_real], (rgx - 0)[:n_real]), "dw_ignoring_tail": rel(gw2, rgw2)}
cfg = resolve_config("K2H2S").replace(vocab_size=8192, n_ctx=256)
out = {}
for name in ("loop", "grouped"):
    torch.manual_seed(0)
    m = MoM(cfg.replace(dispatch=name)).to(dev)
    idx = torch.randint(0, 8192, (4, 256), generator=torch.Generator().manual_seed(1)).to(dev)
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
        res = m(idx, idx)
    (res.loss + res.aux_loss).backward()
    out[name] = (res.loss.float().item(), {n: p.grad.float() for n, p in m.named_parameters() if p.grad is not None})
report["model_loss"] = {k: v[0] for k, v in out.items()}
diffs = {n: rel(out["grouped"][1][n], out["loop"][1][n]) for n in out["loop"][1]}
report["model_max_rel_grad_diff"] = max(diffs.values())
report["model_worst_grads"] = dict(sorted(diffs.items(), key=lambda kv: -kv[1])[:4])
report["native_grouped_mm_calls"] = native_calls
print(json.dumps(report))
"""


def steps(dev: str, dry: bool) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds), most important first."""
    py, mom = sys.executable, [sys.executable, "-m", "mom.cli"]
    size = ["--batch", "2", "--seq-len", "64"] if dry else ["--batch", "16", "--seq-len", "1024"]
    big = ["--batch", "2", "--seq-len", "64"] if dry else ["--batch", "32", "--seq-len", "1024"]
    cfg = "tiny-mom" if dry else "K2H2S"
    vocab = ["--model.vocab_size", "50304"]  # nanoGPT's padded GPT-2 vocabulary (a multiple of 64)
    bench = mom + ["bench", "train", "--device", dev, "--config", cfg, "--json"]
    run_dir = tempfile.mkdtemp(prefix="gpu_check_run")
    env = [py, "-c", "import torch, json; c = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__,"
           " 'device': torch.cuda.get_device_name() if c else 'cpu', 'bf16': c and torch.cuda.is_bf16_supported()}))"]
    return [
        ("env", env, 30),
        ("dispatch", [py, "-c", DISPATCH_CHECK, dev], 90),
        ("bench_train_compiled", bench + size + vocab + ["--compile", "--profile", "PROFILE"], 240),
        ("bench_train_dense_b32_compiled", bench + big + vocab + ["--compile", "--only", "dense"], 120),
        ("train_smoke", mom + ["train", "--config", "tiny", "--data", "data/builtin", "--out", run_dir, "--force",
                               "--no-progress", "--train.device", dev, "--train.max_steps", "10" if dry else "60",
                               "--train.batch_size", "4" if dry else "16", "--train.seq_len", "256",
                               "--train.eval_interval", "30", "--train.eval_tokens", "8192"], 120),
        ("bench_train_eager", bench + size + vocab, 90),
        ("bench_train_noskip_compiled", bench + size + vocab + ["--compile", "--only", "mom_grouped,dense",
                                                                "--model.skip", "false"], 150),
        # Decode is launch-bound on a GPU (hundreds of small kernels per token, and the uncached contender reruns
        # the whole prefix): 256 tokens × 4 contenders × 4 rounds did not fit 60 s eager on the H100.
        ("bench_decode_eager", mom + ["bench", "decode", "--device", dev, "--json", "--new-tokens",
                                      "16" if dry else "64"], 120),
        ("bench_decode_compiled", mom + ["bench", "decode", "--device", dev, "--compile", "--json", "--new-tokens",
                                         "16" if dry else "128"], 240),
    ]


def first_json(text: str):
    """The first JSON object printed at the start of a line (one-line or indented)."""
    for m in re.finditer(r"^\{", text, re.M):
        try:
            return json.JSONDecoder().raw_decode(text[m.start():])[0]
        except json.JSONDecodeError:
            pass
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deadline", type=float, default=500, help="seconds for all steps together")
    ap.add_argument("--dry-cpu", action="store_true", help="run the steps on the CPU at toy sizes")
    ap.add_argument("--only", default=None, help="comma-separated step names")
    args = ap.parse_args()
    out = Path(os.environ.get("OUT", REPO / "gpu_check"))
    out.mkdir(parents=True, exist_ok=True)
    profile_dir = Path(tempfile.mkdtemp(prefix="gpu_check_profile"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(Path(tempfile.gettempdir()) / "gpu_check_inductor")}
    t_start, results, log = time.time(), {}, []
    for name, cmd, limit in steps("cpu" if args.dry_cpu else "cuda", args.dry_cpu):
        if args.only and name not in args.only.split(","):
            continue
        cmd = [str(profile_dir) if c == "PROFILE" else c for c in cmd]
        left = args.deadline - (time.time() - t_start)
        if left < 20:
            results[name] = {"rc": "skipped: deadline"}
            continue
        t0 = time.time()
        try:
            p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=min(limit, left))
            rc, text = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            rc = "timeout"
            text = "".join(s.decode(errors="replace") if isinstance(s, bytes) else (s or "") for s in (e.stdout, e.stderr))
        shown = cmd if name != "dispatch" else cmd[:2] + ["<DISPATCH_CHECK>"] + cmd[3:]
        results[name] = {"cmd": " ".join(shown[1:]), "rc": rc, "seconds": round(time.time() - t0, 1),
                         "json": first_json(text), "tail": text[-1200:]}
        log.append(f"===== {name}: rc={rc} in {results[name]['seconds']} s\n{text}\n")
        print(f"{name}: rc={rc} in {results[name]['seconds']} s", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
        (out / "gpu_check.log").write_text("".join(log))
        tables = sorted(profile_dir.glob("*.txt"))
        if tables:
            (out / "profile.txt").write_text("".join(f"===== {t.stem}\n{t.read_text()}\n" for t in tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
