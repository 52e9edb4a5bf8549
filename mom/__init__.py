"""mom — Mixture-of-Modules: Transformers as dynamic assemblies of modules.

The public API, loaded on first use (``import mom`` alone does not import torch, so ``mom --help`` is instant)::

    from mom import MoM, MoMConfig, preset
    model = MoM(preset("tiny-mom"))

``MoM.from_gpt2`` (HF GPT-2 import and decomposition) is provided by :mod:`mom.convert.gpt2`, which getting ``MoM``
from here imports too.
"""

from __future__ import annotations

import importlib
from typing import Any

from mom.errors import CheckpointError, ConfigError, DataError, MomError

# name -> module that defines it
_API = {
    "MoM": "mom.model.model", "MoMOutput": "mom.model.model", "RouteRecord": "mom.model.model",
    "MoMConfig": "mom.config.model", "preset": "mom.config.model", "preset_names": "mom.config.model",
    "resolve_config": "mom.config.model", "TrainConfig": "mom.config.train", "train": "mom.train.loop",
    "from_gpt2": "mom.convert.gpt2", "Engine": "mom.inference.engine", "SamplingParams": "mom.inference.engine",
    "tokenizer": "mom.data.tokenizer", "load_tokenizer": "mom.data.tokenizer",
}

__all__ = [*_API, "MomError", "ConfigError", "CheckpointError", "DataError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'mom' has no attribute {name!r}")
    if name == "MoM":
        importlib.import_module("mom.convert.gpt2")  # registers MoM.from_gpt2
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
