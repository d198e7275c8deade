"""Project-wide pytest setup: GPU detection, the --full switch, paths to shared data."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False, help="also run the full 124M-shape cases")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    full = config.getoption("--full") or os.environ.get("GPT2_FULL") == "1"
    has_gpu = _cuda_available()
    skip_full = pytest.mark.skip(reason="full 124M case: pass --full (or GPT2_FULL=1) to run it")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible to torch on this machine")
    for item in items:
        if "full" in item.keywords and not full:
            item.add_marker(skip_full)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
