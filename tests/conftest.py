import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(__file__))

import pytest


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model, loaded once per test session (dequantised copy cached on disk)."""
    from attnlrp.models import load_model

    return load_model()
