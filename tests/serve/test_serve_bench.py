"""``navit bench --serve``: which servers a report compares, and one real (tiny) run of the whole thing."""

from __future__ import annotations

import shutil

import pytest

from navit_deploy.bench.serve_bench import (ServeBenchConfig, format_serve_table, model_labels, run_serve_bench,
                                            summarize, targets)


def _run(images_per_s: float, latencies: list[float], per_pack: float = 1.0) -> dict:
    return {"images_per_s": images_per_s, "latency_ms": latencies, "failed": 0, "images_per_pack": per_pack,
            "requests_per_pack": per_pack, "tokens_per_pack": 40.0 * per_pack, "queue_wait_ms": 1.0}


def test_headline_is_fastest_packed_against_fastest_per_request():
    # Model "b" is slow one request at a time: its own pair would show 3x; the fair headline is b packed
    # (the fastest packed server) against a per-request (the fastest per-request one).
    rounds = {("a", "packed"): [_run(120, [10, 20]), _run(130, [10, 20]), _run(125, [10, 20])],
              ("a", "per-request"): [_run(100, [20, 30]), _run(100, [20, 40]), _run(100, [20, 30])],
              ("b", "packed"): [_run(150, [10, 15]), _run(150, [10, 15]), _run(150, [10, 15])],
              ("b", "per-request"): [_run(50, [40, 60]), _run(50, [40, 60]), _run(50, [40, 60])]}
    res = summarize("thumbnails", rounds)
    head = res["ratio"]
    assert (head["packed"], head["per_request"]) == ("b", "a")
    assert head["throughput_x"] == pytest.approx(1.5) and head["throughput_x_rounds"] == pytest.approx([1.5] * 3)
    own = {r["packed"]: r["throughput_x"] for r in res["per_model"]}
    assert own == pytest.approx({"a": 1.25, "b": 3.0})
    assert [(r["model"], r["batching"]) for r in res["rows"]] == list(rounds)
    t = targets([res])
    assert t[0]["passed"] and "b packed vs a per-request" in t[0]["value"]
    assert "(fastest of each)" in format_serve_table({"workloads": [res]})


def test_target_needs_throughput_and_no_worse_p99():
    slow_tail = {("a", "packed"): [_run(200, [10] * 98 + [500, 500])],
                 ("a", "per-request"): [_run(100, [20] * 100)]}
    assert not targets([summarize("crops", slow_tail)])[0]["passed"]  # 2x images/s, but p99 25x worse
    too_little = {("a", "packed"): [_run(120, [10] * 100)], ("a", "per-request"): [_run(100, [20] * 100)]}
    assert not targets([summarize("crops", too_little)])[0]["passed"]  # 1.2x
    assert targets([summarize("mixed", too_little)]) == []  # no target on the mix


def test_model_labels_name_lowering_and_keep_files_apart(exported, tmp_path):
    dense, mha = exported("dense"), exported("ort-mha")
    assert list(model_labels([dense, mha])) == ["dense", "ort-mha"]
    copy = tmp_path / "again.onnx"
    shutil.copy(dense, copy)
    shutil.copy(dense.with_name(dense.name + ".json"), copy.with_name("again.onnx.json"))
    assert list(model_labels([dense, copy])) == [f"dense ({dense.name})", "dense (again.onnx)"]


def test_a_tiny_run_end_to_end(exported, tmp_path):
    cfg = ServeBenchConfig(exported("dense"), workloads=("thumbnails",), clients=3, requests_per_client=3,
                           rounds=2, images=6, more_onnx=(exported("ort-mha"),))
    report = run_serve_bench(cfg, log=lambda s: None)
    (res,) = report["workloads"]
    assert [(r["model"], r["batching"]) for r in res["rows"]] == [
        ("dense", "packed"), ("dense", "per-request"), ("ort-mha", "packed"), ("ort-mha", "per-request")]
    for row in res["rows"]:
        assert row["requests"] == 2 * 3 * 3 and row["failed"] == 0 and row["images_per_s"] > 0
        assert row["tokens_per_pack"] > 0
    assert all(r["images_per_pack"] == 1.0 for r in res["rows"] if r["batching"] == "per-request")
    assert len(res["ratio"]["throughput_x_rounds"]) == 2 and report["targets"][0]["workload"] == "thumbnails"
    assert report["meta"]["models"] == {"dense": str(cfg.onnx), "ort-mha": str(cfg.more_onnx[0])}
