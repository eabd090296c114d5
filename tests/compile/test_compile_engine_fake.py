"""``compile_engine`` against a fake TensorRT parser and fake Polygraphy loaders (no TensorRT needed).

What is checked: which typed error each parser or builder failure becomes (and that its message names the
versions and what to do), the Polygraphy version guard for TensorRT 11, and that a successful fake build writes
the engine and its sidecar.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from navit_deploy.compile import engine, plugin_lib
from navit_deploy.compile.compat import parse_version
from navit_deploy.compile.engine import CompileRequest, EngineBuildError, compile_engine
from navit_deploy.errors import PluginError
from navit_deploy.runtime.artifact import read_artifact
from tests.compile.fake_builder import FakeBuild, FakeParserError, FakePolygraphyException

REPO_ROOT = Path(__file__).resolve().parents[2]
# What Polygraphy 0.49.x raises from CreateConfig on TensorRT 11 (it reads ILayer.precision_is_set).
PRECISION_IS_SET = AttributeError("'tensorrt_bindings.tensorrt.ILayer' object has no attribute 'precision_is_set'")


def _compile(fake_onnx, tmp_path: Path, lowering: str = "dense", **kw) -> Path:
    out = tmp_path / "m.engine"
    compile_engine(CompileRequest(onnx=fake_onnx(lowering), out=out, **kw))
    return out


def test_fake_build_writes_engine_and_sidecar(monkeypatch, fake_onnx, tmp_path):
    fake = FakeBuild().install(monkeypatch)
    out = _compile(fake_onnx, tmp_path, workspace_mib=64)
    assert out.read_bytes() == b"fake serialized engine"
    assert read_artifact(out).extra["engine"]["tensorrt_version"] == fake.trt_version
    assert fake.configs[0]["memory_pool_limits"] == {"WORKSPACE": 64 << 20}


def test_trt_native_parse_failure_is_an_engine_build_error(monkeypatch, fake_onnx, tmp_path):
    FakeBuild(trt_version="11.1.0.5",
              parser_errors=[FakeParserError("TRT_Attention", "attn0", "unsupported layout")]).install(monkeypatch)
    with pytest.raises(EngineBuildError, match=r"TensorRT 11\.1\.0\.5 could not import the TRT_Attention nodes.*"
                                               r"--attention trt-plugin.*attn0.*unsupported layout"):
        _compile(fake_onnx, tmp_path, lowering="trt-native")


def test_plugin_parse_failure_is_a_plugin_error(monkeypatch, fake_onnx, tmp_path):
    lib = tmp_path / plugin_lib.PLUGIN_LIBRARY_NAME
    lib.write_bytes(b"\x7fELF")
    FakeBuild(parser_errors=[FakeParserError(plugin_lib.PLUGIN_NAME, "attn0", "creator not found")]).install(monkeypatch)
    monkeypatch.setattr(engine.trt_env, "load_plugin", lambda path: None)
    with pytest.raises(PluginError, match="plugin library missing or built for another TensorRT"):
        _compile(fake_onnx, tmp_path, lowering="trt-plugin", plugin=str(lib))


def test_other_parse_failures_list_the_nodes(monkeypatch, fake_onnx, tmp_path):
    FakeBuild(parser_errors=[FakeParserError("Gelu", "mlp0", "bad attribute")]).install(monkeypatch)
    with pytest.raises(EngineBuildError, match=r"cannot parse .*Gelu node 'mlp0': bad attribute"):
        _compile(fake_onnx, tmp_path)


def test_polygraphy_failure_is_an_engine_build_error(monkeypatch, fake_onnx, tmp_path):
    FakeBuild(build_raises=FakePolygraphyException("Invalid Engine")).install(monkeypatch)
    with pytest.raises(EngineBuildError, match="could not build an engine .*Invalid Engine"):
        _compile(fake_onnx, tmp_path)
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize("raised", [PRECISION_IS_SET, TypeError("CreateConfig() got an unexpected keyword 'tf32'")])
def test_api_mismatch_inside_the_build_names_both_versions(monkeypatch, fake_onnx, tmp_path, raised):
    """An AttributeError/TypeError from inside Polygraphy or TensorRT is reported as EngineBuildError, not raw."""
    FakeBuild(trt_version="11.1.0.5", polygraphy_version="0.53.6", build_raises=raised).install(monkeypatch)
    with pytest.raises(EngineBuildError) as info:
        _compile(fake_onnx, tmp_path)
    message = str(info.value)
    assert "TensorRT 11.1.0.5" in message and "Polygraphy 0.53.6" in message and str(raised) in message
    assert "pip install 'polygraphy>=0.50.3'" in message
    assert info.value.__cause__ is raised


@pytest.mark.parametrize("trt_version, polygraphy_version, refused", [
    ("11.1.0.5", "0.49.27", True),
    ("11.0.0.114", "0.50.2", True),
    ("11.1.0.5", "0.50.3", False),
    ("11.1.0.5", "0.53.6", False),
    ("10.3.0.30", "0.49.13", False),  # TensorRT 10 still has precision_is_set
])
def test_polygraphy_too_old_for_tensorrt_11(monkeypatch, fake_onnx, tmp_path, trt_version, polygraphy_version,
                                            refused):
    fake = FakeBuild(trt_version=trt_version, polygraphy_version=polygraphy_version).install(monkeypatch)
    if not refused:
        _compile(fake_onnx, tmp_path)
        return
    with pytest.raises(EngineBuildError, match=rf"Polygraphy {re.escape(polygraphy_version)} cannot build engines "
                                               rf"with TensorRT {re.escape(trt_version)}.*precision_is_set.*"
                                               r"pip install 'polygraphy>=0\.50\.3'"):
        _compile(fake_onnx, tmp_path)
    assert fake.configs == []  # refused before parsing and building


def test_pyproject_requires_a_polygraphy_that_supports_tensorrt_11():
    """Every extra that installs Polygraphy asks for at least the version the TensorRT 11 guard needs."""
    text = (REPO_ROOT / "pyproject.toml").read_text()  # requirement strings; no tomllib on Python 3.10
    pins = re.findall(r'"(polygraphy[^"]*)"', text)
    assert pins, "no extra installs polygraphy"
    for req in pins:
        m = re.fullmatch(r"polygraphy\s*>=\s*([0-9.]+)(,.*)?", req)
        assert m, f"unexpected polygraphy requirement {req!r}"
        assert parse_version(m.group(1))[:3] >= engine.POLYGRAPHY_MIN_FOR_TRT11, req
