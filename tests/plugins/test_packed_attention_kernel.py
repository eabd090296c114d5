"""NavitPackedAttention kernel: nvcc compile check, C API validation, and GPU correctness harness.

The GPU tests run the kernel through ctypes on torch CUDA tensors and compare with per-image
``torch.nn.functional.scaled_dot_product_attention`` in float32: fp32 and fp16 (tensor cores and SIMT), head
dims 32/64/128, one-token images, a pack of 16,384 tokens, padding, CUDA graphs. Head dim 72 (and other dims
without kernels) must be refused with STATUS_UNSUPPORTED_HEAD_DIM before anything is written. The GPU tests
skip without a CUDA GPU. The kernel library is ``$NAVIT_KERNEL_LIB`` if set, else it is compiled with nvcc for
the GPU's architecture. ``scripts/gpu_check.sh`` runs this file on a GPU machine.
"""

from __future__ import annotations

import ctypes
import math
import os
from pathlib import Path

import numpy as np
import pytest
from plugin_test_utils import compile_kernel_library, cu_seqlens, find_nvcc

from navit_deploy.compile import plugin_lib
from navit_deploy.errors import PluginError
from navit_deploy.compile.plugin_lib import (
    ALGO_AUTO,
    ALGO_SIMT,
    ALGO_TENSOR_CORE,
    STATUS_BAD_ALGO,
    STATUS_CUDA_ERROR,
    STATUS_INVALID_ARGUMENT,
    STATUS_MISALIGNED,
    STATUS_OK,
    STATUS_UNSUPPORTED_HEAD_DIM,
    load_kernel_library,
    status_string,
)

try:
    import torch
except ImportError:  # pragma: no cover - torch is a dev dependency
    torch = None  # type: ignore[assignment]


def _gpu_available() -> bool:
    return torch is not None and torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------------------------
# CPU: compile check and argument validation (no GPU needed)
# ---------------------------------------------------------------------------------------------------------------


def test_kernel_library_compiles_with_nvcc(cpu_kernel_library: Path) -> None:
    lib = load_kernel_library(cpu_kernel_library)  # checks the exported C API and its ABI version
    assert lib.navitPackedAttentionAbiVersion() == plugin_lib.KERNEL_ABI_VERSION
    assert "head_dim" in status_string(lib, STATUS_UNSUPPORTED_HEAD_DIM)


def _launch_raw(lib: ctypes.CDLL, **overrides: object) -> int:
    args: dict[str, object] = {
        "q": 256,
        "k": 256,
        "v": 256,
        "cu": 256,
        "out": 256,
        "tokens": 10,
        "seqs": 1,
        "heads": 2,
        "head_dim": 64,
        "scale": 0.0,
        "fp16": False,
        "algo": ALGO_AUTO,
    }
    args.update(overrides)
    return int(
        lib.navitPackedAttentionLaunchAlgo(
            args["q"],
            args["k"],
            args["v"],
            args["cu"],
            args["out"],
            args["tokens"],
            args["seqs"],
            args["heads"],
            args["head_dim"],
            args["scale"],
            args["fp16"],
            args["algo"],
            None,
        )
    )


def test_kernel_library_validates_arguments(cpu_kernel_library: Path) -> None:
    """Invalid arguments are rejected before anything touches the device (fake addresses are never used)."""
    lib = load_kernel_library(cpu_kernel_library)
    assert _launch_raw(lib, head_dim=48) == STATUS_UNSUPPORTED_HEAD_DIM
    assert _launch_raw(lib, head_dim=72) == STATUS_UNSUPPORTED_HEAD_DIM
    assert _launch_raw(lib, head_dim=256) == STATUS_UNSUPPORTED_HEAD_DIM
    assert _launch_raw(lib, heads=0) == STATUS_INVALID_ARGUMENT
    assert _launch_raw(lib, tokens=-1) == STATUS_INVALID_ARGUMENT
    assert _launch_raw(lib, seqs=-1) == STATUS_INVALID_ARGUMENT
    assert _launch_raw(lib, scale=math.nan) == STATUS_INVALID_ARGUMENT
    assert _launch_raw(lib, algo=9) == STATUS_BAD_ALGO
    assert _launch_raw(lib, q=None) == STATUS_INVALID_ARGUMENT
    assert _launch_raw(lib, q=257) == STATUS_MISALIGNED
    assert _launch_raw(lib, out=8) == STATUS_MISALIGNED
    assert _launch_raw(lib, tokens=0, q=None, out=None) == STATUS_OK  # empty pack: nothing to do
    if not _gpu_available() and torch is not None:
        # Valid arguments but no device: a CUDA error code, not a crash.
        assert _launch_raw(lib) == STATUS_CUDA_ERROR


# ---------------------------------------------------------------------------------------------------------------
# GPU: correctness against torch SDPA
# ---------------------------------------------------------------------------------------------------------------

_RNG = np.random.default_rng(1234)
PACKS: dict[str, tuple[list[int], int]] = {
    # name: (image token counts, padding tokens at the end)
    "mixed": ([1, 70, 5, 0, 33, 256, 1, 64, 128], 3),
    "single_4096": ([4096], 0),
    "many_small": ([int(x) for x in _RNG.integers(1, 17, size=300)], 17),
    "one_token_images": ([1] * 64, 0),
    "large_and_tiny": ([1, 1500, 2, 900], 100),
    "only_padding": ([], 50),
    "mixed_16384": ([4096, 3000, 2500, 2048, 1600, 1024, 900, 576, 400, 196, 36, 8], 0),
}
UNSUPPORTED_HEAD_DIMS = [72, 80]  # ViT-style dims without kernels (SUPPORTED_HEAD_DIMS are 32, 64, 128)
VARIANTS = [("float32", ALGO_AUTO), ("float16", ALGO_AUTO), ("float16", ALGO_SIMT)]
NUM_HEADS = 3


@pytest.fixture(scope="module")
def gpu_kernel(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    if torch is None:
        pytest.skip("torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU available (torch.cuda.is_available() is False)")
    explicit = os.environ.get(plugin_lib.KERNEL_LIB_ENV)
    if explicit:
        return load_kernel_library(plugin_lib.find_kernel_library(explicit))
    if find_nvcc() is None:
        pytest.skip(f"nvcc not found and ${plugin_lib.KERNEL_LIB_ENV} not set: cannot build the kernel library")
    major, minor = torch.cuda.get_device_capability()
    try:
        path = compile_kernel_library(tmp_path_factory.mktemp("kernel_gpu"), f"sm_{major}{minor}")
    except PluginError as exc:
        pytest.skip(f"the kernel library could not be built for sm_{major}{minor}: {exc}")
    return load_kernel_library(path)


def _run_kernel(
    lib: ctypes.CDLL,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu: torch.Tensor,
    head_dim: int,
    scale: float,
    algo: int,
    stream: torch.cuda.Stream | None = None,
) -> torch.Tensor:
    out = torch.full_like(q, float("nan"))  # every element must be written (padding included)
    stream = stream or torch.cuda.current_stream()
    rc = lib.navitPackedAttentionLaunchAlgo(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        cu.data_ptr(),
        out.data_ptr(),
        q.shape[0],
        cu.numel() - 1,
        q.shape[1] // head_dim,
        head_dim,
        scale,
        q.dtype == torch.float16,
        algo,
        stream.cuda_stream,
    )
    assert rc == STATUS_OK, status_string(lib, rc)
    stream.synchronize()
    return out


def _reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: list[int], head_dim: int, scale: float
) -> torch.Tensor:
    """Per-image SDPA in float32 (math backend, no TF32), zeros for padding tokens."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    total, width = q.shape
    heads = width // head_dim
    ref = torch.zeros(total, width, dtype=torch.float32, device=q.device)
    s = scale if scale != 0.0 else None
    with sdpa_kernel(SDPBackend.MATH):
        for b in range(len(cu) - 1):
            a, e = cu[b], cu[b + 1]
            if e <= a:
                continue

            def view(x: torch.Tensor, a: int = a, e: int = e) -> torch.Tensor:
                return x[a:e].float().view(e - a, heads, head_dim).transpose(0, 1).unsqueeze(0)

            o = torch.nn.functional.scaled_dot_product_attention(view(q), view(k), view(v), scale=s)
            ref[a:e] = o.squeeze(0).transpose(0, 1).reshape(e - a, width)
    return ref


def _make_inputs(lengths: list[int], pad: int, head_dim: int, dtype: torch.dtype, seed: int = 0):
    cu_np = cu_seqlens(lengths)
    total = int(cu_np[-1]) + pad
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (
        torch.randn(total, NUM_HEADS * head_dim, device="cuda", dtype=torch.float32, generator=gen).to(dtype)
        for _ in range(3)
    )
    return q, k, v, torch.from_numpy(cu_np).cuda(), cu_np.tolist()


@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("dtype_name,algo", VARIANTS, ids=["fp32", "fp16-tensorcore", "fp16-simt"])
@pytest.mark.parametrize("pack", list(PACKS), ids=list(PACKS))
def test_kernel_matches_sdpa(gpu_kernel: ctypes.CDLL, head_dim: int, dtype_name: str, algo: int, pack: str) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    dtype = getattr(torch, dtype_name)
    lengths, pad = PACKS[pack]
    q, k, v, cu, cu_list = _make_inputs(lengths, pad, head_dim, dtype)
    out = _run_kernel(gpu_kernel, q, k, v, cu, head_dim, 0.0, algo)
    ref = _reference(q, k, v, cu_list, head_dim, 0.0)
    tol = 1e-4 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    assert torch.count_nonzero(out[cu_list[-1] :]) == 0, "padding tokens must be zero"


@pytest.mark.parametrize("dtype_name", ["float32", "float16"])
def test_explicit_scale_and_side_stream(gpu_kernel: ctypes.CDLL, dtype_name: str) -> None:
    dtype = getattr(torch, dtype_name)
    q, k, v, cu, cu_list = _make_inputs([7, 300, 65], 5, 64, dtype, seed=3)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # inputs were written on the default stream
    with torch.cuda.stream(stream):
        out = _run_kernel(gpu_kernel, q, k, v, cu, 64, 0.37, ALGO_AUTO, stream=stream)
    ref = _reference(q, k, v, cu_list, 64, 0.37)
    tol = 1e-4 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("head_dim", UNSUPPORTED_HEAD_DIMS)
@pytest.mark.parametrize("dtype_name", ["float32", "float16"])
def test_unsupported_head_dim_is_refused_on_the_gpu(gpu_kernel: ctypes.CDLL, head_dim: int, dtype_name: str) -> None:
    """No kernel exists for these head dims: the launch reports it and writes nothing (no silent garbage)."""
    assert head_dim not in plugin_lib.SUPPORTED_HEAD_DIMS
    q, k, v, cu, _ = _make_inputs([5, 17], 3, head_dim, getattr(torch, dtype_name))
    out = torch.full_like(q, 7.0)
    rc = gpu_kernel.navitPackedAttentionLaunch(q.data_ptr(), k.data_ptr(), v.data_ptr(), cu.data_ptr(), out.data_ptr(),
                                               q.shape[0], 2, NUM_HEADS, head_dim, 0.0, q.dtype == torch.float16,
                                               torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert rc == STATUS_UNSUPPORTED_HEAD_DIM, status_string(gpu_kernel, rc)
    assert bool((out == 7.0).all())


def test_tensor_core_algo_rejects_fp32(gpu_kernel: ctypes.CDLL) -> None:
    q, k, v, cu, _ = _make_inputs([10], 0, 64, torch.float32)
    out = torch.empty_like(q)
    rc = gpu_kernel.navitPackedAttentionLaunchAlgo(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        cu.data_ptr(),
        out.data_ptr(),
        q.shape[0],
        1,
        NUM_HEADS,
        64,
        0.0,
        False,
        ALGO_TENSOR_CORE,
        None,
    )
    assert rc == STATUS_BAD_ALGO


def test_cuda_graph_capture(gpu_kernel: ctypes.CDLL) -> None:
    """The launch is capturable after a warm-up launch (what TensorRT does with CUDA graphs)."""
    q, k, v, cu, cu_list = _make_inputs([100, 1, 31], 4, 64, torch.float16, seed=5)
    ref = _reference(q, k, v, cu_list, 64, 0.0)
    _run_kernel(gpu_kernel, q, k, v, cu, 64, 0.0, ALGO_AUTO)  # warm-up (sets the shared-memory limit once)
    out = torch.zeros_like(q)
    args = (q.data_ptr(), k.data_ptr(), v.data_ptr(), cu.data_ptr(), out.data_ptr(), q.shape[0], 3, NUM_HEADS, 64)
    stream = torch.cuda.Stream()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        rc = gpu_kernel.navitPackedAttentionLaunch(*args, 0.0, True, torch.cuda.current_stream().cuda_stream)
    assert rc == STATUS_OK, status_string(gpu_kernel, rc)
    assert torch.count_nonzero(out) == 0  # captured, not run
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=2e-3)
