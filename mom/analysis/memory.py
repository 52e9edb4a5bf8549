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
counterpart (:func:`mom.model.flops.vanilla_counterpart`) on the same batch and prints the ratios.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mom.train.optim import fused_adamw


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
    """Measure ``model`` (a :class:`~mom.model.model.MoM`, on its device, fp32) on the token batch ``idx_BT``.

    The model is left as it was: weights untouched (AdamW with lr = 0), buffers restored, gradients None,
    original train/eval mode."""
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
