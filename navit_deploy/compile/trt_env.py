"""Lazy access to TensorRT and the CUDA runtime (cuda-python), shared by ``navit compile`` and the runner.

Nothing here imports ``tensorrt`` or ``cuda`` at module import: each accessor imports on first use and raises
:class:`~navit_deploy.errors.BackendUnavailableError` with install guidance when the package is missing.

CUDA binding: ``cuda-python`` (``from cuda.bindings import runtime as cudart``; ``from cuda import cudart`` on
older releases), the NVIDIA-maintained binding that TensorRT's own Python samples use
(``samples/python/common_runtime.py`` on release/10.3 and release/11.1). It covers everything the runner needs
in one package: device selection (``cudaSetDevice``), the device's name and compute capability
(``cudaGetDeviceProperties``, recorded in and checked against the engine sidecar), streams, device memory and
async copies. Polygraphy's ``polygraphy.cuda`` wrapper would cover streams and memory only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from navit_deploy.compile.compat import GpuInfo
from navit_deploy.compile.plugin_lib import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
from navit_deploy.errors import BackendUnavailableError, PluginError

TENSORRT_HINT = (
    "Install TensorRT's Python bindings: on Jetson they come with JetPack (`sudo apt install python3-libnvinfer`; "
    "create the virtual environment with --system-site-packages so it sees them); on x86-64/SBSA Linux "
    "`pip install tensorrt` (NVIDIA's wheels, matching your CUDA major version). See docs/tensorrt.md and docs/jetson.md."
)
CUDA_HINT = (
    "Install NVIDIA's CUDA Python bindings for your CUDA major version: `pip install 'cuda-python>=12,<13'` with "
    "CUDA 12 (JetPack 6, CUDA 12.6) or `pip install 'cuda-python>=13,<14'` with CUDA 13 (JetPack 7). "
    "See docs/jetson.md."
)

_TRT: Any = None
_CUDART: Any = None
_LOGGER: Any = None
_PLUGIN_HANDLES: dict[str, Any] = {}


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`BackendUnavailableError` saying how to install it."""
    global _TRT
    if _TRT is None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailableError(f"TensorRT is not installed here ({exc}). {TENSORRT_HINT}") from exc
        _TRT = trt
    return _TRT


def import_cudart() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` on older releases)."""
    global _CUDART
    if _CUDART is None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:
                from cuda import cudart  # type: ignore[no-redef]  # older cuda-python layout
            except ImportError as exc:
                raise BackendUnavailableError(f"cuda-python is not installed here ({exc}). {CUDA_HINT}") from exc
        _CUDART = cudart
    return _CUDART


def tensorrt_version() -> str:
    return str(import_tensorrt().__version__)


def get_logger() -> Any:
    """One ``trt.Logger`` (WARNING) for runtimes created by this package."""
    global _LOGGER
    if _LOGGER is None:
        trt = import_tensorrt()
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def cuda_call(result: Any, what: str) -> Any:
    """Check a cuda-python call's ``(error, *values)`` result; return the value(s)."""
    cudart = import_cudart()
    err, rest = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        try:
            name = cudart.cudaGetErrorName(err)[1]
            name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # noqa: BLE001 - the name is only decoration
            name = str(err)
        raise BackendUnavailableError(f"CUDA call {what} failed: {name}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def set_device(device: int) -> None:
    cudart = import_cudart()
    count = cuda_call(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if not 0 <= int(device) < int(count):
        raise BackendUnavailableError(f"CUDA device {device} does not exist here ({count} device(s) visible)")
    cuda_call(cudart.cudaSetDevice(int(device)), f"cudaSetDevice({device})")


def gpu_info(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA ``device`` (makes it the current device)."""
    cudart = import_cudart()
    set_device(device)
    prop = cuda_call(cudart.cudaGetDeviceProperties(int(device)), "cudaGetDeviceProperties")
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\x00", 1)[0].decode("utf-8", "replace")
    return GpuInfo(str(name).strip(), f"{int(prop.major)}.{int(prop.minor)}")


def load_plugin(path: str | os.PathLike[str]) -> None:
    """Register ``NavitPackedAttention`` from our plugin library with TensorRT's global plugin registry.

    ``IPluginRegistry.load_library`` (TensorRT >= 10) dlopens the library and registers the creators its
    ``getCreators()`` returns; ``libnavit_packed_attention_plugin.so`` registers nothing by itself, made for this.
    It returns ``None`` when a creator is already registered (e.g. the self-registering ``_autoreg`` library was
    dlopened earlier by Polygraphy's ``--plugins``), so success is judged by looking the creator up, exactly as
    the ONNX parser and the engine deserializer do.
    """
    trt = import_tensorrt()
    key = str(Path(path).resolve())
    registry = trt.get_plugin_registry()
    if key not in _PLUGIN_HANDLES:
        _PLUGIN_HANDLES[key] = registry.load_library(key)
    if registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
        raise PluginError(
            f"TensorRT {trt.__version__} has no {PLUGIN_NAME} plugin creator (version {PLUGIN_VERSION}, namespace "
            f"'{PLUGIN_NAMESPACE}') after loading {key}: the plugin library is missing or built for another TensorRT. "
            "Rebuild it against this TensorRT's headers: scripts/check_plugin_build.sh /path/to/TensorRT/include "
            "(see plugins/packed_attention/README.md)")
