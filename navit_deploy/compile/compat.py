"""Rules of ``navit compile`` and the TensorRT runner, as pure functions (no TensorRT, no torch).

* :func:`check_lowering` / :func:`check_head_dim`: which attention lowerings TensorRT can build.
* :func:`plan_precision`: how a requested precision becomes builder settings on TensorRT 10 vs 11.
* :class:`EngineInfo`: the ``engine`` section of an engine's JSON sidecar (``<engine>.json``, stored under the
  artifact's ``extra["engine"]`` so the sidecar stays a valid :class:`DeploymentArtifact`).
* :func:`engine_problems` / :func:`check_engine`: whether an engine may run here (TensorRT version, GPU,
  source model), with messages that say what to do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from navit_deploy.compile.plugin_lib import SUPPORTED_HEAD_DIMS
from navit_deploy.compile.profiles import PackProfile
from navit_deploy.errors import ArtifactMismatchError, ConfigError, PluginError
from navit_deploy.export.lowerings import get_lowering
from navit_deploy.runtime.artifact import DeploymentArtifact, sha256_file  # noqa: F401  (sha256_file: re-exported)

ENGINE_KEY = "engine"
ENGINE_SECTION_FORMAT = 1
PRECISIONS = ("fp32", "fp16", "int8")
TRT_NATIVE_MIN_VERSION = (11, 1)
QUANTIZE_HINT = ("produce an explicitly quantized (Q/DQ) ONNX model with `navit quantize --onnx MODEL.onnx --precision "
                 "int8 --out MODEL.int8.onnx`, then compile that model with --precision int8")


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; tolerates suffixes such as ``"11.1.0.5rc1"``."""
    parts = []
    for piece in str(text).strip().split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    if len(parts) < 2:
        raise ConfigError(f"not a TensorRT version: {text!r}")
    return tuple(parts)


def major_minor(text: str) -> tuple[int, int]:
    v = parse_version(text)
    return v[0], v[1]


def is_trt11(trt_version: str) -> bool:
    """TensorRT >= 11: strongly typed networks only, no FP16/INT8 builder flags, no implicit INT8 calibrator."""
    return parse_version(trt_version)[0] >= 11


# ---------------------------------------------------------------------------------------------------------------
# Lowerings and head dims


def check_lowering(lowering: str, trt_version: str | None = None) -> bool:
    """Refuse lowerings TensorRT cannot build; return whether the lowering needs our plugin library.

    ``trt_version=None`` checks only what does not depend on the TensorRT version (before TensorRT is imported).
    """
    low = get_lowering(lowering)
    if low.name in ("ort-packed", "ort-mha"):
        node, runs = (("com.microsoft.PackedMultiHeadAttention", "only ONNX Runtime's CUDA provider runs")
                      if low.name == "ort-packed" else
                      ("a Loop of com.microsoft.MultiHeadAttention", "only ONNX Runtime's CPU and CUDA providers run"))
        raise ConfigError(f"this model uses the '{low.name}' attention lowering ({node}), "
                          f"which {runs}; TensorRT cannot build it. Export with "
                          "`navit export --attention trt-plugin` (our plugin, TensorRT 10/11), `--attention dense` (no "
                          "plugin) or `--attention trt-native` (TensorRT >= 11.1)")
    if low.name == "trt-native" and trt_version is not None and major_minor(trt_version) < TRT_NATIVE_MIN_VERSION:
        raise ConfigError(f"this model uses the 'trt-native' lowering (TRT_Attention), which needs TensorRT >= "
                          f"{TRT_NATIVE_MIN_VERSION[0]}.{TRT_NATIVE_MIN_VERSION[1]}; this machine has TensorRT "
                          f"{trt_version}. Export with `--attention trt-plugin` or `--attention dense` for this TensorRT")
    return low.name == "trt-plugin"


def check_head_dim(lowering: str, head_dim: int) -> None:
    """The plugin's kernels exist for head dims 32/64/128 only: refuse others at compile time."""
    if lowering == "trt-plugin" and head_dim not in SUPPORTED_HEAD_DIMS:
        raise PluginError(f"the NavitPackedAttention plugin supports head dims {SUPPORTED_HEAD_DIMS}, this model has "
                          f"head_dim={head_dim}; export it with `--attention dense` for TensorRT instead")


# ---------------------------------------------------------------------------------------------------------------
# Precision


@dataclass(frozen=True)
class PrecisionPlan:
    """How to build: the network mode and the builder flags (``fp16``/``int8`` exist on TensorRT 10 only)."""

    precision: str
    strongly_typed: bool
    fp16: bool = False
    int8: bool = False

    @property
    def builder_flags(self) -> list[str]:
        return [name for name, on in (("FP16", self.fp16), ("INT8", self.int8)) if on]


def plan_precision(trt_version: str, requested: str | None, source_precision: str, has_qdq: bool,
                   strongly_typed: bool | None = None) -> PrecisionPlan:
    """Turn ``--precision`` into builder settings, or refuse with what to do instead.

    * ``requested=None`` means the ONNX model's own precision.
    * int8 needs an explicitly quantized model (Q/DQ nodes; no calibrator is used on any version).
    * TensorRT 11 (and TensorRT 10 with ``strongly_typed=True``) builds strongly typed: the ONNX model's types
      are the precision, so the request must match the model.
    * TensorRT 10 (default, weakly typed): fp32 model -> fp32 or fp16 (``BuilderFlag.FP16``); fp16 model -> fp16;
      Q/DQ int8 model -> int8 (``BuilderFlag.INT8``; layers outside Q/DQ stay fp32, as on TensorRT 11).
    """
    if source_precision not in PRECISIONS:
        raise ConfigError(f"the ONNX model's artifact has precision {source_precision!r}; expected one of {PRECISIONS}")
    precision = source_precision if requested is None else requested
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if source_precision == "int8" and not has_qdq:
        raise ConfigError("the ONNX model's artifact says int8 but the graph has no QuantizeLinear/DequantizeLinear "
                          "nodes; re-run `navit quantize`")
    if precision == "int8" and not has_qdq:
        raise ConfigError(f"--precision int8 needs an explicitly quantized ONNX model (Q/DQ nodes); this one is "
                          f"{source_precision} without them, and implicit INT8 calibration is not supported (TensorRT "
                          f"11 removed it). To get int8: {QUANTIZE_HINT}")
    trt11 = is_trt11(trt_version)
    if trt11 and strongly_typed is False:
        raise ConfigError(f"TensorRT {trt_version} builds strongly typed networks only; drop the weak-typing request")
    typed = trt11 or bool(strongly_typed)
    if typed:
        if precision != source_precision:
            why = f"TensorRT {trt_version}" if trt11 else "a strongly typed build"
            todo = (QUANTIZE_HINT if precision == "int8" else
                    f"run `navit quantize --onnx MODEL.onnx --precision {precision} --out MODEL.{precision}.onnx` "
                    "and compile that model"
                    if precision == "fp16" else
                    "compile the fp32 ONNX export instead (re-run `navit export`)")
            raise ConfigError(f"{why} takes the precision from the ONNX model, which is {source_precision}; it cannot "
                              f"build --precision {precision} from it. To get {precision}: {todo}")
        return PrecisionPlan(precision, strongly_typed=True)
    # TensorRT 10, weakly typed: builder flags enable lower-precision kernels.
    if source_precision == "fp16" and precision != "fp16":
        raise ConfigError(f"this ONNX model is fp16; --precision {precision} cannot undo that. Compile it with "
                          "--precision fp16, or compile the fp32 export")
    if source_precision == "int8" and precision != "int8":
        raise ConfigError(f"this ONNX model is quantized (Q/DQ int8); compile it with --precision int8, or compile the "
                          f"fp32 export for --precision {precision}")
    return PrecisionPlan(precision, strongly_typed=False, fp16=precision == "fp16", int8=precision == "int8")


# ---------------------------------------------------------------------------------------------------------------
# GPU identity and the engine section of the sidecar


@dataclass(frozen=True)
class GpuInfo:
    """A CUDA device as TensorRT engines care about it: its name and compute capability (``"8.7"``)."""

    name: str
    compute_capability: str

    def describe(self) -> str:
        return f"'{self.name}' (compute capability {self.compute_capability})"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "compute_capability": self.compute_capability}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GpuInfo:
        return cls(str(d["name"]), str(d["compute_capability"]))


def normalize_gpu_name(name: str) -> str:
    """Case, whitespace and an ``NVIDIA`` prefix do not distinguish GPUs."""
    n = " ".join(str(name).replace("\x00", "").split()).lower()
    return n.removeprefix("nvidia ")


@dataclass(frozen=True)
class EngineInfo:
    """What ``navit compile`` records about an engine (``extra["engine"]`` of ``<engine>.json``)."""

    tensorrt_version: str
    gpu: GpuInfo
    precision: str
    source_precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]
    tf32: bool
    profiles: tuple[PackProfile, ...]
    source_onnx: str
    source_onnx_sha256: str
    engine_sha256: str
    plugin_path: str | None = None
    plugin_sha256: str | None = None
    workspace_mib: int | None = None
    timing_cache: str | None = None
    build_seconds: float = 0.0
    built_at: str = ""
    format: int = ENGINE_SECTION_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "tensorrt_version": self.tensorrt_version,
            "gpu": self.gpu.to_dict(),
            "precision": self.precision,
            "source_precision": self.source_precision,
            "strongly_typed": self.strongly_typed,
            "builder_flags": list(self.builder_flags),
            "tf32": self.tf32,
            "profiles": [p.to_dict() for p in self.profiles],
            "source_onnx": {"path": self.source_onnx, "sha256": self.source_onnx_sha256},
            "engine_sha256": self.engine_sha256,
            "plugin": None if self.plugin_path is None else {"path": self.plugin_path, "sha256": self.plugin_sha256},
            "workspace_mib": self.workspace_mib,
            "timing_cache": self.timing_cache,
            "build_seconds": round(float(self.build_seconds), 3),
            "built_at": self.built_at,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineInfo:
        try:
            if d.get("format") != ENGINE_SECTION_FORMAT:
                raise ArtifactMismatchError(f"engine description format {d.get('format')} is not "
                                            f"{ENGINE_SECTION_FORMAT}; rebuild the engine with `navit compile`")
            plugin = d.get("plugin") or {}
            return cls(
                tensorrt_version=str(d["tensorrt_version"]), gpu=GpuInfo.from_dict(d["gpu"]),
                precision=str(d["precision"]), source_precision=str(d["source_precision"]),
                strongly_typed=bool(d["strongly_typed"]), builder_flags=tuple(d.get("builder_flags", ())),
                tf32=bool(d.get("tf32", False)),
                profiles=tuple(PackProfile.from_dict(p) for p in d["profiles"]),
                source_onnx=str(d["source_onnx"]["path"]), source_onnx_sha256=str(d["source_onnx"]["sha256"]),
                engine_sha256=str(d["engine_sha256"]), plugin_path=plugin.get("path"),
                plugin_sha256=plugin.get("sha256"), workspace_mib=d.get("workspace_mib"),
                timing_cache=d.get("timing_cache"), build_seconds=float(d.get("build_seconds", 0.0)),
                built_at=str(d.get("built_at", "")), extra=dict(d.get("extra") or {}))
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ArtifactMismatchError(f"not a navit-deploy engine description ({type(exc).__name__}: {exc}); "
                                        "rebuild the engine with `navit compile`") from exc

    @classmethod
    def from_artifact(cls, artifact: DeploymentArtifact, engine_path: str | os.PathLike[str]) -> EngineInfo:
        section = artifact.extra.get(ENGINE_KEY)
        if not isinstance(section, dict):
            raise ArtifactMismatchError(f"{engine_path}: its sidecar describes an ONNX export, not a TensorRT engine "
                                        "(no 'engine' section); build the engine with `navit compile`")
        return cls.from_dict(section)


def with_engine(artifact: DeploymentArtifact, info: EngineInfo) -> DeploymentArtifact:
    """The engine's artifact: the ONNX artifact with the engine's precision and the engine section."""
    extra = {**artifact.extra, ENGINE_KEY: info.to_dict()}
    return artifact.with_(precision=info.precision, extra=extra)


def rebuild_hint(engine_path: str | os.PathLike[str], info: EngineInfo | None) -> str:
    src = info.source_onnx if info is not None and info.source_onnx else "MODEL.onnx"
    return f"rebuild it on this machine: navit compile --onnx {src} --out {engine_path}"


def engine_problems(info: EngineInfo, *, trt_version: str | None = None, gpu: GpuInfo | None = None,
                    check_gpu_name: bool = True, expected_weights_sha256: str | None = None,
                    artifact_weights_sha256: str | None = None, expected_onnx_sha256: str | None = None,
                    engine_sha256: str | None = None) -> list[str]:
    """Every reason the engine may not be used here (empty when it may). Inputs that are ``None`` are not checked."""
    problems = []
    if engine_sha256 is not None and info.engine_sha256 and engine_sha256 != info.engine_sha256:
        problems.append(f"the engine file does not match its sidecar (sha256 {engine_sha256[:12]}…, the sidecar "
                        f"records {info.engine_sha256[:12]}…): the engine was replaced or rebuilt without navit compile")
    if trt_version is not None and major_minor(trt_version) != major_minor(info.tensorrt_version):
        problems.append(f"it was built with TensorRT {info.tensorrt_version}, this machine has TensorRT {trt_version} "
                        "(engines only load in the TensorRT version that built them)")
    if gpu is not None:
        if gpu.compute_capability != info.gpu.compute_capability:
            problems.append(f"it was built for GPU {info.gpu.describe()}, this device is {gpu.describe()} (engines are "
                            "specific to the GPU architecture)")
        elif check_gpu_name and normalize_gpu_name(gpu.name) != normalize_gpu_name(info.gpu.name):
            problems.append(f"it was built on GPU {info.gpu.describe()}, this device is {gpu.describe()} (same "
                            "architecture, but its kernels were tuned for the other GPU)")
    if expected_weights_sha256 and artifact_weights_sha256 != expected_weights_sha256:
        problems.append(f"it was built from weights {str(artifact_weights_sha256)[:12]}…, the caller expects "
                        f"{expected_weights_sha256[:12]}… (another model)")
    if expected_onnx_sha256 and info.source_onnx_sha256 != expected_onnx_sha256:
        problems.append(f"it was built from ONNX {info.source_onnx_sha256[:12]}…, the caller expects "
                        f"{expected_onnx_sha256[:12]}… (another export)")
    return problems


def check_engine(engine_path: str | os.PathLike[str], info: EngineInfo, **kwargs: Any) -> None:
    """Raise :class:`ArtifactMismatchError` listing every problem of :func:`engine_problems`, and the fix."""
    problems = engine_problems(info, **kwargs)
    if problems:
        raise ArtifactMismatchError(f"{Path(engine_path).name} cannot be used here: " + "; ".join(problems) +
                                    f". {rebuild_hint(engine_path, info)}")


def check_io_names(inputs: Sequence[str], outputs: Sequence[str], what: str,
                   artifact: DeploymentArtifact | None = None) -> None:
    """The network/engine must have the model's inputs and outputs (TensorRT may drop unused inputs).

    With ``artifact``, those it describes (a VLM tower: six inputs, a ``tokens`` output; a model without a
    classifier: no ``logits``); without, the pooled NaViT's. A pooled model always uses ``patches`` and
    ``cu_seqlens`` (its pooling is per image); a tower's dense lowering never reads ``cu_seqlens`` (its full
    attention masks by segment ids, its windows use ``window_cu_seqlens``), so only ``patches`` is required."""
    from navit_deploy.runtime.runner import INPUT_NAMES, OUTPUT_NAMES

    want_in = tuple(artifact.inputs) if artifact is not None else INPUT_NAMES
    want_out = tuple(artifact.outputs) if artifact is not None else OUTPUT_NAMES
    needed = ("patches",) if artifact is not None and artifact.output_kind == "tokens" else ("patches", "cu_seqlens")
    extra = [n for n in inputs if n not in want_in]
    if extra or sorted(outputs) != sorted(want_out) or any(n not in inputs for n in needed):
        kind = "" if artifact is None else f" ({artifact.output_kind} model, family {artifact.family})"
        raise ArtifactMismatchError(f"{what} is not a NaViT export{kind}: inputs {list(inputs)}, "
                                    f"outputs {list(outputs)} (expected inputs {list(want_in)}, outputs "
                                    f"{list(want_out)})")
