"""navit_deploy.compile.plugin_lib: library lookup, loading and ONNX attributes (CPU only)."""

from __future__ import annotations

import ast
import ctypes
import ctypes.util
from pathlib import Path

import pytest

from navit_deploy.compile import plugin_lib
from navit_deploy.errors import PluginError


def test_constants_match_the_plugin_sources() -> None:
    assert plugin_lib.PLUGIN_NAME == "NavitPackedAttention"
    assert plugin_lib.PLUGIN_VERSION == "1"
    assert plugin_lib.PLUGIN_NAMESPACE == "navit"
    assert plugin_lib.SUPPORTED_HEAD_DIMS == (32, 64, 128)
    header = (plugin_lib.PLUGIN_SOURCE_DIR / "packedAttentionPlugin.h").read_text()
    assert 'kPLUGIN_NAME = "NavitPackedAttention"' in header
    assert 'kPLUGIN_VERSION = "1"' in header
    assert 'kPLUGIN_NAMESPACE = "navit"' in header


def test_module_does_not_import_torch() -> None:
    tree = ast.parse(Path(plugin_lib.__file__).read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "torch" not in imported


def test_find_plugin_library_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build = tmp_path / "build"
    build.mkdir()
    monkeypatch.setattr(plugin_lib, "DEFAULT_BUILD_DIR", build)
    monkeypatch.delenv(plugin_lib.PLUGIN_LIB_ENV, raising=False)

    with pytest.raises(PluginError, match="check_plugin_build.sh"):
        plugin_lib.find_plugin_library()

    default = build / plugin_lib.PLUGIN_LIBRARY_NAME
    default.write_bytes(b"")
    assert plugin_lib.find_plugin_library() == default.resolve()

    from_env = tmp_path / "env.so"
    from_env.write_bytes(b"")
    monkeypatch.setenv(plugin_lib.PLUGIN_LIB_ENV, str(from_env))
    assert plugin_lib.find_plugin_library() == from_env.resolve()

    explicit = tmp_path / "explicit.so"
    explicit.write_bytes(b"")
    assert plugin_lib.find_plugin_library(explicit) == explicit.resolve()
    assert plugin_lib.find_plugin_library(str(explicit)) == explicit.resolve()


def test_find_plugin_library_does_not_fall_back_silently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build = tmp_path / "build"
    build.mkdir()
    (build / plugin_lib.PLUGIN_LIBRARY_NAME).write_bytes(b"")
    monkeypatch.setattr(plugin_lib, "DEFAULT_BUILD_DIR", build)
    with pytest.raises(PluginError, match="given path"):
        plugin_lib.find_plugin_library(tmp_path / "missing.so")
    monkeypatch.setenv(plugin_lib.PLUGIN_LIB_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(PluginError, match=plugin_lib.PLUGIN_LIB_ENV):
        plugin_lib.find_plugin_library()


def test_find_kernel_library_uses_its_own_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tmp_path / "k.so"
    lib.write_bytes(b"")
    monkeypatch.setenv(plugin_lib.KERNEL_LIB_ENV, str(lib))
    assert plugin_lib.find_kernel_library() == lib.resolve()


def test_load_kernel_library_errors(tmp_path: Path) -> None:
    not_a_library = tmp_path / "junk.so"
    not_a_library.write_text("not an ELF file")
    with pytest.raises(PluginError, match="cannot load"):
        plugin_lib.load_kernel_library(not_a_library)
    libm = ctypes.util.find_library("m")
    if libm:
        with pytest.raises(PluginError, match="C API"):
            plugin_lib.load_kernel_library(libm)


def test_load_kernel_library_sets_signatures(cpu_kernel_library: Path) -> None:
    lib = plugin_lib.load_kernel_library(cpu_kernel_library)
    assert lib.navitPackedAttentionLaunch.restype is ctypes.c_int32
    assert len(lib.navitPackedAttentionLaunch.argtypes) == 12
    assert len(lib.navitPackedAttentionLaunchAlgo.argtypes) == 13
    assert plugin_lib.status_string(lib, plugin_lib.STATUS_MISALIGNED).startswith("q/k/v/out")


def test_plugin_attributes() -> None:
    attrs = plugin_lib.plugin_attributes(12, 64)
    assert attrs == {"num_heads": 12, "head_dim": 64, "scale": 0.0, "plugin_version": "1", "plugin_namespace": "navit"}
    assert plugin_lib.plugin_attributes(2, 128, scale=0.1)["scale"] == pytest.approx(0.1)
    with pytest.raises(PluginError, match="head_dim"):
        plugin_lib.plugin_attributes(12, 80)
    with pytest.raises(PluginError, match="num_heads"):
        plugin_lib.plugin_attributes(0, 64)
    with pytest.raises(PluginError, match="scale"):
        plugin_lib.plugin_attributes(2, 64, scale=float("inf"))


def test_plugin_attributes_make_a_valid_onnx_node() -> None:
    """The README's node form: attribute types are what the TensorRT ONNX parser maps to plugin fields."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node(
        plugin_lib.PLUGIN_NAME,
        ["q", "k", "v", "cu_seqlens"],
        ["out"],
        domain=plugin_lib.ONNX_DOMAIN,
        **plugin_lib.plugin_attributes(num_heads=2, head_dim=32),
    )
    types = {a.name: a.type for a in node.attribute}
    assert types == {
        "num_heads": onnx.AttributeProto.INT,
        "head_dim": onnx.AttributeProto.INT,
        "scale": onnx.AttributeProto.FLOAT,
        "plugin_version": onnx.AttributeProto.STRING,
        "plugin_namespace": onnx.AttributeProto.STRING,
    }
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT16, ["T", 64]) for n in ("q", "k", "v")]
    cu = helper.make_tensor_value_info("cu_seqlens", TensorProto.INT32, ["B1"])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT16, ["T", 64])
    graph = helper.make_graph([node], "packed_attention", [*io, cu], [out])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(plugin_lib.ONNX_DOMAIN, 1)]
    )
    onnx.checker.check_model(model)
