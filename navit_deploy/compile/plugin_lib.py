"""Locate and load the NavitPackedAttention TensorRT plugin and its standalone kernel library.

Torch-free (only ``ctypes``/``pathlib``), so it can be imported by deployment code that has no torch.

The plugin library (``libnavit_packed_attention_plugin.so``) is what TensorRT loads with
``IPluginRegistry.load_library`` (``navit compile``, the TensorRT runner) or ``trtexec --dynamicPlugins``; it
registers nothing by itself. Loaders that only ``dlopen`` (``polygraphy run --plugins``, ONNX Runtime's
``trt_extra_plugin_lib_paths``, ``trtexec --staticPlugins``) need ``libnavit_packed_attention_plugin_autoreg.so``,
the same plugin with static registration. The kernel library (``libnavit_packed_attention_kernel.so``) exposes
the same CUDA kernel through a C API (``navitPackedAttentionLaunch``) for tests and benchmarks without TensorRT.
All are built from ``plugins/packed_attention`` (see its README.md)::

    scripts/check_plugin_build.sh /path/to/TensorRT/include   # plugin libraries + kernel library
    scripts/check_plugin_build.sh --kernel-only               # kernel library only
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

from navit_deploy.errors import PluginError

PLUGIN_NAME: Final[str] = "NavitPackedAttention"
"""TensorRT plugin name == ONNX op_type of the packed attention node."""
PLUGIN_VERSION: Final[str] = "1"
PLUGIN_NAMESPACE: Final[str] = "navit"
ONNX_DOMAIN: Final[str] = "navit"
"""Domain of the custom ONNX node (the TensorRT ONNX parser matches plugins by op_type)."""
SUPPORTED_HEAD_DIMS: Final[tuple[int, ...]] = (32, 64, 128)

PLUGIN_LIBRARY_NAME: Final[str] = "libnavit_packed_attention_plugin.so"
"""For ``IPluginRegistry.load_library`` / ``trtexec --dynamicPlugins``: no static registration."""
AUTOREG_PLUGIN_LIBRARY_NAME: Final[str] = "libnavit_packed_attention_plugin_autoreg.so"
"""For loaders that only dlopen (Polygraphy ``--plugins``, ONNX Runtime, ``trtexec --staticPlugins``)."""
KERNEL_LIBRARY_NAME: Final[str] = "libnavit_packed_attention_kernel.so"
PLUGIN_LIB_ENV: Final[str] = "NAVIT_PLUGIN_LIB"
KERNEL_LIB_ENV: Final[str] = "NAVIT_KERNEL_LIB"

REPO_ROOT: Final[Path] = Path(__file__).resolve().parents[2]
PLUGIN_SOURCE_DIR: Final[Path] = REPO_ROOT / "plugins" / "packed_attention"
DEFAULT_BUILD_DIR: Final[Path] = PLUGIN_SOURCE_DIR / "build"

KERNEL_ABI_VERSION: Final[int] = 1
"""Value returned by ``navitPackedAttentionAbiVersion()`` of a compatible kernel library."""

# Status codes of navitPackedAttentionLaunch (packedAttentionKernel.h).
STATUS_OK: Final[int] = 0
STATUS_INVALID_ARGUMENT: Final[int] = 1
STATUS_UNSUPPORTED_HEAD_DIM: Final[int] = 2
STATUS_MISALIGNED: Final[int] = 3
STATUS_CUDA_ERROR: Final[int] = 4
STATUS_NO_CONFIG: Final[int] = 5
STATUS_BAD_ALGO: Final[int] = 6

# Algorithms accepted by navitPackedAttentionLaunchAlgo.
ALGO_AUTO: Final[int] = 0
ALGO_SIMT: Final[int] = 1
ALGO_TENSOR_CORE: Final[int] = 2

_BUILD_HINT: Final[str] = (
    "Build it with `scripts/check_plugin_build.sh /path/to/TensorRT/include` (the directory containing "
    "NvInfer.h; needs nvcc and cmake), or `scripts/check_plugin_build.sh --kernel-only` for the kernel "
    "library alone; see plugins/packed_attention/README.md."
)


def _resolve(explicit: str | os.PathLike[str] | None, env_var: str, file_name: str, what: str) -> Path:
    """Shared lookup: explicit path, then ``$env_var``, then the default build directory."""
    if explicit is not None and str(explicit) != "":
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise PluginError(f"{what} not found at the given path {path}. {_BUILD_HINT}")
        return path.resolve()
    from_env = os.environ.get(env_var, "")
    if from_env:
        path = Path(from_env).expanduser()
        if not path.is_file():
            raise PluginError(f"{what} not found at ${env_var}={from_env}. {_BUILD_HINT}")
        return path.resolve()
    path = DEFAULT_BUILD_DIR / file_name
    if not path.is_file():
        raise PluginError(
            f"{what} not found: no explicit path, ${env_var} is not set, and {path} does not exist. {_BUILD_HINT}"
        )
    return path.resolve()


def find_plugin_library(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of ``libnavit_packed_attention_plugin.so``.

    Looks at ``explicit`` (if given, it must exist), then ``$NAVIT_PLUGIN_LIB``, then
    ``plugins/packed_attention/build/``. Raises :class:`PluginError` with build instructions when missing.
    """
    return _resolve(explicit, PLUGIN_LIB_ENV, PLUGIN_LIBRARY_NAME, "TensorRT plugin library")


def find_kernel_library(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of ``libnavit_packed_attention_kernel.so`` (``$NAVIT_KERNEL_LIB``, then the build dir)."""
    return _resolve(explicit, KERNEL_LIB_ENV, KERNEL_LIBRARY_NAME, "packed attention kernel library")


def find_nvcc() -> str | None:
    """``nvcc`` on ``PATH``, else ``$CUDA_HOME/bin/nvcc``, else ``/usr/local/cuda/bin/nvcc``; None if none exists."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
        candidate = Path(root) / "bin" / "nvcc"
        if root and candidate.is_file():
            return str(candidate)
    return None


def compile_kernel_library(out_dir: str | os.PathLike[str], arch: str, werror: bool = True) -> Path:
    """Compile ``libnavit_packed_attention_kernel.so`` for one architecture (e.g. ``"sm_90"``) with nvcc alone.

    The quick way for tests and benchmarks (no CMake, no TensorRT): the kernel and its C API, static CUDA
    runtime, ``-Wall -Wextra`` (errors with ``werror``). ``scripts/check_plugin_build.sh --kernel-only`` builds the
    same library through CMake. Raises :class:`PluginError` without nvcc or when the compile fails.
    """
    nvcc = find_nvcc()
    if nvcc is None:
        raise PluginError("nvcc not found (install the CUDA toolkit, put nvcc on PATH or set CUDA_HOME)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lib = out / KERNEL_LIBRARY_NAME
    warnings = "-Wall,-Wextra" + (",-Werror" if werror else "")
    cmd = [nvcc, "-std=c++17", "-O3", "-shared", f"-arch={arch}", f"-Xcompiler=-fPIC,-fvisibility=hidden,{warnings}",
           *(["--Werror", "all-warnings"] if werror else []), "-cudart=static",
           str(PLUGIN_SOURCE_DIR / "packedAttentionKernel.cu"), str(PLUGIN_SOURCE_DIR / "packedAttentionCApi.cpp"),
           "-o", str(lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PluginError(f"nvcc failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-4000:]}\n"
                          f"{proc.stderr[-4000:]}")
    return lib


def load_kernel_library(path: str | os.PathLike[str]) -> ctypes.CDLL:
    """Load a library exporting the kernel C API and declare its signatures.

    Works with both the kernel library and the plugin library (which exports the same C API). The launch
    functions take device pointers (``int`` addresses, e.g. ``tensor.data_ptr()``) and a CUDA stream handle
    (``torch.cuda.current_stream().cuda_stream``, or ``None`` for the legacy default stream) and return a
    status code (0 = success, see :func:`status_string`). Raises :class:`PluginError` when the file cannot be
    loaded or is not a compatible build.
    """
    lib_path = Path(path)
    try:
        lib = ctypes.CDLL(str(lib_path))
    except OSError as exc:
        raise PluginError(f"cannot load {lib_path}: {exc}. {_BUILD_HINT}") from exc
    try:
        launch = lib.navitPackedAttentionLaunch
        launch_algo = lib.navitPackedAttentionLaunchAlgo
        status = lib.navitPackedAttentionStatusString
        abi = lib.navitPackedAttentionAbiVersion
    except AttributeError as exc:
        raise PluginError(f"{lib_path} does not export the navitPackedAttention C API: {exc}") from exc
    common = [
        ctypes.c_void_p,  # q
        ctypes.c_void_p,  # k
        ctypes.c_void_p,  # v
        ctypes.c_void_p,  # cu_seqlens (int32, device)
        ctypes.c_void_p,  # out
        ctypes.c_int32,  # total tokens
        ctypes.c_int32,  # number of images
        ctypes.c_int32,  # num_heads
        ctypes.c_int32,  # head_dim
        ctypes.c_float,  # scale (0 = 1/sqrt(head_dim))
        ctypes.c_bool,  # is_fp16
    ]
    launch.argtypes = [*common, ctypes.c_void_p]
    launch.restype = ctypes.c_int32
    launch_algo.argtypes = [*common, ctypes.c_int32, ctypes.c_void_p]
    launch_algo.restype = ctypes.c_int32
    status.argtypes = [ctypes.c_int32]
    status.restype = ctypes.c_char_p
    abi.argtypes = []
    abi.restype = ctypes.c_int32
    version = int(abi())
    if version != KERNEL_ABI_VERSION:
        raise PluginError(
            f"{lib_path} has kernel C API version {version}, expected {KERNEL_ABI_VERSION}; rebuild it. {_BUILD_HINT}"
        )
    return lib


def status_string(lib: ctypes.CDLL, status: int) -> str:
    """Text of a status code returned by ``navitPackedAttentionLaunch``."""
    raw = lib.navitPackedAttentionStatusString(int(status))
    return raw.decode("utf-8", "replace") if raw else f"status {status}"


def library_supports_head_dim(lib: ctypes.CDLL, head_dim: int) -> tuple[bool, str]:
    """Ask a loaded kernel library whether it has kernels for ``head_dim``: ``(supported, status text)``.

    A zero-token launch is validated like any other (head dim included) and launches nothing, so this is safe
    with or without a GPU and needs no device memory.
    """
    status = int(lib.navitPackedAttentionLaunch(None, None, None, None, None, 0, 0, 1, int(head_dim), 0.0, False, None))
    return status == STATUS_OK, status_string(lib, status)


def plugin_attributes(num_heads: int, head_dim: int, scale: float | None = None) -> dict[str, int | float | str]:
    """ONNX node attributes of a ``NavitPackedAttention`` node (op_type PLUGIN_NAME, domain ONNX_DOMAIN).

    ``plugin_version``/``plugin_namespace`` select the TensorRT plugin; the others become plugin fields
    (INT -> int32, FLOAT -> float32). ``scale=None`` stores 0.0, meaning ``1/sqrt(head_dim)``.
    Raises :class:`PluginError` for values the plugin would reject at build time.
    """
    if int(num_heads) != num_heads or not 1 <= int(num_heads) <= 65535:
        raise PluginError(f"num_heads must be an integer in [1, 65535], got {num_heads!r}")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise PluginError(f"head_dim {head_dim!r} is not supported by the plugin (supported: {SUPPORTED_HEAD_DIMS})")
    scale_value = 0.0 if scale is None else float(scale)
    if not math.isfinite(scale_value):
        raise PluginError(f"scale must be finite, got {scale!r}")
    return {
        "num_heads": int(num_heads),
        "head_dim": int(head_dim),
        "scale": scale_value,
        "plugin_version": PLUGIN_VERSION,
        "plugin_namespace": PLUGIN_NAMESPACE,
    }


__all__ = [
    "ALGO_AUTO",
    "ALGO_SIMT",
    "ALGO_TENSOR_CORE",
    "AUTOREG_PLUGIN_LIBRARY_NAME",
    "DEFAULT_BUILD_DIR",
    "KERNEL_LIBRARY_NAME",
    "ONNX_DOMAIN",
    "PLUGIN_LIBRARY_NAME",
    "PLUGIN_NAME",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "SUPPORTED_HEAD_DIMS",
    "compile_kernel_library",
    "find_kernel_library",
    "find_nvcc",
    "library_supports_head_dim",
    "find_plugin_library",
    "load_kernel_library",
    "plugin_attributes",
    "status_string",
]
