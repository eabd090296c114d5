"""quantize_model / `navit quantize`: outputs and report, calibration cache reuse, and bad inputs
(typed errors, nothing written)."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from navit_deploy.calibration import int8 as int8_mod
from navit_deploy.calibration.errors import (
    AlreadyQuantizedError,
    CalibrationDataError,
    CalibrationImagesUnreadableError,
)
from navit_deploy.calibration.quantize import quantize_model, report_path_for
from navit_deploy.calibration.reader import CalibrationReader, folder_images
from navit_deploy.cli import main
from navit_deploy.errors import ArtifactMismatchError, ConfigError, ImageError
from navit_deploy.runtime.artifact import read_artifact, sidecar_path
from tests.calibration.conftest import CALIB_IMAGES, EVAL_SIZE, write_corrupt, write_images


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_writes_model_sidecar_and_report(quantized, precision):
    res = quantized("dense", precision)
    assert res.path.is_file() and sidecar_path(res.path).is_file() and res.report_path == report_path_for(res.path)
    rep = json.loads(res.report_path.read_text())
    acc = rep["accuracy"]
    assert acc["precision"] == precision and acc["images"] == EVAL_SIZE
    for k in ("fp32_top1", "quant_top1", "top1_agreement", "cosine_min", "cosine_mean", "max_abs_logit_diff",
              "top1_delta_points", "parity_passed"):
        assert k in acc
    assert 0.0 <= acc["fp32_top1"] <= 1.0 and 0.9 <= acc["cosine_min"] <= acc["cosine_mean"] <= 1.0 + 1e-6
    assert acc["top1_delta_points"] == pytest.approx(100 * (acc["quant_top1"] - acc["fp32_top1"]), abs=1e-3)
    assert "test split" in acc["data"]
    assert "held-out top-1" in res.report.table()
    assert sorted(p.name for p in res.path.parent.iterdir()) == sorted(f.name for f in res.files)  # no temp files


def test_cli_int8_json(exported, calib_dir, tmp_path, capsys):
    out = tmp_path / "cli.int8.onnx"
    rc = main(["quantize", "--onnx", str(exported("dense")), "--precision", "int8", "--out", str(out), "--calib",
               str(calib_dir), "--max-images", str(CALIB_IMAGES), "--eval-size", "4", "--cache-dir",
               str(tmp_path / "c"), "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["precision"] == "int8" and d["accuracy"]["images"] == 4 and d["usable_images"] == CALIB_IMAGES
    assert read_artifact(out).precision == "int8"


def test_cli_fp16_table(exported, tmp_path, capsys):
    out = tmp_path / "cli.fp16.onnx"
    rc = main(["quantize", "--onnx", str(exported("dense")), "--precision", "fp16", "--out", str(out),
               "--eval-size", "4", "--keep-fp32", "LayerNormalization", "Softmax"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "kept in FP32" in text and "Softmax" in text and "held-out top-1" in text


def test_cache_reused_without_recalibrating(exported, calib_dir, tmp_path, monkeypatch):
    kw = {"calib": calib_dir, "max_images": CALIB_IMAGES, "eval_size": 0, "cache_dir": tmp_path / "cache", "progress": False}
    first = quantize_model(exported("dense"), tmp_path / "a.onnx", "int8", **kw)
    assert not first.details["cache_hit"] and first.details["usable_images"] == CALIB_IMAGES

    def boom(*a, **k):
        raise AssertionError("calibration ran although the ranges were cached")

    monkeypatch.setattr(int8_mod, "collect_ranges", boom)
    runs = int8_mod.CALIBRATION_RUNS["count"]
    second = quantize_model(exported("dense"), tmp_path / "b.onnx", "int8", **kw)
    assert second.details["cache_hit"] and int8_mod.CALIBRATION_RUNS["count"] == runs
    assert second.details["usable_images"] == CALIB_IMAGES  # what the cached calibration saw
    graphs = [onnx.load(str(tmp_path / f)).graph.SerializeToString() for f in ("a.onnx", "b.onnx")]
    assert graphs[0] == graphs[1]  # same ranges, same quantized graph
    monkeypatch.undo()
    forced = quantize_model(exported("dense"), tmp_path / "c.onnx", "int8", **{**kw, "use_cache": False})
    assert not forced.details["cache_hit"] and int8_mod.CALIBRATION_RUNS["count"] == runs + 1


@pytest.mark.parametrize("change", [{"method": "percentile"}, {"max_images": CALIB_IMAGES - 1},
                                    {"keep_fp32": ["pool", "head"]}])
def test_cache_key_changes(exported, calib_dir, tmp_path, change):
    """Another method, image list or set of calibrated tensors is a miss, never a wrong hit."""
    kw = {"calib": calib_dir, "max_images": CALIB_IMAGES, "eval_size": 0, "cache_dir": tmp_path / "cache", "progress": False}
    quantize_model(exported("dense"), tmp_path / "a.onnx", "int8", **kw)
    again = quantize_model(exported("dense"), tmp_path / "b.onnx", "int8", **{**kw, **change})
    assert not again.details["cache_hit"]


def test_cache_key_sees_changed_image_files(exported, tmp_path):
    folder = tmp_path / "imgs"
    write_images(folder, 9)
    kw = {"calib": folder, "eval_size": 0, "cache_dir": tmp_path / "cache", "progress": False}
    quantize_model(exported("dense"), tmp_path / "a.onnx", "int8", **kw)
    write_images(folder, 1, start=20)  # one more image
    assert not quantize_model(exported("dense"), tmp_path / "b.onnx", "int8", **kw).details["cache_hit"]


def _assert_nothing_written(folder, before):
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.fixture
def outdir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.mark.parametrize("good,bad,error", [(5, 0, CalibrationDataError), (2, 9, CalibrationDataError),
                                            (0, 10, CalibrationImagesUnreadableError)])
def test_unusable_calibration_sets(exported, tmp_path, outdir, good, bad, error):
    folder = tmp_path / "imgs"
    write_images(folder, good)
    write_corrupt(folder, bad)
    with pytest.raises(error) as e:
        quantize_model(exported("dense"), outdir / "m.onnx", "int8", calib=folder, eval_size=2,
                       cache_dir=tmp_path / "c", progress=False)
    if good == 0:
        assert isinstance(e.value, ImageError)
    _assert_nothing_written(outdir, [])


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_already_quantized_input(quantized, outdir, precision):
    src = quantized("dense", precision).path
    with pytest.raises(AlreadyQuantizedError, match=f"already a {precision} model"):
        quantize_model(src, outdir / "again.onnx", "int8", eval_size=0, progress=False)
    _assert_nothing_written(outdir, [])


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_quantized_graph_claiming_fp32(quantized, tmp_path, outdir, precision):
    """A Q/DQ or FP16 graph whose metadata says fp32 is still refused, from the graph itself."""
    from navit_deploy.calibration.quantize import _set_metadata

    m = onnx.load(str(quantized("dense", precision).path))
    art = read_artifact("x.onnx", {p.key: p.value for p in m.metadata_props})
    _set_metadata(m, art.with_(precision="fp32"))
    src = tmp_path / "liar.onnx"
    onnx.save(m, str(src))
    with pytest.raises(AlreadyQuantizedError, match="not an FP32 model"):
        quantize_model(src, outdir / "x.onnx", "fp16", eval_size=0, progress=False)
    _assert_nothing_written(outdir, [])


@pytest.mark.parametrize("kw,match", [
    ({"pack_len": 256}, "pack length 256"),
    ({"max_images_per_pack": 4}, "images per pack 4"),
    ({"frontend": "max_patches"}, "max_patches"),
])
def test_budgets_differ_from_artifact(exported, calib_dir, outdir, kw, match):
    art = read_artifact(exported("dense"))
    if kw.get("frontend"):
        kw = {"frontend": art.frontend.replace(max_patches=art.frontend.max_patches // 2)}
    for precision in ("int8", "fp16"):
        with pytest.raises(ArtifactMismatchError, match=match):
            quantize_model(exported("dense"), outdir / "m.onnx", precision, calib=calib_dir, eval_size=0,
                           progress=False, **kw)
    _assert_nothing_written(outdir, [])


def test_reader_for_another_front_end(exported, calib_dir, outdir):
    art = read_artifact(exported("dense"))
    reader = CalibrationReader(folder_images(calib_dir), art.frontend.replace(patch_size=8), art.pack_len,
                               art.max_images, progress=False)
    with pytest.raises(ArtifactMismatchError, match="front end differs"):
        quantize_model(exported("dense"), outdir / "m.onnx", "int8", reader=reader, eval_size=0, progress=False)
    _assert_nothing_written(outdir, [])


def test_other_bad_arguments(exported, tmp_path, outdir):
    src = exported("dense")
    with pytest.raises(ConfigError, match="overwrite"):
        quantize_model(src, src, "int8", progress=False)
    with pytest.raises(ConfigError, match="precision"):
        quantize_model(src, outdir / "m.onnx", "int4", progress=False)
    with pytest.raises(ConfigError, match=".onnx"):
        quantize_model(src, outdir / "m.engine", "fp16", progress=False)
    with pytest.raises(ConfigError, match="calibration method"):
        quantize_model(src, outdir / "m.onnx", "int8", method="mse", eval_size=0, progress=False)
    with pytest.raises(ArtifactMismatchError, match="not found"):
        quantize_model(tmp_path / "missing.onnx", outdir / "m.onnx", "int8", progress=False)
    bare = tmp_path / "bare.onnx"  # an ONNX model that is not a navit export (no metadata, no sidecar)
    m = onnx.load(str(src))
    del m.metadata_props[:]
    onnx.save(m, str(bare))
    with pytest.raises(ArtifactMismatchError, match="not a navit-deploy export"):
        quantize_model(bare, outdir / "m.onnx", "int8", progress=False)
    _assert_nothing_written(outdir, [])


def test_failure_after_calibration_leaves_nothing(exported, calib_dir, tmp_path, outdir, monkeypatch):
    """A crash while writing the report removes the temp model and sidecar; an older output stays intact."""
    from navit_deploy.calibration import quantize as qmod

    shutil.copy(exported("dense"), outdir / "m.onnx")
    before = (outdir / "m.onnx").read_bytes()

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(qmod, "accuracy_report", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        quantize_model(exported("dense"), outdir / "m.onnx", "int8", calib=calib_dir, eval_size=2,
                       cache_dir=tmp_path / "c", progress=False)
    _assert_nothing_written(outdir, ["m.onnx"])
    assert (outdir / "m.onnx").read_bytes() == before


def test_cli_errors_exit_2(exported, tmp_path, capsys):
    folder = tmp_path / "few"
    write_images(folder, 3)
    rc = main(["quantize", "--onnx", str(exported("dense")), "--precision", "int8", "--out", str(tmp_path / "m.onnx"),
               "--calib", str(folder), "--eval-size", "0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "CalibrationDataError" in err and "only 3 usable" in err
    rc = main(["quantize", "--onnx", str(exported("dense")), "--precision", "fp16", "--out", str(tmp_path / "m.onnx"),
               "--max-patches", "16", "--eval-size", "0"])
    assert rc == 2 and "ArtifactMismatchError" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
