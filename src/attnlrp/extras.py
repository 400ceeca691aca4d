"""Optional dependencies, installed as extras: ``pip install 'attnlrp[eval]'`` and so on.

``pip install attnlrp`` brings what explaining needs. Evaluation, images and plots, and the explorer's server
need more; they import their dependencies through ``require`` so that a missing one fails with a message that
names the extra to install, not a bare ``ModuleNotFoundError`` from deep inside.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

#: extra -> what it is for (the extras themselves are declared in pyproject.toml)
EXTRAS = {
    "eval": "the faithfulness evaluation (captum baselines, scikit-learn digits, matplotlib curves, scipy statistics)",
    "vision": "image explanations and figures (matplotlib)",
    "pandas": "DataFrames of explanations (to_pandas, explanations_to_pandas)",
    "serve": "the local explorer's server",
    "captum": "the captum integration (attnlrp.integrations.captum)",
    "inseq": "the inseq integration (attnlrp.integrations.inseq)",
}


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ``MissingExtraError`` naming ``pip install 'attnlrp[extra]'``."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"{module} is needed for {EXTRAS[extra]} but is not installed; install it with "
            f"pip install 'attnlrp[{extra}]' (or 'attnlrp[all]')"
        ) from error
