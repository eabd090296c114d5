"""Models over 2 GB: weights as ONNX external data (``m.onnx`` + ``m.onnx.data``) through export, the ONNX Runtime
runner, quantization and compile planning. The tiny model is forced there with a threshold of 0 bytes."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import pytest

from navit_deploy.errors import ArtifactMismatchError
from navit_deploy.packing import build_pack
from navit_deploy.runtime.artifact import read_artifact, sidecar_path
from navit_deploy.runtime.onnx_runner import OnnxRunner
from tests.conftest import fake_image

PACKS = {"one_image": [(5, 7)], "many_images": [(2, 3)] * 12 + [(1, 1)] * 4,
         "mixed_sizes": [(8, 8), (1, 1), (2, 30), (16, 2), (3, 3)]}

_EXTERNAL: dict = {}


@pytest.fixture(scope="session")
def external(tiny_model_dir, tmp_path_factory):
    """``external(lowering)`` -> the tiny model exported with external data (threshold 0), cached per session."""
    from navit_deploy.export.onnx_export import export_onnx
    from navit_deploy.model.weights import load_model, weights_hash

    def get(lowering: str):
        if lowering not in _EXTERNAL:
            out = tmp_path_factory.mktemp("external") / f"tiny.{lowering}.onnx"
            export_onnx(load_model(tiny_model_dir), out, lowering=lowering, pack_len=512, external_data_threshold=0,
                        weights_sha256=weights_hash(tiny_model_dir / "model.safetensors"))
            _EXTERNAL[lowering] = out
        return _EXTERNAL[lowering]

    return get


def _pack(name: str):
    rng = np.random.default_rng(3)
    items = [fake_image(rng, h, w) for h, w in PACKS[name]]
    return build_pack(items, list(range(len(items))), pack_len=512)


def _copy_export(src, dst_dir, data: bool = True):
    """Copy a model (its sidecar, and its data file unless ``data`` is False) into ``dst_dir``."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    names = [src.name, sidecar_path(src).name] + ([src.name + ".data"] if data else [])
    for n in names:
        shutil.copy(src.with_name(n), dst_dir / n)
    return dst_dir / src.name


@pytest.mark.parametrize("lowering", ["dense", "ort-mha"])  # ort-mha: weights inside Loop bodies too
def test_weights_go_to_one_data_file_beside_a_small_graph(external, exported, lowering):
    path, whole = external(lowering), exported(lowering)
    data = path.with_name(path.name + ".data")
    assert data.is_file() and not whole.with_name(whole.name + ".data").exists()
    assert path.stat().st_size < whole.stat().st_size / 5  # the graph alone
    assert path.stat().st_size + data.stat().st_size >= 0.9 * whole.stat().st_size
    proto = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {data.name}  # one file, relative to the model
    assert read_artifact(path).extra["external_data"] == data.name
    assert json.loads(sidecar_path(path).read_text())["extra"]["external_data"] == data.name
    assert "external_data" not in read_artifact(whole).extra
    onnx.checker.check_model(str(path))


@pytest.mark.parametrize("pack_name", list(PACKS))
@pytest.mark.parametrize("lowering", ["dense", "ort-mha", "trt-plugin"])
def test_outputs_equal_the_self_contained_export(external, exported, lowering, pack_name):
    """Same graph, same weights, same kernels: identical outputs (trt-plugin through reference kernels)."""
    pack = _pack(pack_name)
    ref = lowering == "trt-plugin"
    with OnnxRunner(exported(lowering), reference_ops=ref) as a, OnnxRunner(external(lowering), reference_ops=ref) as b:
        assert b.data_files and not a.data_files
        want, got = a.infer(pack), b.infer(pack)
    np.testing.assert_array_equal(got.embeddings, want.embeddings)
    np.testing.assert_array_equal(got.logits, want.logits)


def test_the_pair_moved_elsewhere_still_loads(external, exported, tmp_path):
    src = external("dense")
    moved = _copy_export(src, tmp_path / "elsewhere" / "deeper")
    for n in (src.name, src.name + ".data"):  # the original's own folder is gone from the picture
        assert (tmp_path / "elsewhere" / "deeper" / n).is_file()
    pack = _pack("mixed_sizes")
    with OnnxRunner(moved) as r, OnnxRunner(exported("dense")) as ref:
        np.testing.assert_array_equal(r.infer(pack).embeddings, ref.infer(pack).embeddings)


def test_a_missing_data_file_is_named(external, tmp_path):
    src = external("dense")
    lone = _copy_export(src, tmp_path, data=False)
    with pytest.raises(ArtifactMismatchError, match=rf"{src.name}\.data.*missing.*copy {src.name}\.data beside"):
        OnnxRunner(lone)


def test_a_truncated_data_file_is_refused(external, tmp_path):
    src = external("dense")
    model = _copy_export(src, tmp_path)
    data = model.with_name(model.name + ".data")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ArtifactMismatchError, match=r"\.data is truncated"):
        OnnxRunner(model)


@pytest.mark.parametrize("change", ["longer", "same_size_rewritten", "removed"])
def test_a_data_file_changed_after_open_is_refused_at_activation(external, tmp_path, change):
    model = _copy_export(external("dense"), tmp_path)
    data = model.with_name(model.name + ".data")
    runner = OnnxRunner(model)
    with runner:
        runner.infer(_pack("one_image"))
    st = data.stat()
    if change == "longer":
        data.write_bytes(data.read_bytes() + b"\0" * 64)
    elif change == "same_size_rewritten":
        data.write_bytes(bytes(st.st_size))  # zeroed weights, the same length
        os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    else:
        data.unlink()
    with pytest.raises(ArtifactMismatchError, match="changed on disk|disappeared"):
        runner.activate()
    assert not runner.is_active


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_quantize_an_external_data_model(external, exported, tmp_path, monkeypatch, precision):
    """FP16/INT8 of the external-data model: output with external data, the same numbers as quantizing the
    self-contained export, and the same parity verdict. The module threshold is 0 too, so quantization's own
    intermediate files (calibration copy, ORT's quantizer output) go through external data as well."""
    from navit_deploy.calibration.quantize import quantize_model
    from navit_deploy.runtime import external_data
    from tests.calibration.conftest import write_images

    calib = write_images(tmp_path / "calib", 8)[0].parent
    kw = dict(calib=calib, max_images=8, eval_size=4, progress=False, use_cache=False)
    whole = quantize_model(exported("dense"), tmp_path / "whole" / "q.onnx", precision, **kw)
    monkeypatch.setattr(external_data, "EXTERNAL_DATA_THRESHOLD", 0)
    res = quantize_model(external("dense"), tmp_path / "ext" / "q.onnx", precision, external_data_threshold=0, **kw)
    data = res.path.with_name("q.onnx.data")
    assert data.is_file() and data in res.files and res.artifact.extra["external_data"] == "q.onnx.data"
    assert sorted(p.name for p in res.path.parent.iterdir()) == sorted(f.name for f in res.files)  # no temp files
    assert res.report.parity_passed == whole.report.parity_passed
    pack = _pack("mixed_sizes")
    with OnnxRunner(whole.path) as a, OnnxRunner(res.path) as b:
        assert b.data_files
        want, got = a.infer(pack), b.infer(pack)
    np.testing.assert_allclose(got.embeddings, want.embeddings, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.logits, want.logits, atol=1e-5, rtol=0)


def test_quantize_names_a_missing_data_file(external, tmp_path):
    from navit_deploy.calibration.quantize import quantize_model

    lone = _copy_export(external("dense"), tmp_path / "src", data=False)
    with pytest.raises(ArtifactMismatchError, match=r"\.onnx\.data.*missing"):
        quantize_model(lone, tmp_path / "q.onnx", "fp16", eval_size=0, progress=False)
    assert not (tmp_path / "q.onnx").exists()


def test_compile_plan_reads_the_graph_and_checks_the_data_file(external, tmp_path):
    """TensorRT parses from the file (resolving the data file beside it); the plan checks the file is there."""
    from navit_deploy.compile.engine import read_onnx_summary

    src = external("dense")
    summary = read_onnx_summary(src)
    assert summary.inputs == tuple(summary.artifact.inputs) and summary.artifact.extra["external_data"]
    with pytest.raises(ArtifactMismatchError, match=r"\.onnx\.data.*missing"):
        read_onnx_summary(_copy_export(src, tmp_path, data=False))


def test_cli_export_with_a_threshold(tiny_model_dir, tmp_path, capsys):
    from navit_deploy.cli import main

    out = tmp_path / "cli.onnx"
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(out), "--external-data-threshold", "0"]) == 0
    assert "cli.onnx.data" in capsys.readouterr().out
    assert (tmp_path / "cli.onnx.data").is_file() and read_artifact(out).extra["external_data"] == "cli.onnx.data"
    with OnnxRunner(out) as r:
        assert r.infer(_pack("one_image")).embeddings.shape[0] == 1


def test_without_the_onnx_package_the_artifact_names_the_data_file(external, tmp_path, monkeypatch):
    """The runtime reads the graph with ``onnx`` when it is installed; without it, the sidecar's
    ``extra.external_data`` says which file must be beside the model."""
    monkeypatch.setattr(OnnxRunner, "_metadata_only", lambda self: {})  # as when `import onnx` fails
    model = _copy_export(external("dense"), tmp_path / "full")
    with OnnxRunner(model) as r:
        assert [d.path.name for d in r.data_files] == [model.name + ".data"]
        assert r.infer(_pack("one_image")).embeddings.shape[0] == 1
    with pytest.raises(ArtifactMismatchError, match=r"\.onnx\.data.*missing"):
        OnnxRunner(_copy_export(external("dense"), tmp_path / "lone", data=False))


def test_a_smaller_export_over_a_larger_one_removes_the_stale_data_file(tiny_model_dir, tmp_path):
    """Re-exporting under the threshold to the same path leaves one self-contained file, no orphaned weights."""
    from navit_deploy.export.onnx_export import export_onnx
    from navit_deploy.model.weights import load_model

    out = tmp_path / "m.onnx"
    export_onnx(load_model(tiny_model_dir), out, external_data_threshold=0)
    assert (tmp_path / "m.onnx.data").is_file()
    res = export_onnx(load_model(tiny_model_dir), out)
    assert not (tmp_path / "m.onnx.data").exists() and "external_data" not in res.artifact.extra
    with OnnxRunner(out) as runner:
        assert runner.infer(_pack("one_image")).embeddings.shape[0] == 1
