"""FP16 of the tiny exports: FP32 I/O, strongly typed (explicit casts), kept ops in FP32, outputs close."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from navit_deploy.calibration.fp16 import DEFAULT_KEEP_FP32, convert_fp16, reference_validation_copy
from navit_deploy.data.sample_images import builtin_sample_images
from navit_deploy.parity import compare
from navit_deploy.runtime.artifact import read_artifact
from navit_deploy.runtime.onnx_runner import OnnxRunner
from navit_deploy.runtime.open import pipeline_for
from tests.calibration.conftest import confident_agreement, cosines

F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
LOWERINGS = ["dense", "trt-plugin", "ort-mha"]


def _types(model) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type
            for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_io_stays_fp32_and_weights_are_fp16(quantized, exported, lowering):
    res = quantized(lowering, "fp16")
    m, src = onnx.load(str(res.path)), onnx.load(str(exported(lowering)))
    sig = lambda g: [(v.name, v.type.tensor_type.elem_type) for v in g]
    assert sig(m.graph.input) == sig(src.graph.input)  # patches f32, coords/segments i64, cu_seqlens i32
    assert sig(m.graph.output) == sig(src.graph.output)
    inits = {i.name: i for i in m.graph.initializer}
    gemm_weights = [n.input[1] for n in m.graph.node if n.op_type == "Gemm"]
    assert gemm_weights and all(inits[w].data_type == F16 for w in gemm_weights)
    art = read_artifact(res.path, {p.key: p.value for p in m.metadata_props})
    assert art.precision == "fp16" and art.lowering == lowering


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_blocked_ops_compute_in_fp32_through_casts(quantized, lowering):
    m = onnx.load(str(quantized(lowering, "fp16").path))
    types = _types(m)
    prod = {o: n for n in m.graph.node for o in n.output}
    blocked = [n for n in m.graph.node if n.op_type in DEFAULT_KEEP_FP32]
    assert blocked
    for n in blocked:
        assert types[n.input[0]] == F32 and types[n.output[0]] in (F32, None), n.name
        assert prod[n.input[0]].op_type == "Cast", n.name  # an explicit boundary, not an implicit one
    converted = [n for n in m.graph.node if n.op_type in ("Gemm", "Tanh", "Pow")]
    assert converted and all(types.get(n.output[0]) == F16 for n in converted)


def test_strongly_typed(quantized):
    """Every tensor has one type that checks: strict ONNX shape/type inference passes (dense)."""
    m = onnx.load(str(quantized("dense", "fp16").path))
    onnx.checker.check_model(m)
    onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)


def test_custom_node_runs_fp16_and_validates_with_casts(quantized):
    m = onnx.load(str(quantized("trt-plugin", "fp16").path))
    types = _types(m)
    custom = [n for n in m.graph.node if n.op_type == "NavitPackedAttention"]
    assert custom and all(n.domain == "navit" for n in custom)
    assert all(types[i] == F16 for n in custom for i in n.input[:3])  # the plugin's FP16 path
    v = reference_validation_copy(m)
    prod = {o: n for n in v.graph.node for o in n.output}
    for n in (x for x in v.graph.node if x.op_type == "NavitPackedAttention"):
        assert all(prod[i].op_type == "Cast" for i in n.input[:3])


def test_keep_override(exported):
    src = onnx.load(str(exported("dense")))
    m, kept = convert_fp16(src, ["Softmax", "custom"])
    assert {n.name for n in m.graph.node if n.op_type == "Softmax"} <= set(kept)
    types = _types(m)
    assert all(types[n.input[0]] == F16 for n in m.graph.node if n.op_type == "LayerNormalization")
    assert all(types[n.input[0]] == F32 for n in m.graph.node if n.op_type == "Softmax")
    m, kept = convert_fp16(onnx.load(str(exported("trt-plugin"))), ["custom"])
    assert any(v == "group custom" for v in kept.values())
    assert all(_types(m)[i] == F32 for n in m.graph.node if n.op_type == "NavitPackedAttention" for i in n.input[:3])


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_outputs_close_to_fp32(quantized, exported, lowering):
    res = quantized(lowering, "fp16")
    images = [img for _, img in builtin_sample_images()]
    ref_ops = lowering != "dense"
    path = res.path
    if ref_ops:
        path = res.path.with_name("validate." + res.path.name)
        onnx.save(reference_validation_copy(onnx.load(str(res.path))), str(path))
    with OnnxRunner(exported(lowering), reference_ops=ref_ops) as ref, OnnxRunner(path, reference_ops=ref_ops) as cand:
        a = pipeline_for(ref, ref.artifact).run(images)
        b = pipeline_for(cand, cand.artifact).run(images)
    assert cosines(a, b).min() > 0.9995
    th = compare(a, b, "fp16").thresholds
    assert max(float(np.abs(x.logits - y.logits).max()) for x, y in zip(a, b)) < th.max_abs_logit
    assert 0 < max(float(np.abs(x.embedding - y.embedding).max()) for x, y in zip(a, b)) < th.max_abs_embedding
    agreement, counted = confident_agreement(a, b)
    assert agreement == 1.0 and counted >= len(images) // 2
