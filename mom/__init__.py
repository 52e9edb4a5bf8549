"""mom — Mixture-of-Modules: Transformers as dynamic assemblies of modules."""

from mom.config import MoMConfig, preset, preset_names, resolve_config
from mom.errors import CheckpointError, ConfigError, DataError, MomError
from mom.model import MoM, MoMOutput, RouteRecord
from mom.tokenizer import tokenizer

__all__ = [
    "MoM", "MoMConfig", "MoMOutput", "RouteRecord", "preset", "preset_names", "resolve_config", "tokenizer",
    "MomError", "ConfigError", "CheckpointError", "DataError",
]
__version__ = "0.1.0"
