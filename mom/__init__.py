"""mom — Mixture-of-Modules: Transformers as dynamic assemblies of modules."""

from mom.errors import CheckpointError, ConfigError, DataError, MomError

__all__ = ["MomError", "ConfigError", "CheckpointError", "DataError"]
__version__ = "0.1.0"
