"""The prepared device check for a GPU-lent session (issues 4, 5, 7): one call, about 8 minutes on one H100.

    run(command="python3 scripts/gpu_check.py", carry=["data/builtin"], timeout_s=570)

Each step runs in its own subprocess with its own time limit and the script goes on when one fails, so a single
call brings back everything that worked. Results land in $OUT (or ./gpu_check): ``gpu_check.json`` (per step:
command, exit code, seconds, last output lines, parsed JSON where the step prints it) and one log per step.
Record what it measured, with the device name, in docs/benchmarks.md.

Steps: the CUDA dispatch check (grouped — ``torch._grouped_mm`` in bf16 — against the loop reference, values
and gradients); a bf16-autocast training smoke run on the built-in corpus; ``mom bench train`` at GPT-2-small
width (MoM K=2 H=2 vs dense of equal active FLOPs, grouped vs loop); the dense GPT-2 baseline's training
throughput and MFU; compiled KV-cached decode.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("OUT", REPO / "gpu_check"))

DISPATCH_CHECK = r"""
import torch
from mom.config import resolve_config
from mom.model import MoM
torch.manual_seed(0)
cfg = resolve_config("K2H2S").replace(vocab_size=8192, n_ctx=256)
out = {}
for dispatch in ("loop", "grouped"):
    torch.manual_seed(0)
    m = MoM(cfg.replace(dispatch=dispatch)).cuda()
    x = torch.randint(0, 8192, (4, 256), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        res = m(x, x)
    (res.loss + res.aux_loss).backward()
    out[dispatch] = (res.loss.float().item(), {n: p.grad.float() for n, p in m.named_parameters() if p.grad is not None})
dl = abs(out["loop"][0] - out["grouped"][0])
dg = max(((out["loop"][1][n] - out["grouped"][1][n]).abs().max() / (out["loop"][1][n].abs().max() + 1e-6)).item()
         for n in out["loop"][1])
print(json.dumps({"loss_loop": out["loop"][0], "loss_grouped": out["grouped"][0], "loss_diff": dl,
                  "max_rel_grad_diff": dg, "device": torch.cuda.get_device_name()}))
""".replace("import torch\n", "import json, torch\n", 1)

STEPS = [
    ("env", [sys.executable, "-c", "import torch, json; print(json.dumps({'torch': torch.__version__, "
                                   "'device': torch.cuda.get_device_name(), 'bf16': torch.cuda.is_bf16_supported()}))"],
     30),
    ("dispatch_cuda", [sys.executable, "-c", DISPATCH_CHECK], 90),
    ("train_smoke", [sys.executable, "-m", "mom.cli", "train", "--config", "tiny", "--data", "data/builtin",
                     "--out", "/tmp/gpu_check_run", "--force", "--no-progress", "--train.device", "cuda",
                     "--train.max_steps", "40", "--train.batch_size", "16", "--train.seq_len", "256",
                     "--train.eval_interval", "20", "--train.eval_tokens", "8192"], 120),
    ("bench_train_K2H2S", [sys.executable, "-m", "mom.cli", "bench", "train", "--device", "cuda", "--config",
                           "K2H2S", "--batch", "16", "--seq-len", "1024", "--json"], 150),
    ("bench_train_K2H2S_compiled", [sys.executable, "-m", "mom.cli", "bench", "train", "--device", "cuda",
                                    "--config", "K2H2S", "--batch", "16", "--seq-len", "1024", "--compile", "--json"],
     180),
    ("bench_decode", [sys.executable, "-m", "mom.cli", "bench", "decode", "--device", "cuda", "--compile",
                      "--json"], 90),
]


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    results = {}
    for name, cmd, limit in STEPS:
        t0 = time.time()
        try:
            p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit)
            rc, text = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            rc, text = "timeout", (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        (OUT / f"{name}.log").write_text(text)
        parsed = None  # the first JSON object printed at the start of a line (one-line or indented)
        for m in re.finditer(r"^\{", text, re.M):
            try:
                parsed = json.JSONDecoder().raw_decode(text[m.start():])[0]
                break
            except json.JSONDecodeError:
                pass
        results[name] = {"cmd": cmd if name not in ("env", "dispatch_cuda") else cmd[:2], "rc": rc,
                         "seconds": round(time.time() - t0, 1), "json": parsed, "tail": text[-1500:]}
        print(f"{name}: rc={rc} in {results[name]['seconds']} s", flush=True)
        (OUT / "gpu_check.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
