"""The command line's contracts: exit codes, JSON shapes, and per-image errors kept in order."""

import json

import numpy as np
import onnx
import pytest
from PIL import Image

from navit_deploy.cli import main


@pytest.fixture
def images(tmp_path):
    good = []
    for i, size in enumerate([(320, 180), (90, 300)]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        good.append(str(p))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    return good, str(bad)


def test_infer_json_in_order_with_errors(exported, images, capsys):
    good, bad = images
    code = main(["infer", "--onnx", str(exported("dense")), good[0], bad, good[1], "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1  # some images failed, the rest are still reported
    assert [e["path"] for e in out] == [good[0], bad, good[1]]
    assert "error" in out[1] and "top_k" in out[0] and "top_k" in out[2]
    assert main(["infer", "--onnx", str(exported("dense")), *good, "--json"]) == 0
    capsys.readouterr()


def test_infer_artifact_error_is_exit_2(tmp_path, images, capsys):
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    assert main(["infer", "--onnx", str(tmp_path / "x.onnx"), images[0][0]]) == 2
    assert "ArtifactMismatchError" in capsys.readouterr().err


def test_parity_passes_and_fails_loudly(tiny_model_dir, exported, tmp_path, images, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in images[0]:
        (folder / p.split("/")[-1]).write_bytes(open(p, "rb").read())
    args = ["parity", "--model", str(tiny_model_dir), "--images", str(folder), "--json"]
    assert main([*args, "--onnx", str(exported("dense"))]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True
    # Corrupt one weight of the exported graph: parity must notice and exit non-zero.
    model = onnx.load(str(exported("dense")))
    init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, broken)
    (tmp_path / "broken.onnx.json").write_text(exported("dense").with_suffix(".onnx.json").read_text())
    assert main([*args, "--onnx", str(broken)]) == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False


def test_pack_json(images, tmp_path, capsys):
    good, bad = images
    assert main(["pack", *good, bad, "--json", "--png", str(tmp_path / "p.png")]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["images"] == 2 and rep["packs"] == 1 and len(rep["errors"]) == 1
    assert 0 <= rep["padding_fraction"] < 1 and (tmp_path / "p.png").is_file()
