"""Lowering, precision and engine-compatibility rules (pure functions, runs anywhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from navit_deploy.compile.compat import (EngineInfo, GpuInfo, PrecisionPlan, check_engine, check_head_dim,
                                         check_io_names, check_lowering, engine_problems, major_minor,
                                         normalize_gpu_name, parse_version, plan_precision, with_engine)
from navit_deploy.compile.profiles import PackProfile
from navit_deploy.errors import ArtifactMismatchError, ConfigError, PluginError
from navit_deploy.runtime.artifact import DeploymentArtifact, read_artifact, write_sidecar
from tests.compile.conftest import FAKE_GPU, make_artifact, make_engine_info


def test_parse_version():
    assert parse_version("10.3.0.30") == (10, 3, 0, 30)
    assert parse_version("11.1.0.5rc1") == (11, 1, 0, 5)
    assert major_minor("10.13.3.9") == (10, 13)
    with pytest.raises(ConfigError):
        parse_version("ten")


def test_lowerings():
    assert check_lowering("dense") is False
    assert check_lowering("trt-plugin") is True
    assert check_lowering("trt-plugin", "10.3.0.30") is True
    assert check_lowering("trt-native") is False  # version not known yet: decided once TensorRT is imported
    assert check_lowering("trt-native", "11.1.0.5") is False
    with pytest.raises(ConfigError, match=r"needs TensorRT >= 11\.1; this machine has TensorRT 10\.16"):
        check_lowering("trt-native", "10.16.0.1")
    with pytest.raises(ConfigError, match="ort-packed.*TensorRT cannot build it.*--attention trt-plugin"):
        check_lowering("ort-packed")
    with pytest.raises(ConfigError, match="ort-mha.*MultiHeadAttention.*TensorRT cannot build it.*--attention dense"):
        check_lowering("ort-mha")
    with pytest.raises(ConfigError, match="unknown attention lowering"):
        check_lowering("flash")


def test_head_dims():
    check_head_dim("trt-plugin", 64)
    check_head_dim("dense", 80)
    with pytest.raises(PluginError, match=r"head dims \(32, 64, 128\).*head_dim=80.*--attention dense"):
        check_head_dim("trt-plugin", 80)


T10, T11 = "10.3.0.30", "11.1.0.5"


@pytest.mark.parametrize("version, requested, source, qdq, typed, expected", [
    (T10, None, "fp32", False, None, PrecisionPlan("fp32", False)),
    (T10, "fp32", "fp32", False, None, PrecisionPlan("fp32", False)),
    (T10, "fp16", "fp32", False, None, PrecisionPlan("fp16", False, fp16=True)),
    (T10, "fp16", "fp16", False, None, PrecisionPlan("fp16", False, fp16=True)),
    (T10, None, "int8", True, None, PrecisionPlan("int8", False, int8=True)),
    (T10, "fp16", "fp16", False, True, PrecisionPlan("fp16", True)),
    (T11, None, "fp32", False, None, PrecisionPlan("fp32", True)),
    (T11, "fp16", "fp16", False, None, PrecisionPlan("fp16", True)),
    (T11, "int8", "int8", True, None, PrecisionPlan("int8", True)),
    (T11, "int8", "int8", True, True, PrecisionPlan("int8", True)),
])
def test_precision_plans(version, requested, source, qdq, typed, expected):
    plan = plan_precision(version, requested, source, qdq, typed)
    assert plan == expected
    assert plan.builder_flags == [f for f, on in (("FP16", expected.fp16), ("INT8", expected.int8)) if on]


@pytest.mark.parametrize("version, requested, source, qdq, typed, match", [
    (T10, "int8", "fp32", False, None, "needs an explicitly quantized ONNX model.*navit quantize"),
    (T11, "int8", "fp32", False, None, "needs an explicitly quantized ONNX model.*navit quantize"),
    (T10, None, "int8", False, None, "no QuantizeLinear/DequantizeLinear"),
    (T10, "fp32", "fp16", False, None, "this ONNX model is fp16"),
    (T10, "fp16", "int8", True, None, "quantized"),
    (T11, "fp16", "fp32", False, None,
     r"TensorRT 11\.1\.0\.5 takes the precision from the ONNX model, which is fp32.*navit quantize"),
    (T11, "fp32", "fp16", False, None, "compile the fp32 ONNX export"),
    (T10, "fp16", "fp32", False, True, "a strongly typed build takes the precision from the ONNX model"),
    (T11, None, "fp32", False, False, "strongly typed networks only"),
    (T10, "bf16", "fp32", False, None, "unknown precision"),
    (T10, None, "fp64", False, None, "artifact has precision"),
])
def test_precision_refusals(version, requested, source, qdq, typed, match):
    with pytest.raises(ConfigError, match=match):
        plan_precision(version, requested, source, qdq, typed)


def test_gpu_name_normalization():
    assert normalize_gpu_name("NVIDIA  H100 80GB HBM3\x00") == normalize_gpu_name("h100 80gb hbm3")
    assert normalize_gpu_name("Orin") == "orin"


def _info(tmp_path: Path, **kw) -> EngineInfo:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    return make_engine_info(engine, make_artifact(), **kw)


def test_engine_problems_none_when_everything_matches(tmp_path):
    info = _info(tmp_path)
    assert engine_problems(info, trt_version="10.3.1.2", gpu=GpuInfo("Fake GPU", "8.7"),
                           engine_sha256=info.engine_sha256, expected_weights_sha256="ab" * 32,
                           artifact_weights_sha256="ab" * 32, expected_onnx_sha256="cd" * 32) == []


def test_trt_version_mismatch_message(tmp_path):
    info = _info(tmp_path, trt_version="10.3.0.30")
    with pytest.raises(ArtifactMismatchError) as err:
        check_engine(tmp_path / "m.engine", info, trt_version="11.1.0.5")
    msg = str(err.value)
    assert "built with TensorRT 10.3.0.30, this machine has TensorRT 11.1.0.5" in msg
    assert "navit compile --onnx /models/model.onnx --out" in msg and "m.engine" in msg


def test_gpu_mismatch_messages(tmp_path):
    info = _info(tmp_path)
    (cc,) = engine_problems(info, gpu=GpuInfo("NVIDIA H100 80GB HBM3", "9.0"))
    assert "built for GPU 'NVIDIA Fake GPU' (compute capability 8.7)" in cc and "(compute capability 9.0)" in cc
    (name,) = engine_problems(info, gpu=GpuInfo("NVIDIA Other GPU", "8.7"))
    assert "same architecture" in name
    assert engine_problems(info, gpu=GpuInfo("NVIDIA Other GPU", "8.7"), check_gpu_name=False) == []


def test_model_hash_and_engine_file_mismatches_are_all_reported(tmp_path):
    info = _info(tmp_path)
    problems = engine_problems(info, trt_version="10.4.0.1", gpu=GpuInfo("x", "7.5"), engine_sha256="00" * 32,
                               expected_weights_sha256="ef" * 32, artifact_weights_sha256="ab" * 32,
                               expected_onnx_sha256="12" * 32)
    assert len(problems) == 5
    assert any("another model" in p for p in problems) and any("another export" in p for p in problems)
    assert any("does not match its sidecar" in p for p in problems)


def test_engine_section_round_trip_through_the_sidecar(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    art = make_artifact(precision="fp32")
    info = make_engine_info(engine, art, profiles=[PackProfile(1, 256, 256, 1, 4, 64)], plugin_path="/x/lib.so")
    info = EngineInfo.from_dict({**info.to_dict(), "precision": "fp16", "builder_flags": ["FP16"]})
    full = with_engine(art, info)
    assert full.precision == "fp16" and full.lowering == art.lowering
    side = write_sidecar(engine, full)
    assert side.name == "m.engine.json"
    again = read_artifact(engine)  # still a valid DeploymentArtifact: the section lives under extra["engine"]
    assert again == full
    assert EngineInfo.from_artifact(again, engine) == info
    assert json.loads(side.read_text())["extra"]["engine"]["plugin"] == {"path": "/x/lib.so", "sha256": None}


def test_engine_section_missing_or_unknown(tmp_path):
    with pytest.raises(ArtifactMismatchError, match="not a TensorRT engine"):
        EngineInfo.from_artifact(make_artifact(), tmp_path / "m.engine")
    with pytest.raises(ArtifactMismatchError, match="format 2"):
        EngineInfo.from_dict({"format": 2})
    with pytest.raises(ArtifactMismatchError, match="not a navit-deploy engine description"):
        EngineInfo.from_dict({"format": 1, "tensorrt_version": "10.3"})


def test_io_names():
    check_io_names(["patches", "coords", "segment_ids", "cu_seqlens"], ["logits", "embeddings"], "x")
    check_io_names(["patches", "cu_seqlens"], ["embeddings", "logits"], "x")  # TensorRT may drop unused inputs
    with pytest.raises(ArtifactMismatchError, match="not a NaViT export"):
        check_io_names(["images"], ["embeddings", "logits"], "x")


def test_artifact_type_is_unchanged():
    assert DeploymentArtifact.from_dict(with_engine(make_artifact(), _dummy_info()).to_dict()).extra["engine"]


def _dummy_info() -> EngineInfo:
    return EngineInfo("10.3.0.30", FAKE_GPU, "fp32", "fp32", False, (), False, (PackProfile(1, 1, 1, 1, 1, 1),),
                      "/m.onnx", "0" * 64, "1" * 64)
