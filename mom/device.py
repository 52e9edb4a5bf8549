"""Which device a command or a training run uses: one rule for ``auto``, ``cpu``, ``cuda``, ``cuda:N`` and ``mps``."""

from __future__ import annotations

import torch

from mom.errors import ConfigError


def pick_device(spec: str | None, *, flag: str = "--device", local_rank: int | None = None) -> torch.device:
    """The device ``spec`` names (None or ``auto``: CUDA when available, else the CPU).

    ``flag`` names the option in errors (``--device``, ``--train.device``). ``local_rank``: the process's GPU under
    ``torchrun``, which a bare ``cuda`` (or ``auto`` on a GPU machine) resolves to. A device that is not there is
    one :class:`ConfigError` line."""
    if spec in (None, "auto"):
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"{flag}: unknown device '{spec}' (cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag} {spec}: no CUDA device is available")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{flag} {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{flag} mps: MPS is not available")
    return device
