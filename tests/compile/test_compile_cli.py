"""``navit compile`` / ``navit engine-info``: argument validation and refusals that need no TensorRT."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from navit_deploy.cli import build_parser, main
from navit_deploy.compile import plugin_lib
from navit_deploy.compile.engine import CompileRequest, plan_compile
from navit_deploy.compile.profiles import PackProfile
from navit_deploy.errors import ConfigError, PluginError

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(autouse=True)
def no_plugin_env(monkeypatch, tmp_path):
    """Plugin lookup must not find a real build: no $NAVIT_PLUGIN_LIB, empty default build dir."""
    monkeypatch.delenv(plugin_lib.PLUGIN_LIB_ENV, raising=False)
    monkeypatch.setattr(plugin_lib, "DEFAULT_BUILD_DIR", tmp_path / "no_build")


def test_compile_is_registered():
    args = build_parser().parse_args(["compile", "--onnx", "m.onnx", "--out", "m.engine", "--profile",
                                      "patches:1x768,512x768,1024x768", "cu_seqlens:2,17,65", "--profile",
                                      "patches:1,256,256", "cu_seqlens:2,5,65", "--workspace", "512"])
    assert args.profile == [["patches:1x768,512x768,1024x768", "cu_seqlens:2,17,65"],
                            ["patches:1,256,256", "cu_seqlens:2,5,65"]]
    assert args.workspace == 512 and args.precision is None


def test_refuses_ort_packed_before_tensorrt(capsys, fake_onnx, tmp_path):
    code, _, err = run_cli(capsys, "compile", "--onnx", str(fake_onnx("ort-packed")), "--out", str(tmp_path / "m.engine"))
    assert code == 2 and "ConfigError" in err and "ort-packed" in err and "--attention trt-plugin" in err


def test_refuses_int8_from_fp32(capsys, fake_onnx, tmp_path):
    code, _, err = run_cli(capsys, "compile", "--onnx", str(fake_onnx()), "--out", str(tmp_path / "m.engine"),
                           "--precision", "int8")
    assert code == 2 and "navit quantize" in err and "Q/DQ" in err


def test_refuses_missing_plugin_library(capsys, fake_onnx, tmp_path):
    onnx_path = fake_onnx("trt-plugin")
    code, _, err = run_cli(capsys, "compile", "--onnx", str(onnx_path), "--out", str(tmp_path / "m.engine"))
    assert code == 2 and "PluginError" in err and "not found" in err and "check_plugin_build.sh" in err
    code, _, err = run_cli(capsys, "compile", "--onnx", str(onnx_path), "--out", str(tmp_path / "m.engine"),
                           "--plugin", str(tmp_path / "nope.so"))
    assert code == 2 and "nope.so" in err


def test_refuses_unsupported_plugin_head_dim(capsys, fake_onnx, tmp_path):
    code, _, err = run_cli(capsys, "compile", "--onnx", str(fake_onnx("trt-plugin", head_dim=80)), "--out",
                           str(tmp_path / "m.engine"))
    assert code == 2 and "head_dim=80" in err


@pytest.mark.parametrize("extra, match", [
    (["--out", "{tmp}/m.onnx2"], "must end in .engine, .plan, .trt"),
    (["--out", "{tmp}/m.engine", "--profile", "patches:1,512,1024"], "needs cu_seqlens"),
    (["--out", "{tmp}/m.engine", "--profile", "patches:1x512,512x512,1024x512", "cu_seqlens:2,3,4"], r"\[T, 768\]"),
    (["--out", "{tmp}/m.engine", "--pack-lens", "256,x"], "comma-separated"),
    (["--out", "{tmp}/m.engine", "--workspace", "0"], "positive number of MiB"),
    (["--out", "{tmp}/m.engine", "--timing-cache", "{tmp}/no/dir/cache"], "directory does not exist"),
    (["--out", "{tmp}/m.engine", "--profile", "patches:1,8,8", "cu_seqlens:2,3,4", "--pack-lens", "256"],
     "either --profile or --pack-lens"),
])
def test_argument_validation(capsys, fake_onnx, tmp_path, extra, match):
    argv = ["compile", "--onnx", str(fake_onnx())] + [a.format(tmp=tmp_path) for a in extra]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert __import__("re").search(match, err), err


def test_missing_onnx(capsys, tmp_path):
    code, _, err = run_cli(capsys, "compile", "--onnx", str(tmp_path / "none.onnx"), "--out", str(tmp_path / "m.engine"))
    assert code == 2 and "not found" in err


def test_onnx_without_artifact(capsys, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "plain.onnx"
    onnx.save_model(helper.make_model(g), str(path))
    code, _, err = run_cli(capsys, "compile", "--onnx", str(path), "--out", str(tmp_path / "m.engine"))
    assert code == 2 and "navit export" in err


def test_plan_defaults_to_buckets_of_the_artifact(fake_onnx, tmp_path):
    plan = plan_compile(CompileRequest(onnx=fake_onnx(pack_len=512), out=tmp_path / "m.plan"))
    assert plan.profiles == (PackProfile(1, 256, 256, 1, 4, 64), PackProfile(1, 512, 512, 1, 8, 64))
    assert not plan.needs_plugin and plan.plugin_path is None and not plan.model.has_qdq
    plan = plan_compile(CompileRequest(onnx=fake_onnx(pack_len=512), out=tmp_path / "m.plan", pack_lens=(1024,),
                                       max_images=16))
    assert plan.profiles == (PackProfile(1, 1024, 1024, 1, 16, 16),)


def test_plan_finds_plugin_and_qdq(fake_onnx, tmp_path):
    lib = tmp_path / plugin_lib.PLUGIN_LIBRARY_NAME
    lib.write_bytes(b"\x7fELF")
    plan = plan_compile(CompileRequest(onnx=fake_onnx("trt-plugin"), out=tmp_path / "m.engine", plugin=str(lib)))
    assert plan.needs_plugin and plan.plugin_path == lib.resolve()
    plan = plan_compile(CompileRequest(onnx=fake_onnx(precision="int8", qdq=True), out=tmp_path / "q.engine",
                                       precision="int8"))
    assert plan.model.has_qdq
    note = plan_compile(CompileRequest(onnx=fake_onnx(), out=tmp_path / "d.engine", plugin=str(lib))).notes
    assert note and "ignored" in note[0]


@pytest.mark.parametrize("kind, match", [("uint8", "uint8 zero points"), ("asymmetric", "non-zero")])
def test_refuses_asymmetric_int8(fake_onnx, tmp_path, kind, match):
    with pytest.raises(ConfigError, match=f"{match}.*--activations int8"):
        plan_compile(CompileRequest(onnx=fake_onnx(precision="int8", qdq=kind), out=tmp_path / "q.engine"))


def test_plan_refusals_raise_typed_errors(fake_onnx, tmp_path):
    with pytest.raises(ConfigError):
        plan_compile(CompileRequest(onnx=fake_onnx("ort-packed"), out=tmp_path / "m.engine"))
    with pytest.raises(PluginError):
        plan_compile(CompileRequest(onnx=fake_onnx("trt-plugin"), out=tmp_path / "m.engine"))
    with pytest.raises(ConfigError, match="fp16"):
        plan_compile(CompileRequest(onnx=fake_onnx(precision="fp16"), out=tmp_path / "m.engine", precision="fp32"))


@pytest.mark.skipif(HAVE_TRT, reason="checks the message shown where TensorRT is missing")
def test_valid_request_needs_tensorrt(capsys, fake_onnx, tmp_path):
    code, _, err = run_cli(capsys, "compile", "--onnx", str(fake_onnx()), "--out", str(tmp_path / "m.engine"),
                           "--precision", "fp16")
    assert code == 2 and "BackendUnavailableError" in err and "TensorRT is not installed" in err
    assert "python3-libnvinfer" in err and not (tmp_path / "m.engine").exists()


def test_engine_info_prints_the_sidecar(capsys, fake_engine):
    path, _ = fake_engine()
    code, out, _ = run_cli(capsys, "engine-info", str(path), "--json")
    data = json.loads(out)
    assert data["engine"]["tensorrt_version"] == "10.3.0.30" and data["lowering"] == "dense"
    assert data["engine"]["profiles"][0] == {"tokens": [1, 256, 256], "images": [1, 4, 64]}
    if not HAVE_TRT:
        assert code == 0 and "unavailable" in data["here"] and data["problems"] == []
    code, out, _ = run_cli(capsys, "engine-info", str(path))
    assert "built with TensorRT 10.3.0.30 on 'NVIDIA Fake GPU' (compute capability 8.7)" in out


def test_engine_info_reports_a_replaced_engine(capsys, fake_engine):
    path, _ = fake_engine()
    Path(path).write_bytes(b"another engine")
    code, out, _ = run_cli(capsys, "engine-info", str(path))
    assert code == 1 and "does not match its sidecar" in out and "navit compile --onnx" in out
