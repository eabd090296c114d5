"""Helpers for the NavitPackedAttention plugin tests: building the kernel library, numpy reference."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN_SRC = REPO_ROOT / "plugins" / "packed_attention"
EMU_DIR = Path(__file__).resolve().parent / "emu"
if str(REPO_ROOT) not in sys.path:  # allow plain `pytest` without installing the package
    sys.path.insert(0, str(REPO_ROOT))


def find_nvcc() -> str | None:
    """nvcc on PATH, else the default CUDA location."""
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


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


def compile_kernel_library(out_dir: Path, arch: str) -> Path:
    """Compile libnavit_packed_attention_kernel.so for one architecture (e.g. "sm_90") with nvcc.

    Raises RuntimeError with the compiler output on failure, FileNotFoundError without nvcc.
    """
    nvcc = find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / "libnavit_packed_attention_kernel.so"
    cmd = [
        nvcc,
        "-std=c++17",
        "-O3",
        "-shared",
        f"-arch={arch}",
        "-Xcompiler=-fPIC,-fvisibility=hidden,-Wall,-Wextra,-Werror",
        "--Werror",
        "all-warnings",
        "-cudart=static",
        str(PLUGIN_SRC / "packedAttentionKernel.cu"),
        str(PLUGIN_SRC / "packedAttentionCApi.cpp"),
        "-o",
        str(lib),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed ({proc.returncode}):\n{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return lib


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
