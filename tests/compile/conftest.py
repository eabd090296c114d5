"""Fixtures of the compile / TensorRT runner tests.

``fake_onnx(...)`` writes a tiny ONNX file with the NaViT inputs/outputs and an artifact in its metadata (no
torch export: milliseconds), enough for every check that runs before TensorRT. ``fake_engine(...)`` writes an
"engine" file plus the sidecar ``navit compile`` would write for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from navit_deploy.compile.compat import EngineInfo, GpuInfo, sha256_file, with_engine
from navit_deploy.compile.plugin_lib import find_plugin_library
from navit_deploy.compile.profiles import default_profiles
from navit_deploy.errors import PluginError
from navit_deploy.frontend import FrontendConfig
from navit_deploy.runtime.artifact import METADATA_KEY, DeploymentArtifact, write_sidecar

TINY_FRONTEND = FrontendConfig(patch_size=16, max_patches=64, max_grid=32)  # patch_dim 768
FAKE_GPU = GpuInfo("NVIDIA Fake GPU", "8.7")
FAKE_TRT_VERSION = "10.3.0.30"


def plugin_or_skip() -> str:
    """The built plugin library's path, or skip the test (build it with scripts/check_plugin_build.sh)."""
    try:
        return str(find_plugin_library())
    except PluginError as exc:
        pytest.skip(f"plugin library not built: {exc}")


def make_artifact(lowering: str = "dense", precision: str = "fp32", head_dim: int = 64, pack_len: int = 512,
                  max_images: int = 64) -> DeploymentArtifact:
    return DeploymentArtifact(frontend=TINY_FRONTEND, labels=("a", "b", "c", "d"), lowering=lowering,
                              precision=precision, weights_sha256="ab" * 32, dim=2 * head_dim, num_heads=2,
                              head_dim=head_dim, pack_len=pack_len, max_images=max_images)


def write_fake_onnx(path: Path, artifact: DeploymentArtifact, qdq: bool | str = False) -> Path:
    """``qdq``: False, True (symmetric int8), "uint8" or "asymmetric" zero points."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("patches", TensorProto.FLOAT, ["tokens", 768]),
              helper.make_tensor_value_info("coords", TensorProto.INT64, ["tokens", 2]),
              helper.make_tensor_value_info("segment_ids", TensorProto.INT64, ["tokens"]),
              helper.make_tensor_value_info("cu_seqlens", TensorProto.INT32, ["images_plus_1"])]
    outputs = [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["images", artifact.dim]),
               helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["images", 4])]
    nodes = [helper.make_node("Identity", ["patches"], ["x"])]
    inits = []
    if qdq:
        zp_type = TensorProto.UINT8 if qdq == "uint8" else TensorProto.INT8
        zp = 3 if qdq in ("uint8", "asymmetric") else 0
        inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", zp_type, [], [zp])]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
        last = "xd"
    else:
        last = "x"
    nodes += [helper.make_node("Identity", [last], ["embeddings"]), helper.make_node("Identity", [last], ["logits"])]
    if not artifact.has_logits:  # an encoder without a classifier (SigLIP 2): embeddings only
        outputs, nodes = outputs[:1], nodes[:-1]
    model = helper.make_model(helper.make_graph(nodes, "fake_navit", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.add(key=METADATA_KEY, value=artifact.to_json())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


QWEN_FRONTEND = FrontendConfig(patch_size=14, budget="pixels", min_pixels=56 * 56, max_pixels=28 * 28 * 160,
                               temporal_patch_size=2, merge_size=2)  # patch_dim 1176, whole 2x2 merge blocks
WINDOW_INPUTS = ("window_segment_ids", "window_cu_seqlens")


def make_tokens_artifact(windowed: bool = True, lowering: str = "dense", head_dim: int = 32, pack_len: int = 1024,
                         max_images: int = 64) -> DeploymentArtifact:
    """A Qwen2.5-VL (``windowed``) or Qwen2-VL tower's artifact: merged tokens out, 96 wide."""
    inputs = ("patches", "coords", "segment_ids", "cu_seqlens") + (WINDOW_INPUTS if windowed else ())
    return DeploymentArtifact(frontend=QWEN_FRONTEND, labels=(), lowering=lowering, precision="fp32",
                              weights_sha256="ef" * 32, dim=2 * head_dim, num_heads=2, head_dim=head_dim,
                              pack_len=pack_len, max_images=max_images, outputs=("tokens",), family="qwen-vl",
                              output_kind="tokens", inputs=inputs, window=4 if windowed else 0, token_dim=96)


def write_fake_tokens_onnx(path: Path, artifact: DeploymentArtifact) -> Path:
    """A tiny graph with a VLM tower's inputs (the export's dim names) and its ``tokens [blocks, 96]`` output."""
    import onnx
    from onnx import TensorProto, helper

    types = {"patches": TensorProto.FLOAT, "cu_seqlens": TensorProto.INT32, "window_cu_seqlens": TensorProto.INT32}
    dims = {"patches": ["tokens", artifact.frontend.patch_dim], "coords": ["tokens", 2],
            "cu_seqlens": ["images_plus_1"], "window_cu_seqlens": ["windows_plus_1"]}
    inputs = [helper.make_tensor_value_info(n, types.get(n, TensorProto.INT64), dims.get(n, ["tokens"]))
              for n in artifact.inputs]
    outputs = [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["blocks", artifact.token_dim])]
    nodes = [helper.make_node("Identity", ["patches"], ["tokens"])]
    model = helper.make_model(helper.make_graph(nodes, "fake_qwen_tower", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.add(key=METADATA_KEY, value=artifact.to_json())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    write_sidecar(path, artifact)
    return path


@pytest.fixture
def fake_tokens_onnx(tmp_path: Path):
    """``fake_tokens_onnx(windowed=..., lowering=..., head_dim=...)`` -> path of a fake VLM tower export."""
    count = [0]

    def make(windowed: bool = True, lowering: str = "dense", head_dim: int = 32, pack_len: int = 1024) -> Path:
        count[0] += 1
        art = make_tokens_artifact(windowed, lowering, head_dim, pack_len)
        return write_fake_tokens_onnx(tmp_path / f"tower{count[0]}.{lowering}.onnx", art)

    return make


@pytest.fixture
def fake_onnx(tmp_path: Path):
    """``fake_onnx(lowering=..., precision=..., head_dim=..., qdq=..., pack_len=...)`` -> path of a fake export."""
    count = [0]

    def make(lowering: str = "dense", precision: str = "fp32", head_dim: int = 64, qdq: bool | str = False,
             pack_len: int = 512, max_images: int = 64) -> Path:
        count[0] += 1
        art = make_artifact(lowering, precision, head_dim, pack_len, max_images)
        return write_fake_onnx(tmp_path / f"model{count[0]}.{lowering}.onnx", art, qdq)

    return make


def make_engine_info(engine_path: Path, artifact: DeploymentArtifact, profiles=None, trt_version: str = FAKE_TRT_VERSION,
                     gpu: GpuInfo = FAKE_GPU, plugin_path: str | None = None) -> EngineInfo:
    profiles = profiles or default_profiles(artifact.pack_len, artifact.max_images, artifact.frontend.max_patches)
    return EngineInfo(tensorrt_version=trt_version, gpu=gpu, precision=artifact.precision,
                      source_precision=artifact.precision, strongly_typed=False, builder_flags=(), tf32=False,
                      profiles=tuple(profiles), source_onnx="/models/model.onnx", source_onnx_sha256="cd" * 32,
                      engine_sha256=sha256_file(engine_path), plugin_path=plugin_path,
                      plugin_sha256=None, built_at="2026-01-01T00:00:00+00:00")


@pytest.fixture
def fake_engine(tmp_path: Path):
    """``fake_engine(lowering=..., profiles=..., trt_version=..., gpu=...)`` -> (engine path, its artifact)."""

    def make(lowering: str = "dense", precision: str = "fp32", profiles=None, trt_version: str = FAKE_TRT_VERSION,
             gpu: GpuInfo = FAKE_GPU, payload: bytes = b"not a real engine", plugin_path: str | None = None,
             name: str = "model.engine"):
        path = tmp_path / name
        path.write_bytes(payload)
        art = make_artifact(lowering, precision)
        full = with_engine(art, make_engine_info(path, art, profiles, trt_version, gpu, plugin_path))
        write_sidecar(path, full)
        return path, full

    return make


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
