"""Shared by the scripts that run lxt 2.1 in `.venv-lxt` (scripts/lxt_reference*.py). Runs there, not in .venv."""

from __future__ import annotations

import sys


def stub_torchvision() -> None:
    """lxt.efficient imports torchvision.models.vision_transformer at import time, only to build its (unused
    here) patch map for torchvision's ViT. torchvision from the registry does not import with this machine's
    torch 2.13 CPU build, so, when it is missing, a stub module stands in: the map is built from torch.nn's
    classes and never applied (we patch only transformers' models)."""
    try:
        import torchvision.models.vision_transformer  # noqa: F401
    except Exception:
        import types

        import torch

        tv = types.ModuleType("torchvision")
        models = types.ModuleType("torchvision.models")
        vit = types.ModuleType("torchvision.models.vision_transformer")
        vit.nn = torch.nn
        tv.models, models.vision_transformer = models, vit
        sys.modules.update(
            {"torchvision": tv, "torchvision.models": models, "torchvision.models.vision_transformer": vit}
        )
