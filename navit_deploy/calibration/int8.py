"""INT8 post-training quantization of an exported NaViT with ONNX Runtime (QDQ, static, calibrated).

What is quantized (defaults):

* **Linear layers only**: ``MatMul``/``Gemm`` nodes with a constant weight. Weights are symmetric
  INT8 per output channel; the activation feeding each one gets a calibrated per-tensor scale. Their
  outputs stay float (``DequantizeLinear -> Gemm``, no ``QuantizeLinear`` after it): ONNX Runtime fuses
  that into ``QGemm``/``MatMulIntegerToFloat`` and TensorRT into an INT8 GEMM with float output, which
  is faster and more accurate than re-quantizing every linear output.
* Kept in FP32 (:data:`DEFAULT_KEEP_FP32`, override with ``keep_fp32`` / ``--keep-fp32``):
  ``attention-scores`` (``Q @ K^T`` and ``P @ V`` of the dense lowering: both operands are activations
  and the softmax probabilities are poorly served by one per-tensor INT8 scale), ``pool`` (the
  attention-pooling head: it reduces every token of an image to one vector, so its error is not
  averaged out), ``head`` (classifier), ``norm`` and ``softmax`` (never in the default op types
  anyway; listed so widening ``op_types`` still protects them), and ``custom`` nodes (the
  ``NavitPackedAttention`` plugin node of ``trt-plugin`` is never quantized: it stays FP32 and keeps
  its ``navit`` domain).

Activations are INT8 symmetric by default (zero point 0: what TensorRT's explicit quantization needs;
on ONNX Runtime CPU with VNNI as fast as UINT8, ``activations="uint8"``). Measured on the tiny test
model (dense, 128 calibration images, 200 held-out images): quantizing ``pool`` and ``head`` too
raises the embedding error about 10x (min cosine 0.99986 -> 0.9988), while quantizing the attention
scores changes almost nothing in accuracy or speed; the most sensitive layer that *is* quantized is
``patch-embed`` (adding it to ``keep_fp32`` brings min cosine to 0.999998 for ~10% of the speed-up).

Calibration runs the FP32 model on :class:`~navit_deploy.calibration.reader.CalibrationReader` feeds
and records only the tensors the quantizer needs (the activation inputs of the nodes to quantize),
a few packs at a time so memory stays bounded. Graphs with custom nodes run with the numpy reference
kernels (the nodes are re-homed to ``ai.onnx.contrib`` in a temporary copy); the quantized output is
produced from the original graph, so the custom node's domain is unchanged. Ranges are cached
(:mod:`navit_deploy.calibration.cache`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from navit_deploy.calibration.cache import CalibrationCache, cache_key
from navit_deploy.calibration.graph import QUANTIZED_OPS, classify, constant_names, match_keep
from navit_deploy.runtime.reference_ops import REFERENCE_DOMAIN, rehome_custom_nodes
from navit_deploy.calibration.reader import CalibrationReader
from navit_deploy.errors import ConfigError
from navit_deploy.runtime.external_data import needs_external_data, save_onnx

METHODS = ("minmax", "entropy", "percentile")
DEFAULT_OP_TYPES = ("MatMul", "Gemm")
DEFAULT_KEEP_FP32 = ("attention-scores", "pool", "head", "norm", "softmax", "custom")
ACTIVATION_TYPES = ("int8", "uint8")
OUTPUT_FLOAT_OPS = ("MatMul", "Gemm")  # outputs not re-quantized
CHUNK_PACKS = 4  # packs per calibration step (bounds the memory of histogram methods)
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)

# Incremented on every calibration inference pass (tests check cache reuse with it).
CALIBRATION_RUNS = {"count": 0}


@dataclass(frozen=True)
class Int8Plan:
    """Which nodes get Q/DQ, which are kept in FP32 (and why), and which activations need ranges."""

    op_types: tuple[str, ...]
    quantize: tuple[str, ...]
    kept: dict[str, str] = field(default_factory=dict)
    tensors: tuple[str, ...] = ()


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give unnamed nodes a unique name (the quantizer selects nodes by name). In place."""
    used = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    types = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def plan_int8(model: onnx.ModelProto, keep_fp32: Iterable[str] | None = None,
              op_types: Iterable[str] | None = None) -> Int8Plan:
    """The quantization plan for ``model`` (nodes must be named; see :func:`ensure_node_names`)."""
    op_types = tuple(op_types) if op_types is not None else DEFAULT_OP_TYPES
    keep = tuple(keep_fp32) if keep_fp32 is not None else DEFAULT_KEEP_FP32
    if not op_types:
        raise ConfigError("op_types must name at least one operator type to quantize (default: MatMul Gemm)")
    infos = classify(model)
    kept_by_rule = match_keep(infos, keep, known_op_types=set(op_types) | {"Softmax", "LayerNormalization"})
    consts = constant_names(model)
    types = _tensor_types(model)
    quantize, tensors, kept = [], [], {}
    for info, node in zip(infos, model.graph.node):
        if node.op_type not in op_types:
            continue
        if "custom" in info.groups:
            kept[node.name] = "custom node (never quantized)"
            continue
        if node.name in kept_by_rule:
            kept[node.name] = kept_by_rule[node.name]
            continue
        quantize.append(node.name)
        outs = node.output if node.op_type not in OUTPUT_FLOAT_OPS else []
        for t in list(node.input) + list(outs):
            if t and t not in consts and types.get(t) in _FLOAT_TYPES and t not in tensors:
                tensors.append(t)
    if not quantize:
        raise ConfigError(f"nothing to quantize: no {'/'.join(op_types)} node is left once {list(keep)} are kept in "
                          "FP32. Keep fewer groups (--keep-fp32) or widen the op types")
    return Int8Plan(op_types, tuple(quantize), kept, tuple(tensors))


def _restricted(cls: type, tensors: Sequence[str]) -> type:
    """A calibrator class that records only ``tensors`` (ONNX Runtime's records every input/output)."""
    wanted = set(tensors)

    def select_tensors_to_calibrate(self, model):
        value_infos = {vi.name: vi for vi in model.graph.value_info}
        value_infos.update({o.name: o for o in model.graph.output})
        value_infos.update({i.name: i for i in model.graph.input})
        missing = wanted - set(value_infos)
        if missing:
            raise ConfigError(f"cannot calibrate tensors without type information: {sorted(missing)[:5]}")
        return set(wanted), value_infos

    return type(f"Navit{cls.__name__}", (cls,), {"select_tensors_to_calibrate": select_tensors_to_calibrate})


def _make_calibrator(model_path: str, augmented: str, method: str, tensors: Sequence[str], external: bool = False):
    """``external``: save the augmented model with external data (a model over 2 GB)."""
    from onnxruntime.quantization.calibrate import EntropyCalibrater, MinMaxCalibrater, PercentileCalibrater

    # The defaults of onnxruntime.quantization.calibrate.create_calibrator.
    if method == "minmax":
        return _restricted(MinMaxCalibrater, tensors)(model_path, None, augmented, symmetric=False,
                                                      use_external_data_format=external)
    if method == "entropy":
        return _restricted(EntropyCalibrater, tensors)(model_path, None, augmented, use_external_data_format=external,
                                                       symmetric=False, num_bins=128, num_quantized_bins=128)
    if method == "percentile":
        return _restricted(PercentileCalibrater, tensors)(model_path, None, augmented, use_external_data_format=external,
                                                          symmetric=True, num_bins=2048, percentile=99.999)
    raise ConfigError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")


def _session(path: str, custom_ops: bool, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if threads:
        opts.intra_op_num_threads = threads
    if custom_ops:
        from onnxruntime_extensions import get_library_path

        from navit_deploy.runtime.reference_ops import register_ort_reference_ops

        register_ort_reference_ops()  # before the library, or ORT crashes on the unknown op
        opts.register_custom_ops_library(get_library_path())
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def collect_ranges(model: onnx.ModelProto, reader: CalibrationReader, tensors: Sequence[str], method: str = "minmax",
                   custom_domain: str | None = None, progress: bool = True, threads: int | None = None):
    """Run calibration inference and return ONNX Runtime ``TensorsData`` for ``tensors``.

    ``custom_domain``: the domain of custom nodes to run with the numpy reference kernels.
    """
    from tqdm import tqdm



    CALIBRATION_RUNS["count"] += 1
    reader.prepare()
    work = copy.deepcopy(model)
    moved = rehome_custom_nodes(work, custom_domain, REFERENCE_DOMAIN) if custom_domain else 0
    with tempfile.TemporaryDirectory(prefix="navit-calib-") as td:
        src, aug = str(Path(td) / "model.onnx"), str(Path(td) / "augmented.onnx")
        external = save_onnx(work, src) is not None  # over 2 GB: with its weights in model.onnx.data
        del work
        cal = _make_calibrator(src, aug, method, tensors, external)
        cal.augment_graph()
        cal.infer_session = _session(aug, bool(moved), threads)
        bar = tqdm(total=len(reader), disable=not progress, desc=f"calibrating ({method})", unit="pack")
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print per call
            for chunk in reader.chunks(CHUNK_PACKS):
                cal.collect_data(chunk)
                bar.update(len(chunk))
            ranges = cal.compute_data()
        bar.close()
        del cal
    return ranges


@contextlib.contextmanager
def _quiet_ort_logging() -> Iterator[None]:
    """ONNX Runtime's quantizer logs pre-processing advice through the root logger on every call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_with_ranges(model: onnx.ModelProto, ranges, plan: Int8Plan, activations: str = "int8",
                         per_channel: bool = True) -> onnx.ModelProto:
    """QDQ-quantize ``model`` with precomputed ``ranges`` (ONNX Runtime ``quantize_static``)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    if activations not in ACTIVATION_TYPES:
        raise ConfigError(f"activations must be one of {ACTIVATION_TYPES}, got {activations!r}")
    act = QuantType.QInt8 if activations == "int8" else QuantType.QUInt8
    names = {n.name for n in model.graph.node}
    with tempfile.TemporaryDirectory(prefix="navit-quant-") as td, _quiet_ort_logging():
        cache = Path(td) / "ranges.json"
        save_tensors_data(ranges, cache)
        out = Path(td) / "int8.onnx"
        quantize_static(model, str(out), calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                        use_external_data_format=needs_external_data(model),
                        op_types_to_quantize=list(plan.op_types), per_channel=per_channel, reduce_range=False,
                        activation_type=act, weight_type=QuantType.QInt8, nodes_to_quantize=list(plan.quantize),
                        nodes_to_exclude=[n for n in plan.kept if n in names],
                        calibrate_method=ranges.calibration_method, calibration_cache_path=str(cache),
                        extra_options={
                            "OpTypesToExcludeOutputQuantization": list(OUTPUT_FLOAT_OPS),
                            # int8 activations: symmetric (zero point 0), what TensorRT requires
                            "ActivationSymmetric": activations == "int8",
                            "WeightSymmetric": True,
                        })
        return onnx.load_model(str(out))  # with its external data, if any, into memory


@dataclass
class Int8Result:
    model: onnx.ModelProto
    plan: Int8Plan
    cache_hit: bool
    cache_path: Path | None
    calibration_s: float
    quantize_s: float
    images: int
    usable: int
    failures: list[tuple[str, str]]
    packs: int

    def summary(self) -> dict[str, Any]:
        return {"quantized_nodes": len(self.plan.quantize), "kept_fp32": dict(self.plan.kept),
                "calibrated_tensors": len(self.plan.tensors), "cache_hit": self.cache_hit,
                "cache_path": str(self.cache_path) if self.cache_path else None,
                "calibration_s": round(self.calibration_s, 3), "quantize_s": round(self.quantize_s, 3),
                "calibration_images": self.images, "usable_images": self.usable, "packs": self.packs,
                "failed_images": [{"image": n, "error": e} for n, e in self.failures]}


def quantize_int8(model: onnx.ModelProto, reader: CalibrationReader, *, model_sha256: str, lowering: str,
                  method: str = "minmax", keep_fp32: Iterable[str] | None = None,
                  op_types: Iterable[str] | None = None, activations: str = "int8", per_channel: bool = True,
                  cache: CalibrationCache | None = None, progress: bool = True,
                  threads: int | None = None) -> Int8Result:
    """Calibrate (or reuse cached ranges) and quantize; returns the quantized model (not yet saved)."""
    from navit_deploy.runtime.onnx_runner import CUSTOM_DOMAINS

    if method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    if activations not in ACTIVATION_TYPES:
        raise ConfigError(f"activations must be one of {ACTIVATION_TYPES}, got {activations!r}")
    model = copy.deepcopy(model)
    ensure_node_names(model)
    plan = plan_int8(model, keep_fp32, op_types)
    key_parts = {"model_sha256": model_sha256, "reader": reader.fingerprint(), "method": method,
                 "tensors": sorted(plan.tensors)}
    key = cache_key(**key_parts)
    start = time.perf_counter()
    ranges = cache.load(key) if cache is not None else None
    hit = ranges is not None
    if hit:  # what the cached calibration saw
        stats = cache.description(key).get("stats", {})
        images, usable, packs = stats.get("images", 0), stats.get("usable", 0), stats.get("packs", 0)
        failures = [tuple(f) for f in stats.get("failures", [])]
    else:
        custom = CUSTOM_DOMAINS.get(lowering) if lowering != "dense" else None
        ranges = collect_ranges(model, reader, plan.tensors, method, custom, progress, threads)
        images, usable, packs, failures = len(reader.images), reader.usable, len(reader.packs), list(reader.failures)
    cache_path = None
    if cache is not None:
        cache_path = cache.path(key)
        if not hit:
            stats = {"images": images, "usable": usable, "packs": packs, "failures": failures}
            cache.save(key, ranges, {**key_parts, "stats": stats})
    calib_s = time.perf_counter() - start
    missing = [t for t in plan.tensors if t not in ranges]
    if missing:  # a stale or foreign cache entry
        raise ConfigError(f"calibration ranges lack {len(missing)} tensors (e.g. {missing[0]!r}); re-run with --no-cache")
    start = time.perf_counter()
    quantized = quantize_with_ranges(model, ranges, plan, activations, per_channel)
    leftover = [n.name for n in quantized.graph.node if n.name in plan.kept and n.op_type in QUANTIZED_OPS]
    assert not leftover, leftover
    return Int8Result(quantized, plan, hit, cache_path, calib_s, time.perf_counter() - start, images, usable,
                      failures, packs)
