"""TensorRTRunner without a GPU: refusals before TensorRT, then its execution logic on a fake TensorRT/CUDA.

The fake (tests/compile/fake_trt.py) mirrors the TensorRT calls the runner makes; the real engine test is
test_tensorrt_e2e.py, which runs where TensorRT and a GPU exist.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from navit_deploy.compile import plugin_lib, trt_env
from navit_deploy.compile.profiles import PackProfile
from navit_deploy.errors import ArtifactMismatchError, BackendUnavailableError, InputValidationError, PluginError
from navit_deploy.packing import build_pack
from navit_deploy.runtime.artifact import sidecar_path
from navit_deploy.runtime.open import open_runner
from navit_deploy.runtime.tensorrt_runner import TensorRTRunner
from tests.compile.fake_trt import FakeCudart, FakeEngine, FakeRegistry, FakeTensorRT, reference
from tests.conftest import fake_image

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def test_modules_import_without_tensorrt_cuda_or_torch():
    code = textwrap.dedent("""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "tensorrt", "cuda", "polygraphy", "onnx"):
                    raise ImportError(name + " is hidden for this test")
        sys.meta_path.insert(0, Block())
        import navit_deploy.runtime.tensorrt_runner, navit_deploy.compile.engine, navit_deploy.commands.compile_cmds
        from navit_deploy.cli import build_parser
        build_parser()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# -- refusals that need no TensorRT ----------------------------------------------------------------------------


def test_missing_engine_or_sidecar(tmp_path):
    with pytest.raises(ArtifactMismatchError, match="not found"):
        TensorRTRunner(tmp_path / "none.engine")
    bare = tmp_path / "bare.engine"
    bare.write_bytes(b"x")
    with pytest.raises(ArtifactMismatchError, match="no sidecar.*navit compile"):
        TensorRTRunner(bare)


def test_sidecar_of_an_onnx_export_is_not_an_engine_description(fake_engine):
    path, _ = fake_engine()
    d = json.loads(sidecar_path(path).read_text())
    del d["extra"]["engine"]
    sidecar_path(path).write_text(json.dumps(d))
    with pytest.raises(ArtifactMismatchError, match="not a TensorRT engine"):
        TensorRTRunner(path)


def test_replaced_engine_and_unexpected_model_are_refused_before_tensorrt(fake_engine):
    path, _ = fake_engine()
    with pytest.raises(ArtifactMismatchError, match="another model.*navit compile --onnx /models/model.onnx"):
        TensorRTRunner(path, expected_weights_sha256="ef" * 32)
    with pytest.raises(ArtifactMismatchError, match="another export"):
        TensorRTRunner(path, expected_onnx_sha256="ef" * 32)
    path.write_bytes(b"rebuilt elsewhere")
    with pytest.raises(ArtifactMismatchError, match="does not match its sidecar"):
        TensorRTRunner(path)


@pytest.mark.skipif(HAVE_TRT, reason="checks the message shown where TensorRT is missing")
def test_valid_engine_needs_tensorrt_here(fake_engine):
    path, _ = fake_engine()
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed.*python3-libnvinfer"):
        TensorRTRunner(path)
    with pytest.raises(BackendUnavailableError):
        open_runner(path)


# -- execution logic on the fake -------------------------------------------------------------------------------


PROFILES = [PackProfile(1, 256, 256, 1, 4, 64), PackProfile(1, 512, 512, 1, 8, 64)]


@pytest.fixture
def fake_backend(monkeypatch):
    """``install(engine=..., version=..., gpu=..., cc=..., registry=...)`` puts fakes behind trt_env."""

    def install(engine=None, version="10.3.0.30", gpu="NVIDIA Fake GPU", cc=(8, 7), registry=None, profiles=PROFILES):
        trt = FakeTensorRT(version, engine if engine is not None else FakeEngine(profiles), registry)
        cudart = FakeCudart(gpu, cc)
        monkeypatch.setattr(trt_env, "_TRT", trt)
        monkeypatch.setattr(trt_env, "_CUDART", cudart)
        monkeypatch.setattr(trt_env, "_LOGGER", None)
        monkeypatch.setattr(trt_env, "_PLUGIN_HANDLES", {})
        return trt, cudart

    return install


def _pack(rng, grids, pack_len):
    items = [fake_image(rng, h, w) for h, w in grids]
    return build_pack(items, list(range(len(items))), pack_len=pack_len)


def test_runs_packs_switches_profiles_and_reuses_buffers(fake_engine, fake_backend, rng):
    path, _ = fake_engine(profiles=PROFILES)
    trt, cudart = fake_backend()
    runner = TensorRTRunner(path)
    assert runner.limits.max_pack_len == 512 and runner.limits.max_images == 64
    assert runner.precision == "fp32" and runner.gpu.compute_capability == "8.7"
    with runner:
        ctx = trt.engine.contexts[0]
        assert trt.deserialized == [path.read_bytes()] and cudart.current == 0
        for grids, pack_len, profile in [([(8, 8), (2, 3)], 512, 1), ([(4, 4)] * 3, 256, 0), ([(5, 7)], 512, 1),
                                         ([(1, 1)] * 10, 512, 1), ([(3, 3)], 200, 0)]:
            pack = _pack(rng, grids, pack_len)
            out = runner.infer(pack)
            assert runner.last_profile == profile
            emb, logits = reference(pack.model_inputs(), 128, 4)
            np.testing.assert_array_equal(out.embeddings, emb)
            np.testing.assert_array_equal(out.logits, logits)
            assert out.embeddings.dtype == np.float32 and out.embeddings.shape == (len(grids), 128)
        assert ctx.profile_switches == [1, 0, 1, 0]  # only when the profile changes
        assert ctx.executions == 5
        # Grow-only: the first 512-token pack sized the token buffers; later packs reuse them.
        # Outputs grew once more for the 10-image pack.
        assert cudart.mallocs == 6 + 2
    assert cudart.frees == cudart.mallocs and not cudart.memory and cudart.streams == 0


def test_pack_outside_every_profile(fake_engine, fake_backend, rng):
    path, _ = fake_engine(profiles=PROFILES)
    fake_backend()
    with TensorRTRunner(path) as runner:
        with pytest.raises(InputValidationError, match=r"outside this backend's range \[1, 512\]"):
            runner.infer(_pack(rng, [(8, 8)], 1024))
        with pytest.raises(InputValidationError, match="positional table"):
            pack = _pack(rng, [(2, 2)], 256)
            pack.coords[0, 0] = 40
            runner.infer(pack)


@pytest.mark.parametrize("kw, match", [
    ({"version": "11.1.0.5"}, r"built with TensorRT 10\.3\.0\.30, this machine has TensorRT 11\.1\.0\.5"),
    ({"cc": (9, 0), "gpu": "NVIDIA H100 80GB HBM3"}, r"built for GPU 'NVIDIA Fake GPU' \(compute capability 8\.7\)"),
    ({"gpu": "NVIDIA Other GPU"}, "same architecture"),
])
def test_refuses_other_tensorrt_or_gpu(fake_engine, fake_backend, kw, match):
    path, _ = fake_engine(profiles=PROFILES)
    fake_backend(**kw)
    with pytest.raises(ArtifactMismatchError, match=match) as err:
        TensorRTRunner(path)
    assert "rebuild it on this machine: navit compile --onnx /models/model.onnx" in str(err.value)


def test_other_gpu_name_allowed_when_asked(fake_engine, fake_backend):
    path, _ = fake_engine(profiles=PROFILES)
    fake_backend(gpu="NVIDIA Other GPU")
    TensorRTRunner(path, check_gpu_name=False)


def test_patch_version_difference_is_left_to_tensorrt(fake_engine, fake_backend, rng):
    path, _ = fake_engine(profiles=PROFILES)
    trt, _ = fake_backend(version="10.3.1.2")
    trt.engine = None  # TensorRT refuses to deserialize
    runner = TensorRTRunner(path)
    with pytest.raises(ArtifactMismatchError, match=r"built with TensorRT 10\.3\.0\.30, this is 10\.3\.1\.2"):
        runner.activate()
    assert not runner.is_active


def test_engine_profiles_must_match_the_sidecar(fake_engine, fake_backend):
    path, _ = fake_engine(profiles=PROFILES)
    fake_backend(engine=FakeEngine(PROFILES[:1]))
    with pytest.raises(ArtifactMismatchError, match="optimization profiles"):
        TensorRTRunner(path).activate()


def test_plugin_engine_loads_the_plugin_before_deserializing(fake_engine, fake_backend, tmp_path, monkeypatch, rng):
    lib = tmp_path / "libnavit_packed_attention_plugin.so"
    lib.write_bytes(b"\x7fELF")
    monkeypatch.delenv(plugin_lib.PLUGIN_LIB_ENV, raising=False)
    monkeypatch.setattr(plugin_lib, "DEFAULT_BUILD_DIR", tmp_path / "no_build")
    path, _ = fake_engine(lowering="trt-plugin", profiles=PROFILES, plugin_path=str(lib))
    trt, _ = fake_backend()
    with TensorRTRunner(path) as runner:  # found through the path recorded at build time
        assert trt.registry.loaded == [str(lib.resolve())]
        runner.infer(_pack(rng, [(4, 4)], 256))
    fake_backend(registry=FakeRegistry(registers=False))
    with pytest.raises(PluginError, match="missing or built for another TensorRT"):
        TensorRTRunner(path).activate()
    lib.unlink()
    with pytest.raises(PluginError, match="not found"):
        TensorRTRunner(path)


def test_missing_device(fake_engine, fake_backend, monkeypatch):
    path, _ = fake_engine(profiles=PROFILES)
    fake_backend()
    with pytest.raises(BackendUnavailableError, match="CUDA device 3 does not exist"):
        TensorRTRunner(path, device=3)
