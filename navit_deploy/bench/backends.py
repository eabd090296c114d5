"""Backends the benchmark compares on the same weights: which exist here, and why the others are skipped."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from navit_deploy.errors import NavitError
from navit_deploy.runtime.runner import Runner

BACKEND_NAMES = ("ort-cpu", "ort-cpu-mha", "ort-cpu-int8", "torch-dense", "torch-segment", "ort-cuda", "ort-cuda-packed", "tensorrt")
DEFAULT_BACKENDS = ("ort-cpu", "ort-cpu-mha", "ort-cpu-int8", "torch-dense", "torch-segment", "ort-cuda", "tensorrt")


@dataclass
class Backend:
    """One way to run the model: ``backend`` (runtime + device), ``precision``, attention ``lowering``."""

    key: str
    backend: str
    precision: str
    lowering: str
    make: Callable[[], Runner]
    provider: str = "cpu"
    threads: int | None = None
    notes: str = ""
    _runner: Runner | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision} ({self.lowering})"

    def runner(self) -> Runner:
        if self._runner is None:
            self._runner = self.make()
        return self._runner

    def close(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None


@dataclass(frozen=True)
class Skipped:
    key: str
    reason: str


def _onnx_backend(key: str, path: Path, provider: str, threads: int | None) -> Backend:
    from navit_deploy.runtime.onnx_runner import OnnxRunner

    probe = OnnxRunner(path, provider=provider, threads=threads)  # raises with a reason when unusable
    art = probe.artifact
    return Backend(key, f"onnxruntime-{provider}", art.precision, art.lowering, lambda: probe, provider, threads,
                   _runner=probe)


def resolve_backends(keys: list[str], model: str, onnx: Path | None, onnx_int8: Path | None = None,
                     onnx_packed: Path | None = None, engine: Path | None = None,
                     threads: int | None = None, onnx_mha: Path | None = None) -> tuple[list[Backend], list[Skipped]]:
    """Build the requested backends that can run here; every other one comes back with its reason.
    ``ort-cpu`` runs ``onnx`` (the dense lowering), ``ort-cpu-mha`` the ``ort-mha`` export ``onnx_mha``."""
    out: list[Backend] = []
    skipped: list[Skipped] = []
    for key in keys:
        try:
            if key not in BACKEND_NAMES:
                raise NavitError(f"unknown backend; choose from {', '.join(BACKEND_NAMES)}")
            if key == "ort-cpu":
                if onnx is None:
                    raise NavitError("no ONNX model")
                out.append(_onnx_backend(key, onnx, "cpu", threads))
            elif key == "ort-cpu-mha":
                if onnx_mha is None:
                    raise NavitError("no ort-mha export given (--onnx-mha FILE; navit export --attention ort-mha)")
                out.append(_onnx_backend(key, onnx_mha, "cpu", threads))
            elif key == "ort-cpu-int8":
                if onnx_int8 is None:
                    raise NavitError("no INT8 model given (--onnx-int8 FILE, e.g. from navit quantize)")
                out.append(_onnx_backend(key, onnx_int8, "cpu", threads))
            elif key == "ort-cuda":
                if onnx is None:
                    raise NavitError("no ONNX model")
                out.append(_onnx_backend(key, onnx, "cuda", None))
            elif key == "ort-cuda-packed":
                if onnx_packed is None:
                    raise NavitError("no ort-packed export given (--onnx-packed FILE; navit export --attention ort-packed)")
                out.append(_onnx_backend(key, onnx_packed, "cuda", None))
            elif key in ("torch-dense", "torch-segment"):
                if importlib.util.find_spec("torch") is None:
                    raise NavitError("torch is not installed")
                attention = key.split("-", 1)[1]
                out.append(Backend(key, "pytorch-eager", "fp32", attention, _torch_factory(model, attention),
                                   notes="segment: Python loop over images (per-image attention)"
                                   if attention == "segment" else "dense block-diagonal mask"))
            elif key == "tensorrt":
                out.append(_tensorrt_backend(engine))
        except NavitError as exc:
            skipped.append(Skipped(key, str(exc)))
    return out, skipped


def _torch_factory(model: str, attention: str) -> Callable[[], Runner]:
    def make() -> Runner:
        from navit_deploy.runtime.torch_runner import TorchRunner

        return TorchRunner(model, attention=attention)

    return make


def _tensorrt_backend(engine: Path | None) -> Backend:
    if importlib.util.find_spec("tensorrt") is None:
        raise NavitError("TensorRT (python package tensorrt) is not installed here")
    if engine is None:
        raise NavitError("no TensorRT engine given (--engine FILE)")
    if importlib.util.find_spec("navit_deploy.runtime.tensorrt_runner") is None:
        raise NavitError("this build has no TensorRT runner (navit_deploy.runtime.tensorrt_runner)")
    from navit_deploy.runtime.open import open_runner

    runner, art = open_runner(engine)
    return Backend("tensorrt", "tensorrt", art.precision, art.lowering, lambda: runner, "tensorrt", _runner=runner)
