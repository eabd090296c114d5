"""Helpers for the NavitPackedAttention plugin tests: building the kernel library, numpy reference."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN_SRC = REPO_ROOT / "plugins" / "packed_attention"
EMU_DIR = Path(__file__).resolve().parent / "emu"
if str(REPO_ROOT) not in sys.path:  # allow plain `pytest` without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from navit_deploy.compile.plugin_lib import compile_kernel_library, find_nvcc  # noqa: E402  (re-exported for tests)

__all__ = ["EMU_DIR", "PLUGIN_SRC", "REPO_ROOT", "compile_kernel_library", "cu_seqlens", "env_flag",
           "find_cuda_include", "find_nvcc", "reference_attention_np"]


def find_cuda_include() -> Path | None:
    """Directory holding cuda_runtime_api.h ($CUDA_HOME, $CUDA_PATH, next to nvcc, /usr/local/cuda)."""
    candidates = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", "")]
    nvcc = find_nvcc()
    if nvcc is not None:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if root and (Path(root) / "include" / "cuda_runtime_api.h").is_file():
            return Path(root) / "include"
    return None


def cu_seqlens(lengths: list[int]) -> np.ndarray:
    """cu_seqlens (int32) of consecutive images with the given token counts."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)


def reference_attention_np(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, cu: np.ndarray, num_heads: int, head_dim: int, scale: float
) -> np.ndarray:
    """Float64 numpy reference: per-image softmax attention, zeros for padding tokens."""
    total = q.shape[0]
    s = scale if scale != 0.0 else 1.0 / np.sqrt(head_dim)
    q3 = q.astype(np.float64).reshape(total, num_heads, head_dim)
    k3 = k.astype(np.float64).reshape(total, num_heads, head_dim)
    v3 = v.astype(np.float64).reshape(total, num_heads, head_dim)
    out = np.zeros((total, num_heads, head_dim))
    for b in range(len(cu) - 1):
        a, e = int(cu[b]), int(cu[b + 1])
        if e <= a:
            continue
        scores = np.einsum("qhd,khd->hqk", q3[a:e], k3[a:e]) * s
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        out[a:e] = np.einsum("hqk,khd->qhd", p, v3[a:e])
    return out.reshape(total, num_heads * head_dim)


def env_flag(name: str) -> bool:
    value = os.environ.get(name, "")
    return value not in ("", "0", "false", "False")
