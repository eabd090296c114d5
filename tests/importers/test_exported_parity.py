"""Imported checkpoints through the whole chain: export with every attention lowering, run with the packing
runtime, and hold the result to the source library's own implementation (``navit parity``'s checks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from navit_deploy.export.lowerings import LOWERINGS
from navit_deploy.model.weights import load_model, model_digest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Images as users have them: JPEG photos, an RGBA PNG, a grey scan, an 83:1 strip, an EXIF-rotated phone
    photo, and a corrupt file."""
    d = tmp_path_factory.mktemp("parity_files")
    rng = np.random.default_rng(7)
    paths = []
    for name, (w, h), mode in [("photo.jpg", (640, 480), "RGB"), ("icon.png", (35, 20), "RGBA"),
                               ("scan.png", (300, 420), "L"), ("strip.png", (1000, 12), "RGB"),
                               ("phone.jpg", (240, 320), "RGB")]:
        arr = rng.integers(0, 255, (h, w, len(mode)), dtype=np.uint8)
        img = Image.fromarray(arr[..., 0] if mode == "L" else arr, mode)
        kw = {}
        if name == "phone.jpg":
            exif = Image.Exif()
            exif[0x0112] = 6
            kw["exif"] = exif
        img.save(d / name, **kw)
        paths.append(str(d / name))
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    paths.append(str(d / "broken.jpg"))
    return paths


def _export(path, lowering, out):
    from navit_deploy.export.onnx_export import export_onnx

    return export_onnx(load_model(path), out, lowering=lowering, weights_sha256=model_digest(path)).path


@pytest.mark.parametrize("lowering", list(LOWERINGS))
@pytest.mark.parametrize("family", ["siglip2", "vit-pytorch"])
def test_every_lowering_matches_the_source_library(family, lowering, siglip_dirs, vit_dir, files, tmp_path):
    from navit_deploy.parity_run import run_parity
    from navit_deploy.runtime.onnx_runner import native_providers

    path = siglip_dirs["vision"][0] if family == "siglip2" else vit_dir[0]
    onnx_path = _export(path, lowering, tmp_path / f"m.{lowering}.onnx")
    runs = run_parity(str(path), str(onnx_path), files, reference_ops="cpu" not in native_providers(lowering))
    checks = {r.check: r for r in runs}
    want = {"source pixels", "packing invariance"} | ({"source files"} if family == "siglip2" else set())
    assert set(checks) == want, [r.note for r in runs]
    # The corrupt file is an error on both sides, not a failure; vit-pytorch's 8x6 table cannot hold the 83:1
    # strip either (a BudgetError on both sides), while SigLIP 2 resizes its table to a 1x21 grid.
    refused = {"broken.jpg"} | ({"strip.png"} if family == "vit-pytorch" else set())
    for r in runs:
        assert r.passed, (r.check, r.report.failures)
        assert r.report.summary["compared"] == len(files) - len(refused)
        assert {i.name.rsplit("/", 1)[-1] for i in r.report.images if i.error} == refused
    px = checks["source pixels"].report.summary
    assert px["max_abs_embedding_max"] <= 1e-4
    if family == "siglip2":
        assert checks["source files"].report.summary["cosine_min"] >= 0.9999
    else:
        assert px["max_abs_logit_max"] <= 1e-4 and px["top1_agreement"] == 1.0
    assert checks["packing invariance"].report.summary["max_abs_embedding_max"] <= 1e-5
    names = [i.name for i in checks["source pixels"].report.images]
    assert names == files  # reported by file, not as <PIL ...>


def test_parity_fails_when_the_export_is_of_other_weights(siglip_dirs, files, tmp_path):
    """A check that can fail: the same architecture with other weights is far from the reference."""
    from navit_deploy.export.onnx_export import export_onnx
    from navit_deploy.parity_run import run_parity

    path, _ = siglip_dirs["vision"]
    net = load_model(path)
    with torch.no_grad():
        net.blocks[0].attn.qkv.bias.add_(0.05)
    out = export_onnx(net, tmp_path / "wrong.onnx", weights_sha256=model_digest(path)).path
    runs = {r.check: r for r in run_parity(str(path), str(out), files)}
    assert not runs["source pixels"].passed and not runs["source files"].passed
    assert runs["packing invariance"].passed  # the runtime itself is still consistent


def test_cli_import_then_parity_against_pytorch(siglip_dirs, files, tmp_path, capsys):
    from navit_deploy.cli import main

    path, _ = siglip_dirs["full"]
    assert main(["import", str(path), "--out", str(tmp_path / "mine"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "siglip2" and info["outputs"] == ["embeddings"]
    assert json.loads((tmp_path / "mine" / "imported_from.json").read_text())["source_weights_sha256"] == model_digest(path)
    onnx_path = _export(tmp_path / "mine", "dense", tmp_path / "mine.onnx")
    folder = str(Path(files[0]).parent)
    assert main(["parity", "--model", str(tmp_path / "mine"), "--onnx", str(onnx_path), "--images", folder, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["check"] for c in out["checks"]] == ["pytorch", "packing invariance"] and out["passed"]


def test_eval_needs_labels_that_the_model_has(siglip_dirs, vit_dir, capsys):
    from navit_deploy.cli import main

    assert main(["eval", "--model", str(siglip_dirs["vision"][0])]) == 2
    assert "no classifier" in capsys.readouterr().err
    assert main(["eval", "--model", str(vit_dir[0]), "--size", "2"]) == 2
    assert "pass --data FOLDER" in capsys.readouterr().err
