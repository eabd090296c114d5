"""``navit compile`` of VLM tower exports (tokens output) against the fake TensorRT parser and Polygraphy loaders:
no refusal for the lowerings TensorRT builds, profiles with the window and merge-block ranges given to every
network input, the sidecar keeping the artifact's output kind and inputs, and typed refusals for what cannot be
built or is asked wrongly. No TensorRT needed; the real build is the GPU end-to-end test."""

from __future__ import annotations

from pathlib import Path

import pytest

from navit_deploy.compile import plugin_lib
from navit_deploy.compile.compat import EngineInfo
from navit_deploy.compile.engine import CompileRequest, compile_engine, plan_compile
from navit_deploy.compile.profiles import PackProfile, parse_profile
from navit_deploy.errors import ArtifactMismatchError, ConfigError, PluginError
from navit_deploy.runtime.artifact import read_artifact
from tests.compile.fake_builder import FakeBuild

PATCH_DIM = 1176


def _req(onnx: Path, tmp_path: Path, **kw) -> CompileRequest:
    return CompileRequest(onnx=onnx, out=tmp_path / "tower.engine", **kw)


def test_windowed_tower_compiles_with_window_profiles(monkeypatch, fake_tokens_onnx, tmp_path):
    fake = FakeBuild().install(monkeypatch)
    onnx = fake_tokens_onnx(windowed=True)
    res = compile_engine(_req(onnx, tmp_path, pack_lens=(256, 1024)))
    (config,) = fake.configs
    given = [dict(p) for p in config["profiles"]]
    assert [sorted(p) for p in given] == [sorted(read_artifact(onnx).inputs)] * 2
    assert given[0]["window_cu_seqlens"] == ((2,), (5,), (65,))  # W+1 for 1 <= W <= 256 / 4
    assert given[1]["window_cu_seqlens"] == ((2,), (17,), (257,))
    assert given[1]["patches"] == ((4, PATCH_DIM), (1024, PATCH_DIM), (1024, PATCH_DIM))
    assert given[1]["window_segment_ids"] == given[1]["segment_ids"] == ((4,), (1024,), (1024,))
    assert given[1]["cu_seqlens"] == ((2,), (3,), (65,))
    side = read_artifact(res.engine_path)
    assert side.output_kind == "tokens" and side.inputs == read_artifact(onnx).inputs and side.outputs == ("tokens",)
    assert side.windows == read_artifact(onnx).windows and side.token_dim == 96
    info = EngineInfo.from_artifact(side, res.engine_path)
    assert info.profiles == (PackProfile(4, 256, 256, 1, 1, 64, 1, 4, 64, unit=4),
                             PackProfile(4, 1024, 1024, 1, 2, 64, 1, 16, 256, unit=4))


def test_qwen2_tower_without_windows_compiles_in_merge_blocks(monkeypatch, fake_tokens_onnx, tmp_path):
    fake = FakeBuild().install(monkeypatch)
    res = compile_engine(_req(fake_tokens_onnx(windowed=False), tmp_path, pack_lens=(512,)))
    (given,) = [dict(p) for p in fake.configs[0]["profiles"]]
    assert sorted(given) == ["coords", "cu_seqlens", "patches", "segment_ids"]
    assert given["cu_seqlens"] == ((2,), (2,), (65,)) and given["segment_ids"] == ((4,), (512,), (512,))
    assert read_artifact(res.engine_path).output_kind == "tokens"


def test_inputs_tensorrt_drops_get_no_profile_shapes(monkeypatch, fake_tokens_onnx, tmp_path):
    fake = FakeBuild(dropped_inputs=("coords", "window_segment_ids")).install(monkeypatch)
    compile_engine(_req(fake_tokens_onnx(), tmp_path, pack_lens=(256,)))
    (given,) = fake.configs[0]["profiles"]
    assert sorted(given) == ["cu_seqlens", "patches", "segment_ids", "window_cu_seqlens"]


def test_mistake_a_user_profile_without_the_window_input(monkeypatch, fake_tokens_onnx, tmp_path):
    FakeBuild().install(monkeypatch)
    onnx = fake_tokens_onnx()
    no_windows = parse_profile(["patches:4,256,512 cu_seqlens:2,5,65"], PATCH_DIM)
    with pytest.raises(ConfigError, match=r"no shapes for \['window_segment_ids', 'window_cu_seqlens'\]"):
        plan_compile(_req(onnx, tmp_path, profiles=(no_windows,)))
    ok = parse_profile(["patches:4,256,1024 cu_seqlens:2,5,65 window_cu_seqlens:2,9,257"], PATCH_DIM)
    plan = plan_compile(_req(onnx, tmp_path, profiles=(ok,)))
    assert plan.profiles[0].unit == 4 and not plan.notes
    short = parse_profile(["patches:4,256,1024 cu_seqlens:2,5,65 window_cu_seqlens:2,9,129"], PATCH_DIM)
    (note,) = plan_compile(_req(onnx, tmp_path, profiles=(short,))).notes
    assert "fewer windows than their tokens can hold" in note
    with pytest.raises(ConfigError, match="which .* does not take"):
        plan_compile(_req(fake_tokens_onnx(windowed=False), tmp_path, profiles=(ok,)))
    with pytest.raises(ConfigError, match="multiples of 4"):
        plan_compile(_req(onnx, tmp_path, profiles=(parse_profile(
            ["patches:1,256,512 cu_seqlens:2,5,65 window_cu_seqlens:2,9,129"], PATCH_DIM),)))


def test_mistake_profiles_that_lose_the_window_inputs(monkeypatch, fake_tokens_onnx, tmp_path):
    """If the profiles lost the window inputs between planning and building, the build refuses (TensorRT would)."""
    FakeBuild().install(monkeypatch)
    real = PackProfile.shapes
    monkeypatch.setattr(PackProfile, "shapes", lambda self, d: {k: v for k, v in real(self, d).items()
                                                                if "window" not in k})
    with pytest.raises(ConfigError, match="window_cu_seqlens"):
        compile_engine(_req(fake_tokens_onnx(), tmp_path, pack_lens=(256,)))


def test_pack_lens_of_partial_merge_blocks_are_refused(fake_tokens_onnx, tmp_path):
    with pytest.raises(ConfigError, match=r"\[1001\] are not whole merge blocks of 4 tokens"):
        plan_compile(_req(fake_tokens_onnx(), tmp_path, pack_lens=(512, 1001)))


def test_full_budget_image_above_the_largest_profile_is_noted(fake_tokens_onnx, tmp_path):
    (note,) = plan_compile(_req(fake_tokens_onnx(), tmp_path, pack_lens=(256,))).notes
    # The bound is in whole merge blocks (712 = 4 x 178; the pixel bound alone gives 715 patches).
    assert "one image at the model's full budget has up to 712" in note and "--pack-lens ...,712" in note


@pytest.mark.parametrize("lowering, trt, ok", [("dense", "10.3.0.30", True), ("trt-plugin", "10.3.0.30", True),
                                               ("trt-native", "11.1.0.5", True), ("trt-native", "10.3.0.30", False),
                                               ("ort-packed", "10.3.0.30", False)])
def test_lowerings_tensorrt_builds_are_not_refused(monkeypatch, fake_tokens_onnx, tmp_path, lowering, trt, ok):
    lib = tmp_path / plugin_lib.PLUGIN_LIBRARY_NAME
    lib.write_bytes(b"\x7fELF")
    FakeBuild(trt_version=trt).install(monkeypatch)
    monkeypatch.setattr("navit_deploy.compile.engine.trt_env.load_plugin", lambda path: None)
    req = _req(fake_tokens_onnx(lowering=lowering), tmp_path, pack_lens=(256,),
               plugin=str(lib) if lowering == "trt-plugin" else None)
    if ok:
        assert read_artifact(compile_engine(req).engine_path).lowering == lowering
        return
    with pytest.raises(ConfigError, match="ort-packed|TensorRT >= 11.1"):
        compile_engine(req)


def test_plugin_head_dim_80_is_refused_as_at_export(fake_tokens_onnx, tmp_path):
    """Qwen2.5-VL's real head dim (1280 / 16 = 80) has no plugin kernel: export refuses it, and so does compile
    for an artifact that says so (the same PluginError as for pooled models)."""
    lib = tmp_path / plugin_lib.PLUGIN_LIBRARY_NAME
    lib.write_bytes(b"\x7fELF")
    with pytest.raises(PluginError, match="head_dim=80.*--attention dense"):
        plan_compile(_req(fake_tokens_onnx(lowering="trt-plugin", head_dim=80), tmp_path, plugin=str(lib)))
    plan_compile(_req(fake_tokens_onnx(lowering="dense", head_dim=80), tmp_path))


def test_network_with_other_outputs_than_the_artifact_is_refused(monkeypatch, fake_tokens_onnx, tmp_path):
    fake = FakeBuild().install(monkeypatch)
    onnx = fake_tokens_onnx()
    from tests.compile import fake_builder

    real = fake_builder.FakeNetwork.populate

    def populate(self, path, dropped=()):
        real(self, path, dropped)
        self.outputs = [type(o)(name="embeddings") for o in self.outputs]

    monkeypatch.setattr(fake_builder.FakeNetwork, "populate", populate)
    with pytest.raises(ArtifactMismatchError, match=r"not a NaViT export \(tokens model.*expected inputs "
                                                    r".*window_cu_seqlens.*outputs \['tokens'\]"):
        compile_engine(_req(onnx, tmp_path, pack_lens=(256,)))
    assert fake.configs == []


def test_cli_compiles_a_tower_with_a_window_profile(monkeypatch, fake_tokens_onnx, tmp_path, capsys):
    from navit_deploy.cli import main

    fake = FakeBuild().install(monkeypatch)
    onnx, out = fake_tokens_onnx(), tmp_path / "tower.engine"
    assert main(["compile", "--onnx", str(onnx), "--out", str(out), "--json", "--profile", "patches:4,512,1024",
                 "cu_seqlens:2,3,65", "window_cu_seqlens:2,17,257"]) == 0
    info = __import__("json").loads(capsys.readouterr().out)
    assert info["profiles"] == [{"tokens": [4, 512, 1024], "images": [1, 2, 64], "windows": [1, 16, 256], "unit": 4}]
    assert dict(fake.configs[0]["profiles"][0])["window_cu_seqlens"] == ((2,), (17,), (257,))
    assert main(["compile", "--onnx", str(onnx), "--out", str(out), "--profile", "patches:4,512,1024",
                 "cu_seqlens:2,3,65"]) == 2
    assert "window_cu_seqlens:MIN,OPT,MAX" in capsys.readouterr().err


def test_an_encoder_without_classifier_compiles(monkeypatch, tmp_path):
    """I/O names are checked against the artifact, not the pooled classifier's set: no ``logits`` is fine."""
    from tests.compile.conftest import make_artifact, write_fake_onnx

    FakeBuild().install(monkeypatch)
    onnx = write_fake_onnx(tmp_path / "enc.onnx", make_artifact().with_(outputs=["embeddings"]))
    res = compile_engine(_req(onnx, tmp_path, pack_lens=(256,)))
    assert read_artifact(res.engine_path).outputs == ("embeddings",)
