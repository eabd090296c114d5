"""``navit pack`` on a model with a patch merger: visual tokens after merging beside patch tokens (text and JSON), and
the pixel budget flags; a project model directory whose front end is Qwen-VL's (its config alone: pack reads no
weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from navit_deploy.cli import main
from navit_deploy.frontend import FrontendConfig

QWEN = FrontendConfig(patch_size=14, budget="pixels", merge_size=2, temporal_patch_size=2, min_pixels=56 * 56,
                      max_pixels=28 * 28 * 256, max_grid=1 << 14, resample="bicubic", reducing_gap=None,
                      jpeg_draft=False, to_rgb="convert")


@pytest.fixture
def model_dir(tmp_path):
    from navit_deploy.model.config import NaViTConfig

    d = tmp_path / "qwen_like"
    d.mkdir()
    NaViTConfig(dim=64, depth=1, heads=2, pool_heads=2, frontend=QWEN).save(d / "config.json")
    (d / "model.safetensors").write_bytes(b"")  # pack reads the config only
    return d


@pytest.fixture
def images(tmp_path):
    out = []
    for i, (w, h) in enumerate([(640, 480), (28, 2000), (50, 50)]):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        out.append(str(p))
    return out


def _pack(capsys, *argv):
    rc = main(["pack", *argv])
    return rc, capsys.readouterr()


def test_pack_reports_merged_tokens(model_dir, images, capsys):
    rc, out = _pack(capsys, *images, "--model", str(model_dir), "--json")
    rep = json.loads(out.out)
    assert rc == 0 and rep["merged_tokens"] == rep["tokens"] // 4
    for e in rep["per_image"]:
        gh, gw = e["grid"]
        assert e["tokens"] == gh * gw and e["merged_tokens"] == gh * gw // 4 and gh % 2 == 0 and gw % 2 == 0
    rc, out = _pack(capsys, *images, "--model", str(model_dir))
    assert rc == 0 and f"{rep['merged_tokens']} visual tokens after the 2x2 merger" in out.out


def test_pack_pixel_budget_flags(model_dir, images, capsys):
    _, out = _pack(capsys, images[0], "--model", str(model_dir), "--json")
    base = json.loads(out.out)["per_image"][0]["tokens"]
    _, out = _pack(capsys, images[0], "--model", str(model_dir), "--max-pixels", str(28 * 28 * 64), "--json")
    assert json.loads(out.out)["per_image"][0]["tokens"] <= 256 < base
    rc, out = _pack(capsys, images[0], "--model", str(model_dir), "--max-patches", "64")
    assert rc != 0 and "--max-pixels" in out.err


def test_models_without_a_merger_report_no_merged_tokens(images, capsys):
    rc, out = _pack(capsys, images[0], "--json")
    rep = json.loads(out.out)
    assert rc == 0 and "merged_tokens" not in rep and "merged_tokens" not in rep["per_image"][0]
    rc, out = _pack(capsys, images[0], "--max-pixels", "100000")
    assert rc != 0 and "--max-patches" in out.err


@pytest.fixture(scope="module")
def qwen_onnx(tmp_path_factory):
    """A tiny random Qwen2.5-VL tower (built with transformers), exported with the dense lowering."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from navit_deploy.export.onnx_export import export_onnx
    from navit_deploy.model.weights import load_model
    from tests.importers.conftest import build_qwen

    d = tmp_path_factory.mktemp("qwen_tower")
    build_qwen(d)
    out = d / "qwen.dense.onnx"
    export_onnx(load_model(d), out, lowering="dense")
    return out


def test_infer_prints_visual_tokens_at_a_per_call_pixel_budget(qwen_onnx, images, capsys):
    rc = main(["infer", "--onnx", str(qwen_onnx), images[0], "--max-pixels", str(28 * 28 * 16), "--json"])
    (entry,) = json.loads(capsys.readouterr().out)
    assert rc == 0 and entry["output_kind"] == "tokens" and entry["tokens"] <= 64
    assert entry["visual_tokens_shape"][0] == entry["tokens"] // 4
    rc = main(["infer", "--onnx", str(qwen_onnx), images[0], images[1]])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(lines) == 2 and all("visual tokens x" in line for line in lines)
