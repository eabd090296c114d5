"""Fixtures of the NavitPackedAttention plugin tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plugin_test_utils import compile_kernel_library, find_nvcc


@pytest.fixture(scope="session")
def cpu_kernel_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Kernel library compiled for sm_90 with nvcc (compile check; loadable without a GPU: static cudart)."""
    if find_nvcc() is None:
        pytest.skip("nvcc not found (install the CUDA toolkit or put nvcc on PATH)")
    return compile_kernel_library(tmp_path_factory.mktemp("kernel_sm90"), "sm_90")
