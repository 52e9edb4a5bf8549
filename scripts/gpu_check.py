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
ref, rgx = torch.zeros(A, O, device=dev), torch.zeros(A, D, device=dev)
rgw, rgb = torch.zeros_like(wf), torch.zeros_like(bf)
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
idx = torch.randint(0, 8192, (4, 256), generator=torch.Generator().manual_seed(1)).to(dev)
def loss_and_grads(model_cfg):  # loss and fp32 gradients of one bf16 step of a fresh model (same seed, weights)
    torch.manual_seed(0)
    m = MoM(model_cfg).to(dev)
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
        res = m(idx, idx)
    (res.loss + res.aux_loss).backward()
    return res.loss.float().item(), {n: p.grad.float() for n, p in m.named_parameters() if p.grad is not None}
out = {name: loss_and_grads(cfg.replace(dispatch=name)) for name in ("loop", "grouped")}
report["model_loss"] = {k: v[0] for k, v in out.items()}
diffs = {n: rel(out["grouped"][1][n], out["loop"][1][n]) for n in out["loop"][1]}
report["model_max_rel_grad_diff"] = max(diffs.values())
report["model_worst_grads"] = dict(sorted(diffs.items(), key=lambda kv: -kv[1])[:4])
report["native_grouped_mm_calls"] = native_calls
# key_mask="pack" (valid tokens packed first, plain causal attention) against the boolean mask, same weights, batch
try:
    packed = {km: loss_and_grads(cfg.replace(key_mask=km)) for km in ("mask", "pack")}
    report["packed_keys_loss"] = {k: v[0] for k, v in packed.items()}
    report["packed_keys_max_rel_grad_diff"] = max(rel(packed["pack"][1][n], packed["mask"][1][n])
                                                  for n in packed["mask"][1])
except Exception as e:
    report["packed_keys_error"] = repr(e)[:400]
print(json.dumps(report))
"""


# What the SKIP key mask costs in attention, and what could replace it (issue 7). A routed attention step masks
# the keys of tokens whose picks were all SKIP, so it passes SDPA a (B, 1, T, T) mask instead of is_causal; the
# H100 profile put those calls at ~2x the unmasked ones. Forward + backward at the training shape, bf16, for:
#   causal      is_causal=True, no key mask (the floor; not a correct MoM step)
#   bool_mask   mom.modules.causal_attention with key_valid (what the model runs now)
#   augmented   is_causal=True on head dim 64 + 8: q gets a constant 1 channel, k gets -1e4 on invalid keys, so an
#               invalid key's score drops by 1e4/sqrt(64) and its softmax weight underflows to exactly 0
#   flex        FlexAttention (compiled) with mask_mod causal & (key_valid | diagonal), block mask built per call
#   pack        mom.modules.packed_causal_attention (key_mask="pack"): each sequence's valid tokens moved to its
#               front, then is_causal=True (the reordering and its inverse timed too)
# Each variant's output on the rows of valid queries is compared with bool_mask. Prints one JSON line.
ATTENTION_CHECK = r"""
import json, sys, time, torch
import torch.nn.functional as F
from mom.modules import causal_attention
dev, B, T = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
H, hd, dt = 12, 64, (torch.bfloat16 if dev == "cuda" else torch.float32)
g = torch.Generator().manual_seed(0)
qkv = torch.randn(B, T, 3 * H * hd, generator=g).to(dev, dt).requires_grad_()
valid = (torch.rand(B, T, generator=g) > 0.1).to(dev)  # ~10% all-SKIP tokens, as in a K2H2S step
dout = torch.randn(B, T, H * hd, generator=g).to(dev, dt)
def heads(x):
    return x.view(B, T, 3, H, hd).permute(2, 0, 3, 1, 4)
def causal():
    q, k, v = heads(qkv)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, H * hd)
def bool_mask():
    return causal_attention(qkv, H, valid)
def augmented():
    q, k, v = heads(qkv)
    pad = q.new_zeros(B, H, T, 8)
    penalty = torch.where(valid, 0.0, -1e4).to(dt).view(B, 1, T, 1).expand(B, H, T, 1)
    qa = torch.cat([q, pad[..., :1] + 1, pad[..., 1:]], -1)
    ka = torch.cat([k, penalty, pad[..., 1:]], -1)
    va = torch.cat([v, pad], -1)
    o = F.scaled_dot_product_attention(qa, ka, va, is_causal=True, scale=hd ** -0.5)[..., :hd]
    return o.transpose(1, 2).reshape(B, T, H * hd)
variants = {"causal": causal, "bool_mask": bool_mask, "augmented": augmented}
from mom.modules import packed_causal_attention
def pack():
    return packed_causal_attention(qkv, H, valid)
variants["pack"] = pack
try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    flex_c = torch.compile(flex_attention, dynamic=False)
    def flex():
        def mask_mod(b, h, qi, ki):
            return (qi >= ki) & (valid[b, ki] | (qi == ki))
        bm = create_block_mask(mask_mod, B, None, T, T, device=dev)
        q, k, v = heads(qkv)
        return flex_c(q, k, v, block_mask=bm).transpose(1, 2).reshape(B, T, H * hd)
    variants["flex"] = flex
except Exception as e:
    flex_error = repr(e)
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
report = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
          "shape": [B, T, H, hd], "dtype": str(dt), "ms_fwd_bwd": {}, "max_err_vs_bool_mask": {}, "errors": {}}
if "flex_error" in globals():
    report["errors"]["flex_setup"] = flex_error
ref = bool_mask().detach().float()
for name, fn in variants.items():
    try:
        def step():
            qkv.grad = None
            o = fn()
            o.backward(dout)
            return o
        for _ in range(3):
            o = step()
        sync()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(10):
                step()
            sync()
            best = min(best, (time.perf_counter() - t0) / 10)
        report["ms_fwd_bwd"][name] = round(best * 1e3, 4)
        report["max_err_vs_bool_mask"][name] = (o.detach().float() - ref)[valid].abs().max().item()
    except Exception as e:
        report["errors"][name] = repr(e)[:300]
base = report["ms_fwd_bwd"].get("bool_mask")
report["ratio_vs_bool_mask"] = {k: round(v / base, 3) for k, v in report["ms_fwd_bwd"].items()} if base else None
print(json.dumps(report))
"""


# The routing ops of a step against the torch primitives they replace (issue 7: the H100 profile of 54849b4 had
# 64 radix-sort kernels, 16 top-k kernels and atomic counts per K2H2S step), each compiled on its own, at the
# K2H2S training shape: A = T·K assignments over N + 1 = 5 choices. Prints one JSON line of µs per call.
ROUTING_CHECK = r"""
import json, sys, time, torch
from mom.dispatch import counting_sort
from mom.routers import top_k
dev, T = sys.argv[1], int(sys.argv[2])
K, M = 2, 5
g = torch.Generator().manual_seed(0)
keys = torch.randint(0, M, (T * K,), generator=g).to(dev)
logits = torch.randn(T, M, generator=g).to(dev).requires_grad_()
def plan_argsort(k):
    order = torch.argsort(k, stable=True)
    counts = torch.zeros(M, dtype=torch.int64, device=k.device).scatter_add_(0, k, torch.ones_like(k))
    inv = torch.empty_like(order).scatter_(0, order, torch.arange(k.numel(), device=k.device))
    return order, inv, counts
def plan_counting(k):
    return counting_sort(k, M)
def select_with(fn):
    def loss(x):  # softmax, top-K, renormalise: the token-choice part of mom.routers.select
        w, i = fn(x.softmax(-1))
        return (w / w.sum(-1, keepdim=True) * (i + 1)).sum()
    return loss
def counts_scatter(k):
    return torch.zeros(M, device=k.device).scatter_add_(0, k, torch.ones(k.numel(), device=k.device))
def counts_compare(k):
    return (k.view(-1, 1) == torch.arange(M, device=k.device)).sum(0).float()
cases = {"plan_argsort": (plan_argsort, keys), "plan_counting": (plan_counting, keys),
         "select_topk": (select_with(lambda p: p.topk(K, dim=-1)), logits),
         "select_top_k": (select_with(lambda p: top_k(p, K)), logits),
         "counts_scatter_add": (counts_scatter, keys), "counts_compare_sum": (counts_compare, keys)}
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
report = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
          "assignments": T * K, "choices": M, "us_per_call": {}, "errors": {}}
out = {}
for name, (fn, arg) in cases.items():
    try:
        c = torch.compile(fn, fullgraph=True)
        f = (lambda x, c=c: c(x).backward()) if name.startswith("select") else c  # forward + backward
        for _ in range(3):
            out[name] = f(arg)
        sync()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(20):
                f(arg)
            sync()
            best = min(best, (time.perf_counter() - t0) / 20)
        report["us_per_call"][name] = round(best * 1e6, 1)
    except Exception as e:
        report["errors"][name] = repr(e)[:300]
if "plan_argsort" in out and "plan_counting" in out:
    report["plans_equal"] = all(torch.equal(a, b) for a, b in zip(out["plan_argsort"], out["plan_counting"]))
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
        # The same at 32 sequences a step, where the dense baseline meets its target (474.8K tokens/s): a routed
        # step's fixed costs (router launches, small kernels) spread over twice the tokens.
        ("bench_train_b32_compiled", bench + big + vocab + ["--compile", "--only", "mom_grouped,dense"], 200),
        # All-SKIP keys hidden by packing (valid tokens first, plain causal attention) instead of a mask (issue 7)
        ("bench_train_packed_keys", bench + size + vocab + ["--compile", "--only", "mom_grouped,dense",
                                                           "--model.key_mask", "pack"], 200),
        # CUDA graphs for both contenders: a routed step launches more, smaller kernels than a dense one, so the
        # host's launch time may hide less of itself behind the GPU's work.
        ("bench_train_cudagraphs", bench + size + vocab + ["--compile", "--compile-mode", "reduce-overhead",
                                                          "--only", "mom_grouped,dense"], 200),
        ("bench_train_dense_b32_compiled", bench + big + vocab + ["--compile", "--only", "dense"], 120),
        ("train_smoke", mom + ["train", "--config", "tiny", "--data", "data/builtin", "--out", run_dir, "--force",
                               "--no-progress", "--train.device", dev, "--train.max_steps", "10" if dry else "60",
                               "--train.batch_size", "4" if dry else "16", "--train.seq_len", "256",
                               "--train.eval_interval", "30", "--train.eval_tokens", "8192"], 120),
        # This checkout against an earlier commit's package, side by side (needs .ab/mom_old, made here by
        # `python scripts/ab_bench.py --prepare COMMIT`, and carry=[".ab", ...])
        ("ab_previous", [py, "scripts/ab_bench.py", "--device", dev, "--compile", "--json", "--batch", size[1],
                         "--seq-len", size[3], "--vocab-size", "512" if dry else "50304"], 240),
        ("routing_ops", [py, "-c", ROUTING_CHECK, dev, "64" if dry else "16384"], 90),
        ("attention_mask", [py, "-c", ATTENTION_CHECK, dev] + (["2", "64"] if dry else ["16", "1024"]), 150),
        ("bench_train_packed_cudagraphs", bench + size + vocab + ["--compile", "--compile-mode", "reduce-overhead",
                                                                 "--only", "mom_grouped,dense",
                                                                 "--model.key_mask", "pack"], 200),
        ("bench_train_eager", bench + size + vocab, 90),
        ("bench_train_noskip_compiled", bench + size + vocab + ["--compile", "--only", "mom_grouped,dense",
                                                                "--model.skip", "false"], 150),
        # Decode is launch-bound on a GPU (hundreds of small kernels per token, and the uncached contender reruns
        # the whole prefix): 256 tokens × 4 contenders × 4 rounds did not fit 60 s eager on the H100.
        ("bench_decode_eager", mom + ["bench", "decode", "--device", dev, "--json", "--rounds", "2", "--new-tokens",
                                      "16" if dry else "64"], 120),
        ("bench_decode_compiled", mom + ["bench", "decode", "--device", dev, "--compile", "--json", "--new-tokens",
                                         "16" if dry else "128"], 240),
        # CUDA graphs for the decode steps (one full-context cache per batch size, reused at fixed addresses)
        ("bench_decode_cudagraphs", mom + ["bench", "decode", "--device", dev, "--compile", "--compile-mode",
                                           "reduce-overhead", "--json", "--new-tokens", "16" if dry else "128"], 240),
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
            text = "".join(s.decode(errors="replace") if isinstance(s, bytes) else (s or "")
                           for s in (e.stdout, e.stderr))
        snippet = {"dispatch": "<DISPATCH_CHECK>", "attention_mask": "<ATTENTION_CHECK>",
                   "routing_ops": "<ROUTING_CHECK>"}.get(name)
        shown = cmd if snippet is None else cmd[:2] + [snippet] + cmd[3:]
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
