"""The benchmark end to end on the tiny model: JSON schema and consistency, files, CLI. No timing assertions."""

import json

import numpy as np
import pytest

from navit_deploy.bench.anyres import anyres_tokens
from navit_deploy.bench.suite import (
    BenchConfig,
    bench_summary,
    evaluate_targets,
    paired_ratio,
    run_bench,
    summary_markdown,
)
from navit_deploy.bench.measure import Plan
from navit_deploy.bench.workloads import make_workload
from navit_deploy.packing import Packer

REQUIRED = ("strategy", "backend", "precision", "images_per_s", "workload", "padding_fraction",
            "computed_tokens_per_image", "p50_ms", "p99_ms", "host_fraction")


@pytest.fixture(scope="module")
def report(tiny_model_dir, exported, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = BenchConfig(model=str(tiny_model_dir), onnx=exported("dense"), out=out, workloads=("mixed",), n=4,
                      repeats=1, warmup=0, backends=("ort-cpu", "torch-segment", "ort-cpu-int8", "tensorrt"),
                      stream_frames=3, stream_fps=200.0, breakdown_images=2)
    return run_bench(cfg, log=lambda s: None), out


def _row(rows, strategy, backend_key="ort-cpu"):
    return next(r for r in rows if r["strategy"] == strategy and r["backend_key"] == backend_key)


def test_rows_have_the_schema(report):
    rep, _ = report
    rows = rep["rows"]
    strategies = {"packed", "packed-fixed", "padded", "square", "single", "anyres"}
    for key in ("ort-cpu", "torch-segment"):
        assert {r["strategy"] for r in rows if r["backend_key"] == key} == strategies
    for r in rows:
        assert all(k in r for k in REQUIRED), set(REQUIRED) - set(r)
        assert r["workload"] == "mixed" and r["precision"] == "fp32"
        if r["measured"]:
            assert r["images_per_s"] > 0 and 0 <= r["padding_fraction"] < 1 and 0 < r["host_fraction"] < 1
            assert r["p50_ms"] <= r["p99_ms"] and r["failed"] == 0
            assert r["executed_gflop_per_image"] >= r["useful_gflop_per_image"] * 0.999
            assert r["peak_gemm_gflop_per_s"] > 0 and r["peak_rss_mb"] > 0
            # The front end did work on another thread while the model ran: CPU share and CPU ms are recorded.
            assert 0 < r["host_cpu_fraction"] <= 1 and r["frontend_cpu_ms_per_image"] > 0


def test_rows_are_consistent(report):
    rep, _ = report
    rows = rep["rows"]
    packed, padded, single = (_row(rows, s) for s in ("packed", "padded", "single"))
    assert padded["padding_fraction"] > packed["padding_fraction"]
    assert padded["computed_tokens_per_image"] == 256  # every image padded to the mixed budget
    assert packed["valid_tokens_per_image"] == single["valid_tokens_per_image"] == padded["valid_tokens_per_image"]
    assert single["padding_fraction"] == 0 and single["packs"] == 4
    fixed = _row(rows, "packed-fixed")
    assert fixed["mean_pack_len"] == 512  # the fixture's exported pack length
    assert fixed["attention_waste"] > packed["attention_waste"] >= 1.0
    assert _row(rows, "packed", "torch-segment")["attention_waste"] == 1.0
    square = _row(rows, "square")
    assert square["computed_tokens_per_image"] == 16 * 16  # g*g <= 256
    anyres = _row(rows, "anyres")
    sizes = make_workload("mixed", 4).sizes
    expected = sum(anyres_tokens(w, h, 16, 16).tokens for w, h in sizes) / len(sizes)
    assert anyres["computed_tokens_per_image"] == pytest.approx(expected)
    assert anyres["estimated"] and anyres["images_per_s"] == pytest.approx(
        square["computed_tokens_per_s"] / expected, rel=1e-3)
    # The default strategy is timed again without the front end; the others are not.
    for key in ("ort-cpu", "torch-segment"):
        row = _row(rows, "packed", key)
        assert len(row["model_images_per_s_runs"]) == row["repeats"] and row["model_images_per_s"] > 0
        assert _row(rows, "padded", key)["model_images_per_s"] is None


def test_targets_skips_streaming_breakdown(report):
    rep, _ = report
    (t,) = rep["targets"]
    assert t["workload"] == "mixed" and len(t["checks"]) == 4
    assert {c["passed"] for c in t["checks"]} <= {True, False}
    assert {s["key"] for s in rep["skipped"] if "key" in s} == {"ort-cpu-int8", "tensorrt"}
    assert all(s["reason"] for s in rep["skipped"])
    s = rep["streaming"]
    assert s["frames"] == 3 and len(s["latency_ms"]) == 3 and s["padding_fraction"] == 0.0
    b = rep["host_breakdown"]["mixed"]
    assert b["images"] == 2 and b["dominant"] in b["ms_per_image"]


def test_files_written(report):
    rep, out = report
    on_disk = json.loads((out / "bench.json").read_text())
    assert len(on_disk["rows"]) == len(rep["rows"])
    assert set(rep["plots"]) == {"latency.png", "throughput_vs_pack_len.png", "packs.png"}
    for name in rep["plots"]:
        assert (out / name).stat().st_size > 1000
    md = (out / "bench.md").read_text()
    assert "| packed |" in md and "Targets" in md


def test_evaluate_targets_on_synthetic_rows():
    def row(strategy, ips, tokens, pad=0.0, host=0.05):
        return {"workload": "w", "backend_key": "ort-cpu", "strategy": strategy, "images_per_s": ips,
                "computed_tokens_per_image": tokens, "padding_fraction": pad, "host_fraction": host, "measured": True}

    rows = [row("packed", 10.0, 100), row("padded", 5.0, 200, 0.5), row("square", 50.0, 64), row("single", 9.0, 100)]
    (t,) = evaluate_targets(rows)
    assert t["passed"] and len(t["checks"]) == 4  # square is faster but set aside
    rows[1]["images_per_s"] = 6.0  # 10/6 = 1.67x speed for 2x tokens: < 0.9 * 2
    assert not evaluate_targets(rows)[0]["checks"][1]["passed"]
    rows[3]["images_per_s"] = 11.0
    assert not evaluate_targets(rows)[0]["checks"][0]["passed"]
    rows[0]["packs_signature"] = rows[3]["packs_signature"] = "abc"  # the same packs: a difference is noise
    first = evaluate_targets(rows)[0]["checks"][0]
    assert first["passed"] and "same packs as single" in first["value"]


def test_paired_ratio_compares_round_by_round():
    # Round 2 ran while the machine was slow for both: its drift cancels in the per-round ratios.
    a = {"images_per_s": 10.0, "images_per_s_runs": [10.0, 5.0, 11.0]}
    b = {"images_per_s": 10.5, "images_per_s_runs": [9.0, 4.0, 10.5]}
    med, lo, hi = paired_ratio(a, b)
    assert med == pytest.approx(10.0 / 9.0) and lo == pytest.approx(11.0 / 10.5) and hi == pytest.approx(1.25)
    assert paired_ratio({"images_per_s": 6.0}, {"images_per_s": 3.0}) == (2.0, 2.0, 2.0)  # no rounds: plain ratio


@pytest.mark.parametrize("rounds, expect", [
    ([1.00, 1.00, 1.00, 1.00, 1.00], "pass"),
    ([0.95, 1.02, 0.97, 0.99, 1.05], "tie"),  # lower median, but it won rounds: not shown slower
    ([0.95, 0.99, 0.97, 0.99, 0.98], "MISS"),  # lost every interleaved round
    ([0.95, 1.02, 0.97], "MISS"),  # too few rounds to call anything a tie
])
def test_default_vs_others_tie_needs_a_won_round(rounds, expect):
    from navit_deploy.bench.report import verdict

    def row(strategy, runs, tokens):
        return {"workload": "w", "backend_key": "ort-cpu", "strategy": strategy, "images_per_s": float(np.median(runs)),
                "images_per_s_runs": runs, "repeats": len(runs), "computed_tokens_per_image": tokens,
                "padding_fraction": 0.0, "host_fraction": 0.05, "measured": True}

    rows = [row("packed", [10.0 * r for r in rounds], 100), row("single", [10.0] * len(rounds), 101)]
    first = evaluate_targets(rows)[0]["checks"][0]
    assert verdict(first) == expect
    assert first["ratio"] == pytest.approx(float(np.median(rounds)), abs=1e-3)


@pytest.mark.parametrize("workload, int8_ips, int8_model, passed", [
    ("mixed", 16.0, None, True), ("mixed", 14.0, None, False), ("camera", 14.0, None, None),
    # With model-only rates the target is on them; end to end (front end included) is reported beside it.
    ("mixed", 12.0, [30.0, 33.0, 29.0], True), ("mixed", 16.0, [28.0, 29.0, 30.0], False),
    ("camera", 12.0, [30.0, 33.0, 29.0], None)])
def test_int8_speed_is_a_target_on_the_mixed_workload(workload, int8_ips, int8_model, passed):
    def row(backend_key, strategy, ips, model_runs=None):
        return {"workload": workload, "backend_key": backend_key, "strategy": strategy, "images_per_s": ips,
                "computed_tokens_per_image": 100, "padding_fraction": 0.0, "host_fraction": 0.05, "measured": True,
                "model_images_per_s": float(np.median(model_runs)) if model_runs else None,
                "model_images_per_s_runs": model_runs}

    fp32_model = [20.0, 20.0, 20.0] if int8_model else None
    rows = [row("ort-cpu", "packed", 10.0, fp32_model), row("ort-cpu-int8", "packed", int8_ips, int8_model),
            row("ort-cpu-int8", "padded", 99.0)]
    (t,) = evaluate_targets(rows)
    found = [c for c in t["checks"] + t["info"] if c["target"].startswith("INT8/FP32")]
    model = [c for c in found if "model images/s" in c["target"]]
    e2e = [c for c in found if "end to end" in c["target"]]
    assert len(e2e) == 1 and e2e[0]["ratio"] == pytest.approx(int8_ips / 10.0)
    target = e2e[0]
    if int8_model:
        assert len(model) == 1 and e2e[0] in t["info"]
        assert model[0]["ratio"] == pytest.approx(float(np.median([x / 20.0 for x in int8_model])))
        target = model[0]
    else:
        assert not model
    if passed is None:  # reported, not a target, outside the mixed workload
        assert target in t["info"]
    else:
        assert target in t["checks"] and target["passed"] is passed and t["passed"] is passed


class _SlowRunner:
    """Wraps a runner; every call takes at least ``hold_s`` (a model of known speed)."""

    def __init__(self, inner, hold_s: float, concurrency: int) -> None:
        self.inner, self.hold_s, self.concurrency, self.calls = inner, hold_s, concurrency, 0

    def __enter__(self):
        self.inner.activate()
        return self

    def __exit__(self, *exc):
        return None

    def activate(self):
        return self.inner.activate()

    def infer(self, pack):
        import time

        self.calls += 1
        time.sleep(self.hold_s)
        return self.inner.infer(pack)


@pytest.mark.parametrize("concurrency", [1, 2])
def test_model_only_rate_times_the_packs_not_the_front_end(exported, concurrency):
    from PIL import Image

    from navit_deploy.bench.measure import measure_model_only
    from navit_deploy.runtime.onnx_runner import OnnxRunner

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (64, 48 + 8 * i, 3), dtype=np.uint8)) for i in range(6)]
    imgs.append(b"not an image")  # a bad input is left out of the packs and of the rate
    inner = OnnxRunner(exported("dense"), concurrency=1)
    slow = _SlowRunner(inner, 0.05, concurrency)
    fe = inner.artifact.frontend
    plan = Plan("packed", fe, Packer(256, 1), fe.max_patches)
    (mo,) = measure_model_only([(slow, plan)], imgs, repeats=2, warmup=0)
    rates = mo.rates
    assert len(rates) == 2 and slow.calls == 2 * 6 and (mo.images, mo.packs) == (6, 6)
    ceiling = 6 / (6 * 0.05 / concurrency)  # 6 packs of >= 50 ms each, `concurrency` at a time
    assert all(0.4 * ceiling < r <= ceiling for r in rates), (rates, ceiling)


def test_cli_writes_json_and_pngs(tiny_model_dir, exported, tmp_path, capsys):
    from navit_deploy.cli import main

    out = tmp_path / "b"
    rc = main(["bench", "--model", str(tiny_model_dir), "--onnx", str(exported("dense")), "--out", str(out),
               "--workloads", "thumbnails", "-n", "3", "--repeats", "1", "--warmup", "0", "--backends", "ort-cpu",
               "--strategies", "packed,padded,single", "--stream-frames", "2", "--stream-fps", "200",
               "--sweep-pack-len", "64,128"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "packed" in text and "bench.json" in text
    rep = json.loads((out / "bench.json").read_text())
    assert {r["strategy"] for r in rep["rows"]} == {"packed", "padded", "single"}
    assert {r["config"] for r in rep["sweep"]} == {"per-image", "L=64 padded", "L=64 cut", "L=128 padded", "L=128 cut"}
    assert rep["sweep_best"][0]["best"] in {r["config"] for r in rep["sweep"]}
    for name in ("latency.png", "throughput_vs_pack_len.png", "packs.png"):
        assert (out / name).is_file()
    assert main(["bench", "--model", str(tiny_model_dir), "--strategies", "nope", "--out", str(out)]) == 2


def test_bench_summary_for_deploy(tiny_model_dir, exported):
    s = bench_summary(str(tiny_model_dir), exported("dense"), quick=True, n=3)
    assert s["workload"].startswith("mixed")
    assert {r["backend_key"] for r in s["rows"]} == {"ort-cpu", "torch-dense", "torch-segment"}
    with_mha = bench_summary(str(tiny_model_dir), exported("dense"), quick=True, n=3, onnx_mha=exported("ort-mha"))
    mha = [r for r in with_mha["rows"] if r["backend_key"] == "ort-cpu-mha"]
    assert mha and {r["lowering"] for r in mha} == {"ort-mha"} and all(r["attention_waste"] == 1.0 for r in mha)
    assert all("ms_per_image" in r and "padding_fraction" in r for r in s["rows"])
    md = summary_markdown(s)
    assert md.startswith("## Benchmark") and "| packed |" in md


def test_ort_mha_rows_run_the_ort_mha_export(tiny_model_dir, exported, tmp_path):
    """``ort-cpu-mha`` rows: the given ort-mha export, or one exported into OUT; without one the backend is skipped."""
    from navit_deploy.bench.backends import resolve_backends

    cfg = BenchConfig(model=str(tiny_model_dir), onnx=exported("dense"), out=tmp_path, workloads=("thumbnails",),
                      n=3, repeats=1, warmup=0, strategies=("packed",), backends=("ort-cpu", "ort-cpu-mha"),
                      stream_frames=0, plots=False)
    rep = run_bench(cfg, log=lambda s: None)
    rows = {r["backend_key"]: r for r in rep["rows"]}
    assert rows["ort-cpu-mha"]["lowering"] == "ort-mha" and rows["ort-cpu"]["lowering"] == "dense"
    assert (tmp_path / "navit.ort-mha.onnx").is_file() and rep["meta"]["onnx_mha"].endswith("navit.ort-mha.onnx")
    got, skipped = resolve_backends(["ort-cpu-mha"], str(tiny_model_dir), exported("dense"))
    assert not got and "no ort-mha export given" in skipped[0].reason
