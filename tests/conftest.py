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


@pytest.fixture(scope="module")
def llama64():
    """A tiny seeded Llama in float64 (tests/tiny.py), one per test module."""
    from tiny import tiny_llama

    import torch

    return tiny_llama(torch.float64)


@pytest.fixture(scope="module")
def tok():
    """The word-level tokenizer of the tiny models."""
    from tiny import word_tokenizer

    return word_tokenizer()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: on a shared machine extra threads only spin."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
