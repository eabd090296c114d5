"""INT8 (QDQ) of the tiny exports: Q/DQ exactly around the linear layers, FP32 elsewhere, custom nodes
untouched, outputs close to FP32."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from navit_deploy.calibration.graph import classify
from navit_deploy.calibration.int8 import DEFAULT_KEEP_FP32, ensure_node_names, plan_int8
from navit_deploy.calibration.quantize import quantize_model
from navit_deploy.data.sample_images import builtin_sample_images
from navit_deploy.errors import ArtifactMismatchError, ConfigError
from navit_deploy.parity import compare
from navit_deploy.runtime.artifact import read_artifact, sidecar_path
from navit_deploy.runtime.onnx_runner import OnnxRunner
from navit_deploy.runtime.open import pipeline_for
from tests.calibration.conftest import CALIB_IMAGES, confident_agreement, consumers, cosines, producers

LOWERINGS = ["dense", "trt-plugin", "ort-mha"]


def _dq_fed(model, node) -> list[bool]:
    prod = producers(model)
    return [i in prod and prod[i].op_type == "DequantizeLinear" for i in node.input if i]


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_qdq_around_linear_layers_only(quantized, exported, lowering):
    res = quantized(lowering, "int8")
    model = onnx.load(str(res.path))
    infos = {i.name: i for i in classify(onnx.load(str(exported(lowering))))}  # groups of the FP32 graph
    quantized_linear = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and all(_dq_fed(model, n))]
    assert len(quantized_linear) == res.details["quantized_nodes"] > 0
    for n in quantized_linear:  # activation and weight both through DequantizeLinear, output stays float
        assert infos[n.name].module.startswith(("blocks.", "patch_embed")), n.name
        assert not any(c.op_type == "QuantizeLinear" for c in consumers(model).get(n.output[0], []))
    cons = consumers(model)
    qnames = {n.name for n in quantized_linear}
    for q in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):  # every Q/DQ pair feeds a linear layer
        dqs = cons[q.output[0]]
        assert dqs and all(d.op_type == "DequantizeLinear" for d in dqs)
        assert all(c.name in qnames for d in dqs for c in cons[d.output[0]]), q.name
    for n in model.graph.node:
        if n.op_type in ("Softmax", "LayerNormalization") or n.domain not in ("", "ai.onnx"):
            assert not any(_dq_fed(model, n)), f"{n.op_type} {n.name} reads a dequantized tensor"
        groups = infos[n.name].groups if n.name in infos else frozenset()
        if n.op_type in ("MatMul", "Gemm", "Einsum") and groups & {"attention-scores", "pool", "head"}:
            assert not any(_dq_fed(model, n)), f"kept node {n.name} ({sorted(groups)}) was quantized"
    # weights are int8, per output channel
    inits = {i.name: i for i in model.graph.initializer}
    for n in quantized_linear:
        dq = producers(model)[n.input[1]]
        assert inits[dq.input[0]].data_type == onnx.TensorProto.INT8
        scale = onnx.numpy_helper.to_array(inits[dq.input[1]])
        assert scale.ndim == 1 and scale.size > 1


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_artifact_metadata_and_sidecar(quantized, lowering, exported):
    res = quantized(lowering, "int8")
    model = onnx.load(str(res.path))
    meta = {p.key: p.value for p in model.metadata_props}
    art = read_artifact(res.path, meta)
    assert art.precision == "int8" and art.lowering == lowering
    assert art.weights_sha256 == read_artifact(exported(lowering)).weights_sha256
    assert art.extra["quantization"]["quantized_nodes"] == res.details["quantized_nodes"]
    assert json.loads(sidecar_path(res.path).read_text())["precision"] == "int8"


def test_trt_plugin_custom_node_kept_and_runs_with_reference_ops(quantized, exported):
    res = quantized("trt-plugin", "int8")
    model = onnx.load(str(res.path))
    custom = [n for n in model.graph.node if n.op_type == "NavitPackedAttention"]
    src = onnx.load(str(exported("trt-plugin")))
    assert len(custom) == sum(n.op_type == "NavitPackedAttention" for n in src.graph.node) > 0
    assert all(n.domain == "navit" for n in custom)
    assert any(o.domain == "navit" for o in model.opset_import)
    assert not any(o.domain == "ai.onnx.contrib" for o in model.opset_import)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    for n in custom:
        assert [types.get(i) for i in n.input[:3]] == [onnx.TensorProto.FLOAT] * 3
    with pytest.raises(ArtifactMismatchError, match="reference_ops"):  # the plugin node has no CPU kernel
        OnnxRunner(res.path)


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_outputs_close_to_fp32_on_sample_images(quantized, exported, lowering):
    res = quantized(lowering, "int8")
    images = [img for _, img in builtin_sample_images()]
    ref_ops = lowering != "dense"
    with OnnxRunner(exported(lowering), reference_ops=ref_ops) as ref, \
            OnnxRunner(res.path, reference_ops=ref_ops) as cand:
        a = pipeline_for(ref, ref.artifact).run(images)
        b = pipeline_for(cand, cand.artifact).run(images)
    cos = cosines(a, b)
    assert cos.min() > 0.995, cos
    assert cos.min() >= compare(a, b, "int8").thresholds.min_cosine
    agreement, counted = confident_agreement(a, b)
    assert agreement == 1.0 and counted >= len(images) // 2
    dlogit = max(float(np.abs(x.logits - y.logits).max()) for x, y in zip(a, b))
    assert 0 < dlogit < 0.05  # it changed something, not much


def _plan(exported, lowering="dense", **kw):
    m = onnx.load(str(exported(lowering)))
    ensure_node_names(m)
    return m, plan_int8(m, **kw)


def test_default_plan_documented_groups(exported):
    m, plan = _plan(exported)
    infos = {i.name: i for i in classify(m)}
    kept_groups = {g for n in plan.kept for g in infos[n].groups}
    assert {"attention-scores", "pool", "head"} <= kept_groups
    assert all(infos[n].op_type in ("MatMul", "Gemm") for n in plan.quantize)
    assert set(DEFAULT_KEEP_FP32) >= {"attention-scores", "pool", "head"}


@pytest.mark.parametrize("keep,expect_quantized,expect_kept", [
    ([], {"pool", "head", "attention-scores"}, set()),
    (["attention-scores"], {"pool", "head"}, {"attention-scores"}),
    (["blocks.0.mlp", "pool", "head", "attention-scores"], set(), {"pool", "head"}),
])
def test_keep_fp32_overrides(exported, keep, expect_quantized, expect_kept):
    m, plan = _plan(exported, keep_fp32=keep)
    infos = {i.name: i for i in classify(m)}
    q_groups = {g for n in plan.quantize for g in infos[n].groups}
    assert expect_quantized <= q_groups
    assert not (expect_kept & q_groups)
    if "blocks.0.mlp" in keep:
        assert not any(infos[n].module.startswith("blocks.0.mlp") for n in plan.quantize)
        assert any(infos[n].module.startswith("blocks.1.mlp") for n in plan.quantize)


def test_keep_fp32_by_node_name_and_op_type(exported):
    _m, base = _plan(exported)
    victim = base.quantize[0]
    _, plan = _plan(exported, keep_fp32=list(DEFAULT_KEEP_FP32) + [victim])
    assert victim not in plan.quantize and plan.kept[victim] == "named"
    with pytest.raises(ConfigError, match="nothing to quantize"):
        _plan(exported, keep_fp32=["Gemm", "MatMul"])
    with pytest.raises(ConfigError, match="matches no group"):
        _plan(exported, keep_fp32=["atention-scores"])


def test_op_types_widened(exported):
    _, plan = _plan(exported, op_types=["MatMul", "Gemm", "Softmax"])
    m = onnx.load(str(exported("dense")))
    softmax = {n.name for n in m.graph.node if n.op_type == "Softmax"}
    assert not softmax & set(plan.quantize)  # still protected by the default keep list ("softmax")
    _, plan = _plan(exported, op_types=["MatMul", "Gemm", "Softmax"], keep_fp32=["pool"])
    assert softmax & set(plan.quantize)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(exported, calib_dir, tmp_path, method):
    res = quantize_model(exported("dense"), tmp_path / "m.onnx", "int8", calib=calib_dir, max_images=CALIB_IMAGES,
                         method=method, eval_size=0, cache_dir=tmp_path / "cache", progress=False)
    assert res.details["method"] == method and not res.details["cache_hit"]
    sample = [img for _, img in builtin_sample_images()[:6]]
    with OnnxRunner(exported("dense")) as ref, OnnxRunner(res.path) as cand:
        cos = cosines(pipeline_for(ref, ref.artifact).run(sample), pipeline_for(cand, cand.artifact).run(sample))
    assert cos.min() > 0.99


def test_uint8_activations(exported, calib_dir, tmp_path):
    res = quantize_model(exported("dense"), tmp_path / "u8.onnx", "int8", calib=calib_dir, max_images=CALIB_IMAGES,
                         activations="uint8", eval_size=0, cache_dir=tmp_path / "cache", progress=False)
    m = onnx.load(str(res.path))
    inits = {i.name: i for i in m.graph.initializer}
    q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert q and all(inits[n.input[2]].data_type == onnx.TensorProto.UINT8 for n in q)
    with pytest.raises(ConfigError, match="activations"):
        quantize_model(exported("dense"), tmp_path / "x.onnx", "int8", calib=calib_dir, activations="int4",
                       eval_size=0, progress=False)
