"""A Qwen-VL tower through ``navit compile`` and the TensorRT runner, on the fake TensorRT whose engine executes the
real exported ONNX model with ONNX Runtime (tests/compile/fake_trt.py ``OnnxEngine``).

What is checked: a real export (transformers' Qwen2.5-VL / Qwen2-VL towers, random weights, small configs) is no
longer refused by compile and its profiles match the graph's declared inputs; the runner feeds every input the
engine has with the pack's shape and the engine's dtype, picks a profile covering tokens, images and windows, and
returns the merged tokens in the order the pipeline restores, so the pipeline's results through the TensorRT runner
equal those through the ONNX Runtime runner (and transformers' own tower). TensorRT itself is not run here.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from navit_deploy.compile import plugin_lib, trt_env
from navit_deploy.compile.engine import CompileRequest, compile_engine, plan_compile, read_onnx_summary
from navit_deploy.errors import InputValidationError
from navit_deploy.packing import Packer
from navit_deploy.runtime.runner import INPUT_DTYPES, WINDOW_DTYPES
from tests.compile.fake_builder import FakeBuild
from tests.compile.fake_trt import FakeCudart, FakeTensorRT, OnnxEngine

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from tests.importers.conftest import build_qwen  # noqa: E402
from tests.importers.test_hf_qwen_vl import max_abs, reference_pixels, reference_tokens  # noqa: E402

# A mix the packer spreads over several packs: a big photo (several windows, edges cut), thin strips, tiny ones.
SIZES = [(300, 200), (100, 100), (500, 90), (56, 56), (200, 400), (60, 800), (56, 56), (420, 420), (90, 500)]
CASES = {"2.5-dense": ("2.5", "dense"), "2.5-trt-plugin": ("2.5", "trt-plugin"), "2-dense": ("2", "dense")}


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """``get(case) -> (onnx path, transformers tower)``, exported once per case."""
    from navit_deploy.export.onnx_export import export_onnx
    from navit_deploy.model.weights import load_model, model_digest

    made: dict = {}

    def get(case: str):
        if case not in made:
            kind, lowering = CASES[case]
            d = tmp_path_factory.mktemp(f"qwen{kind}")
            tower = build_qwen(d / "ckpt", kind)
            onnx = export_onnx(load_model(d / "ckpt"), d / f"m.{lowering}.onnx", lowering=lowering,
                               weights_sha256=model_digest(d / "ckpt")).path
            made[case] = onnx, tower
        return made[case]

    return get


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


def _compile_and_install(monkeypatch, tmp_path, onnx, lowering, pack_lens=(256, 1024)):
    """Fake-build the engine with ``navit compile`` and put an ONNX-backed fake TensorRT behind trt_env."""
    lib = tmp_path / plugin_lib.PLUGIN_LIBRARY_NAME
    lib.write_bytes(b"\x7fELF")
    FakeBuild().install(monkeypatch)
    monkeypatch.setattr(trt_env, "load_plugin", lambda path: None)
    res = compile_engine(CompileRequest(onnx=onnx, out=tmp_path / "tower.engine", pack_lens=pack_lens,
                                        plugin=str(lib) if lowering == "trt-plugin" else None))
    engine = OnnxEngine(onnx, res.info.profiles, unit=4, reference_ops=lowering != "dense")
    trt = FakeTensorRT("10.3.0.30", engine)
    monkeypatch.setattr(trt_env, "_TRT", trt)
    monkeypatch.setattr(trt_env, "_CUDART", FakeCudart())
    monkeypatch.setattr(trt_env, "_LOGGER", None)
    monkeypatch.setattr(trt_env, "_PLUGIN_HANDLES", {})
    return res, trt


def _pipeline(runner, pack_len=1024):
    from navit_deploy.runtime.pipeline import Pipeline

    return Pipeline(runner, runner.artifact.frontend, Packer(pack_len, 64))


def test_a_qwen_export_is_planned_with_profiles_matching_its_graph(towers, tmp_path):
    onnx, _ = towers("2.5-dense")
    summary = read_onnx_summary(onnx)
    assert summary.input_shapes["window_cu_seqlens"] == ("windows_plus_1",)
    assert summary.input_shapes["patches"] == ("tokens", 1176) and summary.outputs == ("tokens",)
    plan = plan_compile(CompileRequest(onnx=onnx, out=tmp_path / "m.engine"))  # no refusal any more
    assert [p.windows for p in plan.profiles] == [(1, 4, 64), (1, 8, 128), (1, 16, 256)]
    assert all(p.unit == 4 and p.min_tokens == 4 for p in plan.profiles)


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_through_the_tensorrt_runner_equals_onnx_runtime(case, towers, images, monkeypatch, tmp_path):
    from navit_deploy.runtime.onnx_runner import OnnxRunner
    from navit_deploy.runtime.tensorrt_runner import TensorRTRunner

    onnx, tower = towers(case)
    lowering = CASES[case][1]
    res, trt = _compile_and_install(monkeypatch, tmp_path, onnx, lowering)
    sources = [*images, io.BytesIO(b"not an image")]
    with OnnxRunner(onnx, reference_ops=lowering != "dense") as ort_runner:
        want = _pipeline(ort_runner).run(sources)
    runner = TensorRTRunner(res.engine_path)
    assert runner.output_kind == "tokens" and runner.windows == ort_runner.windows
    assert runner.input_names == ort_runner.input_names
    with runner:
        got = _pipeline(runner).run(sources)
        ctx = trt.engine.contexts[0]
    assert [r.ok for r in got] == [r.ok for r in want] == [True] * len(images) + [False]
    assert got[-1].error_type == want[-1].error_type
    ok = [i for i, r in enumerate(got) if r.ok]
    diff = max_abs([got[i].visual_tokens for i in ok], [want[i].visual_tokens for i in ok])
    inp, _ = reference_pixels(images)
    ref = max_abs([got[i].visual_tokens for i in ok], reference_tokens(tower, inp))
    print(f"qwen {case} through the fake TensorRT runner: vs ONNX Runtime {diff:.1e}, vs transformers {ref:.1e}, "
          f"{ctx.executions} packs, profiles {ctx.profile_switches}")
    assert diff <= 1e-6 and ref <= 1e-4
    assert ctx.executions >= 2  # the mix needs more than one pack
    names = set(runner.engine_inputs)  # TensorRT drops inputs the graph never reads: dense towers' cu_seqlens
    assert names == set(runner.input_names) - set(trt.engine.dropped)
    assert ("cu_seqlens" in trt.engine.dropped) == (lowering == "dense")
    for feed in ctx.fed:  # what the engine read from its inputs' device memory
        assert set(feed) == names
        for name, value in feed.items():
            assert value.dtype == {**INPUT_DTYPES, **WINDOW_DTYPES}[name], name
        t = feed["patches"].shape[0]
        assert t % 4 == 0 and feed["coords"].shape == (t, 2)
        assert all(feed[n].shape == (t,) for n in ("segment_ids", "window_segment_ids") if n in feed)
        if "window_cu_seqlens" in feed:
            assert feed["window_cu_seqlens"][0] == 0 and feed["window_cu_seqlens"][-1] <= t


def test_runner_feeds_each_pack_exactly_and_returns_window_order(towers, images, monkeypatch, tmp_path):
    from navit_deploy.frontend import prepare_image
    from navit_deploy.runtime.onnx_runner import OnnxRunner
    from navit_deploy.runtime.tensorrt_runner import TensorRTRunner

    onnx, _ = towers("2.5-dense")
    res, trt = _compile_and_install(monkeypatch, tmp_path, onnx, "dense")
    with TensorRTRunner(res.engine_path) as runner, OnnxRunner(onnx) as ort_runner:
        items = [prepare_image(im, runner.artifact.frontend) for im in images[:4]]
        for pack_len, profile in ((256, 0), (1024, 1)):
            packer = Packer(pack_len, 64, windows=runner.windows)
            pack = packer.pack([it for it in items if it.num_tokens <= pack_len])[0]
            out = runner.infer(pack)
            assert runner.last_profile == profile
            fed = trt.engine.contexts[0].fed[-1]
            assert sorted(fed) == sorted(runner.engine_inputs)
            for name in runner.engine_inputs:
                np.testing.assert_array_equal(fed[name], pack.model_inputs()[name])
            assert out.embeddings is None and out.tokens.shape == (pack_len // 4, 96)
            np.testing.assert_allclose(out.tokens, ort_runner.infer(pack).tokens, atol=1e-6)  # still window order
        with pytest.raises(InputValidationError, match=r"outside this backend's range \[4, 1024\]"):
            runner.infer(Packer(1028, 64, windows=runner.windows).pack(items)[0])
