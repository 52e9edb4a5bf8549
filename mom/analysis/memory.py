"""Measured memory: the three readings of a model's memory (docs/analysis.md), and how each is measured.

* **cache** (:func:`measure_cache`): generation with a KV cache — the weights (bf16 by default), the keys and values
  of every attention core for B × T tokens, and the peak while a B × T prompt fills the cache (logits only at the
  last position, as generation needs). The paper's code keeps every core's keys and values by default, so this is
  the one reading in which a shallower model (fewer attention cores) saves memory at equal parameters, and the one
  that can reproduce the paper's −42% for MoM_E-large. :func:`kv_cache_bytes` counts the cache exactly.
* **train** (:func:`measure_memory`, :func:`training_forward`): a training step and the activations autograd keeps
  for backward, with SDPA and with eager attention (the official code's T×T probabilities per core).
  :func:`extrapolated_training_forward` fits one-sequence measurements at three short lengths to b·T + c·T² and
  scales to B × T, for sizes that do not fit the machine.
* **forward** (:func:`measure_memory` with ``train=False``): a no-grad forward without cache. Its peak is weights
  plus logits and one layer's transients, so equal-parameter models cannot differ much.

The forward and training-step measurement (:func:`measure_memory`), of real passes over a (B, T) batch in fp32:

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

import contextlib
import weakref
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mom.model.flops import count
from mom.model.kv_cache import KVCache, slot_names
from mom.model.modules import ModulePool
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


# ================================================================================================ reading (a): KV cache
def kv_cache_bytes(cfg, batch: int, seq_len: int, itemsize: int) -> int:
    """Bytes of a :class:`~mom.model.kv_cache.KVCache` for ``batch`` × ``seq_len`` tokens, counted by hand: per
    attention core keys and values (2·B·T·d elements of ``itemsize`` bytes) and a key-validity flag per token (B·T
    bools); shared: the real-token flags (B·T bools), key positions (T int64), the write position and the left pads
    (1 + B int64)."""
    B, T = batch, seq_len
    per_core = 2 * B * T * cfg.d_model * itemsize + B * T
    return len(slot_names(cfg)) * per_core + B * T + 8 * T + 8 * (1 + B)


@dataclass
class CacheReport:
    """Reading (a), generation with a KV cache (see the module docstring)."""
    device: str
    method: str
    batch: int
    seq_len: int
    dtype: str
    attention_cores: int
    param_bytes: int
    cache_bytes: int  # measured: storages the cache allocated (tracker / allocator)
    counted_cache_bytes: int  # kv_cache_bytes(): the hand count
    prefill_peak_bytes: int  # peak while the prompt fills the cache: weights + cache + transients

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def live_bytes(device: torch.device, make: Callable[[], Any]) -> tuple[Any, int]:
    """``make()`` and the bytes it left allocated (the tracker's live storages on the CPU, the allocator's growth
    on CUDA, which rounds to its blocks)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        obj = make()
        torch.cuda.synchronize(device)
        return obj, torch.cuda.memory_allocated(device) - base
    with LiveTensorTracker() as tracker:
        obj = make()
    return obj, tracker.current


def measure_cache(model: nn.Module, idx_BT: Tensor) -> CacheReport:
    """Reading (a) for ``model`` (on its device, in its dtype) and a prompt batch ``idx_BT``: a cache for all its
    tokens, then one prefill pass filling it, logits at the last position only. No gradients, eval mode."""
    device, dtype = idx_BT.device, next(model.parameters()).dtype
    cfg = model.config
    B, T = idx_BT.shape
    was_training = model.training
    model.eval()
    params, buffers, inputs = (storage_bytes(ts) for ts in (model.parameters(), model.buffers(), [idx_BT]))
    last = (torch.arange(B, device=device), torch.full((B,), T - 1, device=device))
    try:
        cache, cache_bytes = live_bytes(device, lambda: KVCache(model, B, T))
        with torch.no_grad():
            extra, peak = measure_peak(device, lambda: model(idx_BT, cache=cache, rows=last))
    finally:
        model.train(was_training)
    if peak is None:
        peak = params + buffers + inputs + cache_bytes + storage_bytes(last) + extra
    return CacheReport(device=str(device), method="cuda-allocator" if device.type == "cuda" else "tensor-tracker",
                       batch=B, seq_len=T, dtype=str(dtype).removeprefix("torch."),
                       attention_cores=len(slot_names(cfg)), param_bytes=params, cache_bytes=cache_bytes,
                       counted_cache_bytes=kv_cache_bytes(cfg, B, T, dtype.itemsize), prefill_peak_bytes=peak)


def analytic_cache(cfg, batch: int, seq_len: int, itemsize: int) -> dict[str, int]:
    """Reading (a) without running the model: weights and cache counted exactly; the prefill peak as their sum
    (the transients of one layer, a few B·T·d_ff, are left out)."""
    params = count(cfg).params * itemsize
    cache = kv_cache_bytes(cfg, batch, seq_len, itemsize)
    return {"param_bytes": params, "cache_bytes": cache, "weights_plus_cache_bytes": params + cache,
            "attention_cores": len(slot_names(cfg))}


# ================================================================================================ reading (b): training
@contextlib.contextmanager
def attention_impl(model: nn.Module, impl: str) -> Iterator[None]:
    """Run ``model``'s attention cores as ``impl`` (``sdpa`` or ``eager``, as ``MoMConfig.attention``) inside the
    block, the same weights; the previous setting is restored after."""
    pools = [m for m in model.modules() if isinstance(m, ModulePool)]
    before = [p.eager_attention for p in pools]
    for p in pools:
        p.eager_attention = impl == "eager"
    try:
        yield
    finally:
        for p, b in zip(pools, before):
            p.eager_attention = b


def training_forward(model: nn.Module, idx_BT: Tensor, attention: str = "sdpa") -> tuple[int, int]:
    """Reading (b) of one training forward (loss + aux loss, train mode, gradients on) with ``attention``:
    (bytes autograd keeps for backward, peak bytes during the forward above the weights). Buffers (expert-choice
    thresholds, updated in training mode) are restored and the graph is dropped."""
    device = idx_BT.device
    targets_BT = idx_BT.roll(-1, dims=1)
    buffers_before = {k: v.detach().clone() for k, v in model.named_buffers()}
    was_training = model.training
    model.train()
    saved: dict[str, Any] = {}

    def forward() -> None:
        saved["bytes"], saved["loss"] = saved_activations(
            model, lambda: (lambda out: out.loss + out.aux_loss)(model(idx_BT, targets_BT)))

    try:
        with attention_impl(model, attention):
            peak, _ = measure_peak(device, forward)
    finally:
        saved.pop("loss", None)
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers_before[k])
        model.train(was_training)
    return saved["bytes"], peak


def extrapolated_training_forward(model: nn.Module, batch: int, seq_len: int, attention: str = "sdpa",
                                  lengths: tuple[int, ...] | None = None, seed: int = 0) -> dict[str, Any]:
    """Reading (b) at ``batch`` × ``seq_len`` from one random sequence at three short lengths (default T/16, T/8,
    T/4, at least 8): the bytes kept for backward are b·T + c·T² per sequence (per-token tensors; T×T masks and
    eager probabilities), so a least-squares fit of the three points gives b and c, and the reading is
    ``batch`` × (b·T + c·T²) (masks shared by a batch are counted per sequence: a slight over-count). Returns the
    estimate, the fit and the measured points."""
    cfg = model.config
    if lengths is None:
        lengths = tuple(sorted({max(8, seq_len // k) for k in (16, 8, 4)}))
        if len(lengths) < 2:  # a short seq_len: its half and itself
            lengths = (max(1, seq_len // 2), seq_len)
    device = next(model.parameters()).device
    points = []
    for T in lengths:
        saved, _ = training_forward(model, random_batch(cfg.vocab_size, 1, T, device, seed), attention)
        points.append((T, saved))
    X = torch.tensor([[t, t * t] for t, _ in points], dtype=torch.float64)
    y = torch.tensor([float(b) for _, b in points], dtype=torch.float64)
    b, c = torch.linalg.lstsq(X, y.unsqueeze(1)).solution.squeeze(1).tolist()
    return {"saved_activation_bytes": round(batch * (b * seq_len + c * seq_len ** 2)), "per_token": b,
            "per_token_squared": c, "points": points, "attention": attention}

