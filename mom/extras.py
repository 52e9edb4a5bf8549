"""Optional extras: the packages some features need beyond the core install (model, training, generation), and one
way to import them that turns their absence into one error line naming the pip command.

=============  ==============================================================  =====================================
extra          packages                                                        what needs them
=============  ==============================================================  =====================================
``eval``       scikit-learn, scipy, rouge-score, pythonbible (+ KJV, WEB)       ``mom eval glue|xsum``, the proxies
``plots``      matplotlib                                                      run plots, ``mom plot``, reports
``tensorboard`` tensorboard                                                     event files of ``mom train``
``lmeval``     lm-eval                                                         ``mom eval lm-eval``
``hf``         transformers                                                    ``mom convert --to-hf``
=============  ==============================================================  =====================================
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mom.errors import MissingExtraError


def import_extra(module: str, extra: str, what: str, package: str | None = None) -> ModuleType:
    """``import module``, or :class:`MissingExtraError` saying that ``what`` needs ``package`` (default: the
    module's top-level name) from the optional ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        # Only the package itself missing is the user's to fix; a broken install inside it is a real error.
        if e.name is not None and e.name.split(".")[0] != top:
            raise
        raise MissingExtraError(what, package or top, extra) from None
