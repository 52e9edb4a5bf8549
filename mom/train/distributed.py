"""Where a training run executes: the process's place in a ``torchrun`` job (DDP or FSDP2), its device and
autocast dtype, and the batch geometry that follows from them (micro-batches accumulated to a global step)."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mom.config.model import MoMConfig
from mom.config.train import TrainConfig
from mom.device import pick_device
from mom.errors import ConfigError


@dataclass
class Dist:
    """Where this process sits in a ``torchrun`` job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def sum_(self, t: Tensor) -> Tensor:
        if self.enabled:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t


def init_distributed(device_spec: str) -> Dist:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` set): nccl on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--train.device {device_spec}: no CUDA device is available")
    if not torch.distributed.is_initialized():
        use_cuda = device_spec.startswith("cuda") or (device_spec == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(local)
        backend = "nccl" if use_cuda else "gloo"
        store = restarted_job_store(world)
        if store is None:
            torch.distributed.init_process_group(backend=backend)
        else:
            torch.distributed.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
    return Dist(rank=rank, world=world, local_rank=local, enabled=True)


def restarted_job_store(world: int):
    """The key-value store of a job that torch elastic restarted (``torchrun --max-restarts``), or None.

    torchrun's workers share the agent's store (``TORCHELASTIC_USE_AGENT_STORE``), and the keys the killed attempt
    wrote are still in it: a restarted process can read a peer's address from the previous attempt and fail with
    "Gloo connectFullMesh failed … Connection refused" (NCCL: a stale unique id; pytorch/pytorch#135712); seen here
    on one node in 1 of 2 tries before this. The keys of each attempt get their own prefix, named by the restart
    count (the same on every process of a one-node job; several nodes: launch torchrun with
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, which gives every attempt a new store)."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart in ("", "0") or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from datetime import timedelta

    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                       is_master=False, timeout=timedelta(minutes=10))
    return torch.distributed.PrefixStore(f"mom/attempt-{restart}", store)


def shard_model(model: nn.Module) -> None:
    """FSDP2 (``--train.parallel fsdp``): shard parameters, gradients and AdamW moments over the processes.

    The whole model is one FSDP unit: a module pool's weights are applied by the dispatcher as tensors, not by
    calling a submodule, so per-layer units would never see their forward hooks fire. Parameters are therefore
    all-gathered for the forward and the backward of each micro-batch and resharded after; what is saved is the
    persistent memory of gradients and AdamW moments (3/4 of a DDP replica's), not activations. Autocast handles
    bf16 exactly as under DDP, so the two compute the same numbers."""
    from torch.distributed.fsdp import fully_shard

    fully_shard(model)


def no_grad_sync(fwd: nn.Module, fsdp: bool):
    """Accumulating a micro-batch without reducing gradients: DDP's ``no_sync``, or FSDP2's switch."""
    if not fsdp:
        return fwd.no_sync()

    @contextlib.contextmanager
    def off():
        fwd.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            fwd.set_requires_gradient_sync(True)

    return off()


def autocast_dtype(tcfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: plain float32). ``auto`` is bf16 on CUDA GPUs that support it."""
    if tcfg.dtype == "float32":
        return None
    if tcfg.dtype == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def keep_freed_memory() -> bool:
    """On CPU with glibc, stop ``free`` from handing big blocks back to the kernel (``mallopt``: no mmap for large
    allocations, no heap trimming); returns whether it did.

    Every training step allocates and frees the same large buffers (the logits alone are B·T·V floats, 400 MB for
    16×128 tokens at GPT-2's vocabulary). glibc serves blocks over 32 MB with fresh ``mmap``s and unmaps them on
    free, so each step page-faults and zeroes hundreds of MB again: measured here, 35-40% of a CPU run's time was
    kernel time, and keeping the memory made ``tiny`` train ~1.5-1.8× faster (the usual advice is jemalloc or
    tcmalloc; this is the same effect without a preload). The process keeps its peak memory until it exits. Set
    ``MOM_MALLOC_TUNING=0`` to leave malloc alone."""
    if os.environ.get("MOM_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt knobs of this kind)
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor: an FSDP2 shard (DTensor) is all-gathered — every process must call this — others as is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


@dataclass
class Runtime:
    """The process group, device, autocast dtype and batch geometry of a run."""

    dist: Dist
    device: torch.device
    amp: torch.dtype | None  # autocast dtype (None: plain float32)
    seq_len: int  # tokens per sequence
    accum: int  # micro-batches per optimiser step and process
    tokens_per_step: int  # over all processes
    parallel: str = "ddp"  # under torchrun: ddp or fsdp

    @property
    def fsdp(self) -> bool:
        return self.dist.enabled and self.parallel == "fsdp"


def setup_runtime(mcfg: MoMConfig, tcfg: TrainConfig) -> Runtime:
    """Join the process group (under torchrun), pick the device, and check the batch geometry."""
    dist = init_distributed(tcfg.device)
    device = pick_device("cuda" if dist.enabled and tcfg.device.startswith("cuda") else tcfg.device,
                         flag="--train.device", local_rank=dist.local_rank)
    if device.type == "cpu":
        keep_freed_memory()
    T = tcfg.seq_len or mcfg.n_ctx
    if T > mcfg.n_ctx:
        raise ConfigError(f"seq_len ({T}) exceeds the model's context n_ctx ({mcfg.n_ctx})")
    micro_tokens = tcfg.batch_size * T * dist.world
    tokens_per_step = tcfg.tokens_per_step or micro_tokens
    if tokens_per_step % micro_tokens:
        raise ConfigError(f"tokens_per_step ({tokens_per_step}) must be a multiple of batch_size·seq_len·processes "
                          f"= {tcfg.batch_size}·{T}·{dist.world} = {micro_tokens}")
    return Runtime(dist, device, autocast_dtype(tcfg, device), T, tokens_per_step // micro_tokens, tokens_per_step,
                   tcfg.parallel)

