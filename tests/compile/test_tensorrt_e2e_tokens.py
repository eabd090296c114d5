"""End to end on a real TensorRT and GPU for a VLM tower: compile a tiny Qwen2.5-VL / Qwen2-VL export (random
weights, from transformers) with window profiles, run the pipeline through TensorRTRunner and compare each
image's merged tokens with the ONNX Runtime runner's.

Skips where TensorRT, cuda-python or a CUDA GPU are missing (trt-plugin also needs the plugin library,
trt-native TensorRT >= 11.1). Nothing in this module has run where it was written; the same flow on a fake
TensorRT is tests/compile/test_tokens_trt.py.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed here (NVIDIA's package index is unreachable)")
pytest.importorskip("torch", reason="the tower is exported with torch")
pytest.importorskip("transformers", reason="the tower is built with transformers")

from PIL import Image  # noqa: E402

from navit_deploy.compile.compat import major_minor  # noqa: E402
from navit_deploy.compile.engine import CompileRequest, compile_engine  # noqa: E402
from navit_deploy.packing import Packer  # noqa: E402
from navit_deploy.runtime.artifact import read_artifact  # noqa: E402
from navit_deploy.runtime.onnx_runner import OnnxRunner  # noqa: E402
from navit_deploy.runtime.pipeline import Pipeline  # noqa: E402
from navit_deploy.runtime.tensorrt_runner import TensorRTRunner  # noqa: E402
from tests.compile.test_tensorrt_e2e import gpu  # noqa: E402,F401  (autouse: skips without cuda-python and a GPU)
from tests.importers.conftest import build_qwen  # noqa: E402
from tests.compile.conftest import plugin_or_skip  # noqa: E402

VERSION = str(trt.__version__)
SIZES = [(300, 200), (100, 100), (500, 90), (56, 56), (200, 400), (60, 800), (56, 56), (420, 420), (90, 500)]


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


@pytest.mark.parametrize("kind, lowering", [("2.5", "dense"), ("2.5", "trt-plugin"), ("2.5", "trt-native"),
                                            ("2", "dense")])
def test_tower_engine_matches_onnxruntime(kind, lowering, images, tmp_path):
    from navit_deploy.export.onnx_export import export_onnx
    from navit_deploy.model.weights import load_model, model_digest

    if lowering == "trt-native" and major_minor(VERSION) < (11, 1):
        pytest.skip(f"trt-native needs TensorRT >= 11.1 (here {VERSION})")
    plugin = plugin_or_skip() if lowering == "trt-plugin" else None
    build_qwen(tmp_path / "ckpt", kind)
    ckpt = tmp_path / "ckpt"
    onnx = export_onnx(load_model(ckpt), tmp_path / f"m.{lowering}.onnx", lowering=lowering,
                       weights_sha256=model_digest(ckpt)).path
    dense = onnx if lowering == "dense" else export_onnx(load_model(ckpt), tmp_path / "m.dense.onnx",
                                                         weights_sha256=model_digest(ckpt)).path
    engine = compile_engine(CompileRequest(onnx=onnx, out=tmp_path / "tower.engine", plugin=plugin,
                                           pack_lens=(256, 1024))).engine_path
    art = read_artifact(engine)
    assert art.output_kind == "tokens" and art.inputs == read_artifact(onnx).inputs
    sources = [*images, io.BytesIO(b"not an image")]
    with OnnxRunner(dense) as ref:
        want = Pipeline(ref, ref.artifact.frontend, Packer(1024, 64)).run(sources)
    with TensorRTRunner(engine) as runner:
        got = Pipeline(runner, runner.artifact.frontend, Packer(1024, 64)).run(sources)
        small = Pipeline(runner, runner.artifact.frontend, Packer(256, 64)).run(images[1:4])  # the 256 profile
        assert runner.last_profile == 0
    assert [r.ok for r in got] == [r.ok for r in want] == [True] * len(images) + [False]
    for g, w in zip(got[:-1], want[:-1]):
        np.testing.assert_allclose(g.visual_tokens, w.visual_tokens, atol=1e-4, rtol=0)  # fp32, TF32 off
    assert all(r.ok for r in small)
    for g, w in zip(small, want[1:4]):
        np.testing.assert_allclose(g.visual_tokens, w.visual_tokens, atol=1e-4, rtol=0)
