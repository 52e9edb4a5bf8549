"""Measured memory of an inference forward pass and of a training step.

Two measurements, both of real passes over a (B, T) batch in fp32:

* **forward**: ``model(idx)`` under ``torch.no_grad()`` in eval mode — what inference without a KV cache needs;
* **training step**: forward with the loss (+ aux loss), ``backward()``, ``AdamW.step()``, gradients set to None
  afterwards — the PyTorch training loop. It is measured in the steady state: one step is run first, unmeasured,
  so the optimiser state exists, and the second step is measured (AdamW runs with lr = 0 so the weights are not
  changed; the expert-choice decode thresholds, updated in training mode, are restored).

How the peak is measured depends on the device:

* **CUDA** (``method = "cuda-allocator"``): ``torch.cuda.max_memory_allocated()`` after
  ``reset_peak_memory_stats()`` — every byte the caching allocator handed out, kernel workspaces included.
* **CPU** (``method = "tensor-tracker"``): there are no allocator statistics, so :class:`LiveTensorTracker`, a
  ``TorchDispatchMode``, sees every operator call, records the storages of the tensors it creates (outputs that
  alias an input — views, in-place results — are not new memory) and drops them when the storage is freed (a
  ``weakref.finalize`` on the storage object, which PyTorch keeps alive exactly as long as the storage). The peak
  of the live sum, plus what existed before (parameters, buffers, inputs, optimiser state), is the peak of tensor
  memory. It does not see allocator rounding or scratch buffers that kernels allocate internally, so it reads a
  little lower than an allocator would.

Alongside the peaks, the parts that explain them, measured the same way on every device: parameter and buffer
bytes; **saved activations** — the tensors autograd keeps for the backward pass, captured by
``torch.autograd.graph.saved_tensors_hooks`` during the training forward, deduplicated by storage, parameters
excluded (the classic "activation memory"); gradient bytes after ``backward()``; AdamW state bytes.

``mom memory`` (:func:`cli_memory`) measures a config (random weights) or a checkpoint and its vanilla
counterpart (:func:`mom.flops.vanilla_counterpart`) on the same batch and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import weakref
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mom.errors import MomError


def _storage_key(t: Tensor) -> int:
    return t.untyped_storage()._cdata


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and tied tensors counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, Tensor):
            st = t.untyped_storage()
            seen[st._cdata] = st.nbytes()
    return sum(seen.values())


def optimizer_state(opt: torch.optim.Optimizer | None) -> list[Tensor]:
    """The tensors an optimiser keeps (AdamW: step, moments); none without an optimiser."""
    if opt is None:
        return []
    return [t for s in opt.state.values() for t in s.values() if isinstance(t, Tensor)]


class LiveTensorTracker(TorchDispatchMode):
    """Peak bytes of tensor storages created while the mode is active (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {_storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                st = t.untyped_storage()
                key = st._cdata
                if key in inputs or key in self.live:
                    continue  # a view or in-place result: no new memory
                nbytes = st.nbytes()
                self.live[key] = nbytes
                self.current += nbytes
                self.peak = max(self.peak, self.current)
                weakref.finalize(st, self._release, key)
        return out

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


@dataclass
class MemoryReport:
    """Measured bytes (see the module docstring for what each is and how it was measured)."""

    device: str
    method: str  # "cuda-allocator" | "tensor-tracker"
    batch: int
    seq_len: int
    param_bytes: int
    buffer_bytes: int
    forward_peak_bytes: int  # peak during an inference forward, parameters included
    forward_activation_bytes: int  # the part of that peak above parameters, buffers and inputs
    saved_activation_bytes: int | None = None  # tensors kept for backward (parameters excluded)
    grad_bytes: int | None = None
    optimizer_bytes: int | None = None
    train_peak_bytes: int | None = None  # peak during a steady-state training step, everything included

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_peak(device: torch.device, fn: Callable[[], Any]) -> tuple[int, int | None]:
    """Run ``fn``; return (peak bytes allocated while it ran above what was live before, and on CUDA the absolute
    peak of the allocator — None on CPU, where only the tracked tensors are known)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak - base, peak
    with LiveTensorTracker() as tracker:
        fn()
    return tracker.peak, None


def saved_activations(model: nn.Module, fn: Callable[[], Tensor]) -> tuple[int, Tensor]:
    """Run ``fn`` (a training forward returning the loss) and count the bytes autograd keeps for backward:
    distinct storages, parameters and buffers excluded, still alive when ``fn`` returns (a branch of the graph
    that does not reach the loss — e.g. a ``topk`` used only for its indices — is freed during the forward, and
    its saved tensors with it). Returns (bytes, loss)."""
    own = {_storage_key(t) for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, tuple[weakref.ref, int]] = {}

    def pack(t: Tensor) -> Tensor:
        st = t.untyped_storage()
        if st._cdata not in own:
            # A weak reference: a storage that dies frees its address, which a later one may reuse (and replace).
            saved[st._cdata] = (weakref.ref(st), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    return sum(n for ref, n in saved.values() if ref() is not None), loss


def measure_memory(model: nn.Module, idx_BT: Tensor, *, train: bool = True) -> MemoryReport:
    """Measure ``model`` (a :class:`~mom.model.MoM`, on its device, fp32) on the token batch ``idx_BT``.

    The model is left as it was: weights untouched (AdamW with lr = 0), buffers restored, gradients None,
    original train/eval mode."""
    from mom.train import fused_adamw

    device = idx_BT.device
    was_training = model.training
    B, T = idx_BT.shape
    params = storage_bytes(model.parameters())
    buffers = storage_bytes(model.buffers())
    inputs = storage_bytes([idx_BT])
    method = "cuda-allocator" if device.type == "cuda" else "tensor-tracker"

    model.eval()
    with torch.no_grad():
        fwd_extra, fwd_peak = measure_peak(device, lambda: model(idx_BT))
    if fwd_peak is None:
        fwd_peak = params + buffers + inputs + fwd_extra
    report = MemoryReport(device=str(device), method=method, batch=B, seq_len=T, param_bytes=params,
                          buffer_bytes=buffers, forward_peak_bytes=fwd_peak, forward_activation_bytes=fwd_extra)
    if not train:
        model.train(was_training)
        return report

    buffers_before = {k: v.detach().clone() for k, v in model.named_buffers()}
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.0, fused=fused_adamw(device))
    targets_BT = idx_BT.roll(-1, dims=1)
    saved = {}

    def forward_loss() -> Tensor:
        out = model(idx_BT, targets_BT)
        return out.loss + out.aux_loss

    def step() -> None:
        saved["bytes"], loss = saved_activations(model, forward_loss)
        loss.backward()
        saved["grads"] = storage_bytes(p.grad for p in model.parameters() if p.grad is not None)
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        step()  # warm-up: creates the optimiser state
        optimizer = storage_bytes(optimizer_state(opt))
        train_extra, train_peak = measure_peak(device, step)
        if train_peak is None:
            train_peak = params + buffers + optimizer + storage_bytes([idx_BT, targets_BT]) + train_extra
    finally:
        opt.zero_grad(set_to_none=True)
        opt = None  # drop the optimiser state (the closure step() holds the name)
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers_before[k])
        model.train(was_training)
    report.saved_activation_bytes = saved["bytes"]
    report.grad_bytes = saved["grads"]
    report.optimizer_bytes = optimizer
    report.train_peak_bytes = train_peak
    return report


def random_batch(vocab_size: int, batch: int, seq_len: int, device: torch.device, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq_len), generator=g).to(device)


# ================================================================================================ CLI
FIELDS = (("param_bytes", "parameters"), ("forward_peak_bytes", "forward peak"),
          ("forward_activation_bytes", "  forward activations (above params)"),
          ("train_peak_bytes", "training-step peak"), ("saved_activation_bytes", "  saved activations"),
          ("grad_bytes", "  gradients"), ("optimizer_bytes", "  AdamW state"))


def add_memory_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="a preset or JSON config (random weights, seed 0)")
    src.add_argument("--ckpt", metavar="DIR", help="a mom model directory (or a training run)")
    p.add_argument("--batch", type=int, default=1, help="sequences per batch (default 1)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: n_ctx)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="take the batch from this dataset's val split (default: random tokens, seed 0)")
    p.add_argument("--forward-only", action="store_true", help="skip the training step (it needs ~4× the "
                                                                 "parameter memory more)")
    p.add_argument("--no-baseline", action="store_true", help="do not measure the vanilla counterpart")
    p.add_argument("--device", default="auto", help="cpu, cuda (default: cuda if available)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def cli_memory(args: argparse.Namespace, overrides: dict[str, dict[str, str]]) -> int:
    from mom.analysis import check_positive, load_model, pick_device, val_windows
    from mom.config import resolve_config
    from mom.flops import vanilla_counterpart
    from mom.model import MoM

    check_positive("--batch", args.batch)
    check_positive("--seq-len", args.seq_len)
    if args.batch >= 2**31:  # a tensor dimension (torch failed to unpack 1e20 while making the batch)
        raise MomError(f"--batch must be < 2**31, got {args.batch}")
    device = pick_device(args.device)
    if args.config is not None:
        cfg = resolve_config(args.config)
        if overrides.get("model"):
            cfg = cfg.replace(**overrides["model"])
        torch.manual_seed(0)
        model = MoM(cfg).to(device)
        what = cfg.name
    else:
        model = load_model(args.ckpt, device, **overrides.get("model", {}))
        cfg = model.config
        what = f"{cfg.name} ({args.ckpt})"
    T = args.seq_len or cfg.n_ctx
    if T > cfg.n_ctx:
        raise MomError(f"--seq-len {T} exceeds the model's context length {cfg.n_ctx}")
    if args.data:
        windows = val_windows(args.data, cfg.vocab_size, T, args.batch)
        if windows.shape[0] < args.batch:
            raise MomError(f"{args.data}: the val split has only {windows.shape[0]} windows of {T} tokens "
                           f"(--batch {args.batch})")
        idx_BT, tokens = windows.to(device), f"val windows of {args.data}"
    else:
        idx_BT, tokens = random_batch(cfg.vocab_size, args.batch, T, device), "random tokens (seed 0)"
    train = not args.forward_only
    rows = {"model": measure_memory(model, idx_BT, train=train).as_dict()}
    base_cfg = vanilla_counterpart(cfg)
    if not args.no_baseline and base_cfg is not cfg:
        del model
        torch.manual_seed(0)
        rows["vanilla"] = measure_memory(MoM(base_cfg).to(device), idx_BT, train=train).as_dict()
    ratios = {}
    if "vanilla" in rows:
        for key, _ in FIELDS:
            a, b = rows["model"][key], rows["vanilla"][key]
            if a is not None and b:
                ratios[key] = a / b
    result = {"config": cfg.name, "vanilla_config": base_cfg.name, "batch": args.batch, "seq_len": T, "tokens": tokens,
              **rows, "ratios": ratios}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    r = rows["model"]
    print(f"memory of {what}, batch {args.batch} × {T} tokens ({tokens}), fp32, on {r['device']} ({r['method']})")
    has_base = "vanilla" in rows
    head = f"{'':<38} {cfg.name[:14]:>14}"
    if has_base:
        head += f" {base_cfg.name[:14]:>14} {'ratio':>7}"
    print(head)
    for key, label in FIELDS:
        if r[key] is None:
            continue
        line = f"{label:<38} {_mib(r[key]):>14}"
        if has_base:
            line += f" {_mib(rows['vanilla'][key]):>14} {ratios.get(key, float('nan')):7.3f}"
        print(line)
    if has_base:
        print(f"vanilla counterpart: {base_cfg.name} = {cfg.gpt2_layers} GPT-2 layers of the same width (equal "
              "parameters up to the routers; the paper's comparison)")
    return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"
