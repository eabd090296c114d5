"""``quantize_model``: an FP32 NaViT export in, an INT8 or FP16 export (+ sidecar + accuracy report) out.

Outputs, all written to temporary files in the output folder and renamed into place only once the
whole job succeeded (a failure leaves nothing behind):

* ``OUT`` (e.g. ``navit.int8.onnx``), and ``OUT.data`` when its weights exceed the external-data threshold
  (as export does, see :mod:`navit_deploy.runtime.external_data`): the model, its artifact metadata with ``precision`` set and
  ``extra["quantization"]`` describing how it was made;
* ``OUT.json``: the artifact sidecar;
* ``OUT`` with ``.accuracy.json`` instead of ``.onnx``: the :class:`AccuracyReport` against the FP32
  model (skipped with ``eval_size=0``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from navit_deploy.calibration.cache import CalibrationCache
from navit_deploy.calibration.errors import AlreadyQuantizedError
from navit_deploy.calibration.graph import quantization_state
from navit_deploy.calibration.reader import DEFAULT_MAX_IMAGES, CalibrationReader
from navit_deploy.calibration.report import DEFAULT_EVAL_SIZE, AccuracyReport, accuracy_report
from navit_deploy.errors import ArtifactMismatchError, ConfigError
from navit_deploy.frontend import FrontendConfig
from navit_deploy.runtime.artifact import METADATA_KEY, DeploymentArtifact, read_artifact, sidecar_path
from navit_deploy.runtime.external_data import ARTIFACT_KEY, EXTERNAL_DATA_THRESHOLD, data_file_name, data_files_of, \
    files_sha256, needs_external_data, save_onnx

PRECISIONS = ("int8", "fp16")
HEADROOM_IMAGES = 32


def report_path_for(out: str | Path) -> Path:
    """Where the accuracy report of ``out`` goes: ``model.int8.onnx`` -> ``model.int8.accuracy.json``."""
    out = Path(out)
    stem = out.name.removesuffix(".onnx")
    return out.with_name(stem + ".accuracy.json")


@dataclass
class QuantizeResult:
    path: Path
    precision: str
    artifact: DeploymentArtifact
    kept_fp32: dict[str, str]
    details: dict[str, Any]
    seconds: float
    report: AccuracyReport | None = None
    report_path: Path | None = None
    sidecar: Path | None = None
    files: list[Path] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"model": str(self.path), "precision": self.precision, "sidecar": str(self.sidecar),
                "report": str(self.report_path) if self.report_path else None, "seconds": round(self.seconds, 3),
                "kept_fp32": self.kept_fp32, **self.details,
                "accuracy": self.report.to_json() if self.report else None}


def _load_source(path: Path) -> tuple[onnx.ModelProto, DeploymentArtifact]:
    if not path.is_file():
        raise ArtifactMismatchError(f"ONNX model not found: {path}")
    try:
        data_files_of(path)  # a missing or truncated external data file, named
    except ArtifactMismatchError:
        raise
    except Exception as exc:
        raise ArtifactMismatchError(f"{path}: not a readable ONNX model ({exc})") from exc
    try:
        model = onnx.load_model(str(path))  # with its external data, read from beside it
    except Exception as exc:
        raise ArtifactMismatchError(f"{path}: not a readable ONNX model ({exc})") from exc
    artifact = read_artifact(path, {p.key: p.value for p in model.metadata_props})
    if artifact.precision != "fp32":
        raise AlreadyQuantizedError(f"{path} is already a {artifact.precision} model; quantize the FP32 export "
                                    "(navit export) instead")
    why = quantization_state(model)
    if why:
        raise AlreadyQuantizedError(f"{path} is not an FP32 model: {why}. Quantize the FP32 export (navit export) instead")
    return model, artifact


def _check_budgets(artifact: DeploymentArtifact, frontend: FrontendConfig | None, pack_len: int | None,
                   max_images_per_pack: int | None) -> None:
    """Requested calibration front end / packing must be the model's (it is what deployment feeds)."""
    CalibrationReader([], frontend or artifact.frontend, pack_len or artifact.pack_len,
                      max_images_per_pack or artifact.max_images).check_matches(artifact)


def _set_metadata(model: onnx.ModelProto, artifact: DeploymentArtifact) -> None:
    """Replace the artifact metadata (as ``navit_deploy.export.onnx_export.set_metadata``, without importing torch)."""
    keep = [p for p in model.metadata_props if p.key not in (METADATA_KEY, "onnx.infer")]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    model.metadata_props.add(key=METADATA_KEY, value=artifact.to_json())


def _headroom(model: onnx.ModelProto, artifact: DeploymentArtifact, calib, max_images: int,
              kept: dict[str, str], progress: bool, threads: int | None) -> dict[str, Any]:
    """FP16 margins measured on calibration images, and warnings for ops converted despite a thin margin."""
    from navit_deploy.calibration.fp16 import fp16_headroom

    reader = CalibrationReader.for_artifact(artifact, calib, max_images, progress=progress, min_images=1)
    room = fp16_headroom(model, reader, artifact.lowering, progress, threads)
    kept_ops = {n.op_type for n in model.graph.node if n.name in kept}
    warnings = []
    for op, r in room.items():
        if op in kept_ops:
            continue
        if r["overflow"] or (op == "LayerNormalization" and r["power_overflow"]):
            warnings.append(f"{op} inputs reach |x| = {r['max_abs']:g} ({r['tensor']}): FP16 overflows there; "
                            f"keep {op} in FP32 (--keep-fp32 {op})")
    return {"fp16_headroom": room, "fp16_headroom_images": reader.usable, "warnings": warnings}


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def quantize_model(onnx_path: str | Path, out: str | Path, precision: str = "int8", *,
                   calib: str | Path | None = None, max_images: int = DEFAULT_MAX_IMAGES, method: str = "minmax",
                   keep_fp32: Iterable[str] | None = None, op_types: Iterable[str] | None = None,
                   activations: str = "int8", per_channel: bool = True, eval_size: int = DEFAULT_EVAL_SIZE,
                   cache_dir: str | Path | None = None, use_cache: bool = True, reader: CalibrationReader | None = None,
                   frontend: FrontendConfig | None = None, pack_len: int | None = None,
                   max_images_per_pack: int | None = None, progress: bool = True,
                   threads: int | None = None, headroom: bool = True,
                   external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> QuantizeResult:
    """Quantize the FP32 export ``onnx_path`` to ``precision`` ("int8" or "fp16") and write ``out``.

    INT8: ``calib`` (image folder; default builtin samples + procedural train images) capped at
    ``max_images``, calibration ``method`` (minmax, entropy, percentile), ``keep_fp32`` (groups, op types,
    modules or node names; default :data:`navit_deploy.calibration.int8.DEFAULT_KEEP_FP32`),
    ``op_types`` (default MatMul, Gemm), ``activations`` ("int8": symmetric, TensorRT-compatible;
    "uint8": asymmetric). FP16: ``keep_fp32`` (default :data:`navit_deploy.calibration.fp16.DEFAULT_KEEP_FP32`).
    ``frontend``/``pack_len``/``max_images_per_pack``, if given, must equal the model's artifact, and so
    must a given ``reader``'s. ``eval_size`` held-out images for the accuracy report (0: none).
    ``headroom`` (FP16): measure FP32 activation magnitudes on calibration images against FP16's range.
    The source may keep its weights as external data; ``out`` does when its weights exceed
    ``external_data_threshold`` bytes (``OUT.data`` beside it, named in ``extra["external_data"]``).
    """
    start = time.perf_counter()
    src, out = Path(onnx_path), Path(out)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if out.suffix != ".onnx":
        raise ConfigError(f"--out must be an .onnx path, got {out}")
    if out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} would overwrite the FP32 model it is made from; choose another path")
    if eval_size < 0:
        raise ConfigError(f"eval_size must be >= 0, got {eval_size}")
    model, artifact = _load_source(src)
    _check_budgets(artifact, frontend, pack_len, max_images_per_pack)
    if reader is not None:
        reader.check_matches(artifact)
    details: dict[str, Any] = {"source": str(src), "source_sha256": files_sha256(src)}
    if precision == "int8":
        from navit_deploy.calibration.int8 import quantize_int8

        if reader is None:
            reader = CalibrationReader.for_artifact(artifact, calib, max_images, progress=progress)
        res = quantize_int8(model, reader, model_sha256=details["source_sha256"], lowering=artifact.lowering,
                            method=method, keep_fp32=keep_fp32, op_types=op_types, activations=activations,
                            per_channel=per_channel, cache=CalibrationCache(cache_dir) if use_cache else None,
                            progress=progress, threads=threads)
        qmodel, kept = res.model, res.plan.kept
        details.update(res.summary())
        details.update({"method": method, "activations": activations, "per_channel": per_channel,
                        "op_types": list(res.plan.op_types), "calibration_data": reader.description})
    else:
        from navit_deploy.calibration.fp16 import DEFAULT_KEEP_FP32, convert_fp16

        qmodel, kept = convert_fp16(model, keep_fp32)
        details.update({"keep_fp32_rules": list(keep_fp32 if keep_fp32 is not None else DEFAULT_KEEP_FP32)})
        if headroom:
            details.update(_headroom(model, artifact, calib, min(max_images, HEADROOM_IMAGES), kept, progress, threads))
    del model
    meta = {k: v for k, v in details.items() if k not in ("failed_images", "cache_path", "fp16_headroom")}
    meta["kept_fp32"] = sorted(kept)
    extra = {k: v for k, v in artifact.extra.items() if k != ARTIFACT_KEY}  # the source's data file is not ours
    external = needs_external_data(qmodel, external_data_threshold)
    if external:
        extra[ARTIFACT_KEY] = data_file_name(out)
    new_artifact = artifact.with_(precision=precision, extra={**extra, "quantization": meta})
    _set_metadata(qmodel, new_artifact)
    out.parent.mkdir(parents=True, exist_ok=True)
    side, rep = sidecar_path(out), report_path_for(out)
    data = out.with_name(data_file_name(out))
    # With external data the model refers to its data file by name: both are written under their final names
    # in a private folder beside ``out`` and moved into place.
    tmp_dir = out.with_name(f".{out.stem}.tmp-{os.getpid()}") if external else None
    tmp_model = tmp_dir / out.name if tmp_dir else out.with_name(f".{out.stem}.tmp-{os.getpid()}.onnx")
    tmp_data = tmp_dir / data.name if tmp_dir else None
    tmps = [tmp_model, _tmp(side), _tmp(rep)] + ([tmp_data] if tmp_data else [])
    try:
        if tmp_dir:
            tmp_dir.mkdir(exist_ok=True)
        save_onnx(qmodel, tmp_model, external_data_threshold)
        del qmodel
        _tmp(side).write_text(new_artifact.to_json() + "\n")
        report = None
        if eval_size:
            report = accuracy_report(src, tmp_model, eval_size=eval_size, progress=progress, threads=threads)
            report.quant_model = str(out)
            _tmp(rep).write_text(json.dumps({"model": str(out), "source": str(src), "precision": precision,
                                             "kept_fp32": kept, **{k: v for k, v in details.items()},
                                             "accuracy": report.to_json()}, indent=1, default=str) + "\n")
        os.replace(_tmp(side), side)
        if report is not None:
            os.replace(_tmp(rep), rep)
        if tmp_data:
            os.replace(tmp_data, data)
        elif data.exists():  # a stale data file of an earlier, larger output
            data.unlink()
        os.replace(tmp_model, out)  # last: the model appears only with its sidecar (and data) next to it
    finally:
        for t in tmps:
            if t.exists():
                t.unlink()
        if tmp_dir and tmp_dir.exists():
            tmp_dir.rmdir()
    files = [out, side] + ([data] if external else []) + ([rep] if report is not None else [])
    return QuantizeResult(out, precision, new_artifact, kept, details, time.perf_counter() - start, report,
                          rep if report is not None else None, side, files)
