"""Test configuration.

Without CUDA, kernels run under the Triton interpreter: TRITON_INTERPRET=1 must be
set before anything imports triton, so it is set here, at collection start.
Tests marked ``gpu`` are skipped without CUDA, with the reason shown.
"""
from __future__ import annotations

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none found; kernels run under the Triton interpreter)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> str:
    """Where kernel tests run: the GPU when there is one, else the CPU under the interpreter."""
    return "cuda" if HAS_CUDA else "cpu"
