"""The FP32-vs-INT8 CPU benchmark runs both models on the same packs and reports both rates."""

from __future__ import annotations

import json

from navit_deploy.calibration.bench_int8 import bench_int8, main, table
from navit_deploy.data.sample_images import builtin_sample_images


def test_bench_same_packs_side_by_side(exported, quantized):
    images = [img for _, img in builtin_sample_images()[:8]]
    r = bench_int8(exported("dense"), quantized("dense", "int8").path, images=images, repeats=2, threads=1,
                   pack_len=128)
    assert r["images"] == 8 and r["packs"] >= 2 and r["pack_len"] == 128
    for k in ("fp32", "int8"):
        assert r[k]["images_per_s_best"] >= r[k]["images_per_s_median"] > 0
    assert r["speedup_best"] == round(r["int8"]["images_per_s_best"] / r["fp32"]["images_per_s_best"], 3)
    text = table(r)
    assert "fp32" in text and "int8" in text and "INT8 / FP32" in text


def test_bench_cli_json(exported, quantized, capsys):
    rc = main(["--onnx", str(exported("dense")), "--int8", str(quantized("dense", "int8").path), "--images", "6",
               "--repeats", "1", "--workload", "thumbnails", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["images"] == 6 and d["speedup_median"] > 0
