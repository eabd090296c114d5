"""End to end on a real TensorRT and GPU: compile the tiny model, run it with TensorRTRunner, compare with ORT.

Skips where TensorRT, cuda-python or a CUDA GPU are missing (the trt-plugin cases also need the plugin library:
scripts/check_plugin_build.sh). Nothing in this module has run where it was written.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed here (NVIDIA's package index is unreachable)")
pytest.importorskip("torch", reason="the tiny model is exported with torch")

from navit_deploy.cli import main
from navit_deploy.compile import trt_env
from navit_deploy.compile.compat import EngineInfo, is_trt11, major_minor, sha256_file
from navit_deploy.compile.engine import CompileRequest, compile_engine
from navit_deploy.errors import ArtifactMismatchError, BackendUnavailableError, InputValidationError
from navit_deploy.packing import build_pack
from navit_deploy.runtime.artifact import read_artifact, sidecar_path
from navit_deploy.runtime.onnx_runner import OnnxRunner
from navit_deploy.runtime.tensorrt_runner import TensorRTRunner
from tests.compile.conftest import plugin_or_skip
from tests.conftest import fake_image

VERSION = str(trt.__version__)
PACKS = {
    "one_image": ([(5, 7)], 256),
    "one_token_images": ([(1, 1)] * 3, 256),
    "many_images": ([(2, 3)] * 20 + [(1, 1)] * 5, 256),
    "very_different_sizes": ([(8, 8), (1, 1), (2, 30), (16, 2), (3, 3)], 512),
    "max_pack": ([(8, 8)] * 8, 512),
}


@pytest.fixture(scope="module", autouse=True)
def gpu():
    try:
        return trt_env.gpu_info(0)
    except BackendUnavailableError as exc:
        pytest.skip(f"needs cuda-python and a CUDA GPU: {exc}")


@pytest.fixture(scope="module")
def engines(exported, tmp_path_factory):
    """``engines(lowering, precision)`` -> engine path, built once per module."""
    root = tmp_path_factory.mktemp("engines")
    cache: dict = {}

    def get(lowering: str, precision: str = "fp32"):
        key = (lowering, precision)
        if key not in cache:
            plugin = plugin_or_skip() if lowering == "trt-plugin" else None
            cache[key] = compile_engine(CompileRequest(onnx=exported(lowering), out=root / f"{lowering}.{precision}.engine",
                                                       precision=precision, plugin=plugin, pack_lens=(256, 512),
                                                       timing_cache=root / "timing.cache")).engine_path
        return cache[key]

    return get


def _packs():
    rng = np.random.default_rng(7)
    for name, (grids, pack_len) in PACKS.items():
        items = [fake_image(rng, h, w) for h, w in grids]
        yield name, build_pack(items, list(range(len(items))), pack_len=pack_len)


def _compare(engine, exported, atol):
    with TensorRTRunner(engine) as runner, OnnxRunner(exported("dense")) as ref:
        for name, pack in _packs():
            out, want = runner.infer(pack), ref.infer(pack)
            assert runner.last_profile == (0 if pack.pack_len <= 256 else 1), name
            np.testing.assert_allclose(out.embeddings, want.embeddings, atol=atol, rtol=0, err_msg=name)
            np.testing.assert_allclose(out.logits, want.logits, atol=atol, rtol=0, err_msg=name)


@pytest.mark.parametrize("lowering", ["dense", "trt-plugin", "trt-native"])
def test_fp32_engine_matches_onnxruntime(engines, exported, lowering):
    if lowering == "trt-native" and major_minor(VERSION) < (11, 1):
        pytest.skip(f"trt-native needs TensorRT >= 11.1 (here {VERSION})")
    _compare(engines(lowering), exported, atol=1e-4)  # fp32 parity threshold; TF32 is off by default


@pytest.mark.skipif(is_trt11(VERSION), reason="TensorRT 11 builds fp16 only from an fp16 ONNX model (navit quantize)")
@pytest.mark.parametrize("lowering", ["dense", "trt-plugin"])
def test_fp16_flag_engine_is_close(engines, exported, lowering):
    engine = engines(lowering, "fp16")
    assert read_artifact(engine).precision == "fp16"
    _compare(engine, exported, atol=5e-2)  # fp16 parity threshold


def test_sidecar_describes_the_build(engines, exported, gpu):
    engine = engines("trt-plugin")
    info = EngineInfo.from_artifact(read_artifact(engine), engine)
    assert info.tensorrt_version == VERSION and info.gpu == gpu
    assert info.source_onnx_sha256 == sha256_file(exported("trt-plugin"))
    assert info.engine_sha256 == sha256_file(engine)
    assert info.plugin_path and info.plugin_sha256 == sha256_file(info.plugin_path)
    assert [p.max_tokens for p in info.profiles] == [256, 512]
    assert info.strongly_typed == is_trt11(VERSION)


def test_pack_larger_than_every_profile(engines):
    rng = np.random.default_rng(0)
    pack = build_pack([fake_image(rng, 8, 8)], [0], pack_len=1024)
    with TensorRTRunner(engines("dense")) as runner, pytest.raises(InputValidationError):
        runner.infer(pack)


def test_engine_info_and_tampered_sidecar(engines, tmp_path, capsys):
    engine = engines("dense")
    assert main(["engine-info", str(engine)]) == 0
    assert "runs here" in capsys.readouterr().out
    copy = tmp_path / "copy.engine"
    shutil.copy(engine, copy)
    d = json.loads(sidecar_path(engine).read_text())
    d["extra"]["engine"]["gpu"]["compute_capability"] = "1.0"
    sidecar_path(copy).write_text(json.dumps(d))
    with pytest.raises(ArtifactMismatchError, match="compute capability 1.0"):
        TensorRTRunner(copy)


def test_cli_compile_and_infer(exported, tmp_path, capsys):
    engine = tmp_path / "cli.engine"
    assert main(["compile", "--onnx", str(exported("dense")), "--out", str(engine), "--profile",
                 "patches:1x768,256x768,512x768", "cu_seqlens:2,9,65", "--workspace", "256"]) == 0
    assert engine.is_file() and sidecar_path(engine).is_file()
    capsys.readouterr()
    from PIL import Image

    img = tmp_path / "red.png"
    Image.new("RGB", (96, 64), (200, 10, 10)).save(img)
    assert main(["infer", "--onnx", str(engine), str(img), "--json"]) == 0
    out = capsys.readouterr().out
    entries = json.loads(out[out.index("[\n"):])  # TensorRT may log before the JSON
    assert len(entries) == 1 and entries[0]["top_k"]
