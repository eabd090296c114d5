"""What report.md and bench.md say about their numbers: units, what 'below' meant, image counts, load, plots."""

from navit_deploy.bench.report import info_verdict, rows_markdown, targets_markdown

ROW = {"workload": "mixed", "strategy": "packed", "backend": "pytorch-eager", "backend_key": "torch-dense",
       "precision": "fp32", "lowering": "dense", "images_per_s": 7.4, "model_images_per_s": 7.2, "measured": True,
       "images_per_pack": 3.5, "round_spread": 3.4, "p50_ms": 2600.0, "p99_ms": 3200.0}


def test_rows_explain_latency_and_flag_unsteady_rounds():
    md = rows_markdown([ROW, {**ROW, "strategy": "padded", "round_spread": 1.1}])
    assert "7.40†" in md and md.count("†") == 2  # the shaky row's cell, and its footnote
    assert "packed torch fp32 dense 3.4x" in md
    assert "*p50 ms* / *p99 ms*: per image" in md and "one model call" in md and "*img/pack*" in md
    assert "same packs as its end-to-end pass" in md


def test_info_rows_say_which_goal_they_miss():
    info = {"target": "front end share of the process's CPU time (overlapped work)", "value": "28%",
            "passed": False, "goal": "< 10%"}
    md = targets_markdown([{"workload": "mixed", "checks": [], "info": [info]}])
    assert "below" not in md and "misses < 10%" in md and "not targets themselves" in md
    assert info_verdict({**info, "passed": True}) == "meets < 10%"


def _deploy_report(busy: bool) -> dict:
    row = {"lowering": "trt-plugin", "mode": "reference kernels (CPU)", "check": "pytorch", "reference": "PyTorch",
           "note": None, "passed": True, "failures": [], "images": 15, "max_abs_embedding_max": 2.9e-6,
           "max_abs_logit_max": 1.2e-6, "cosine_min": 1.0, "cosine_mean": 1.0, "top1_agreement": 1.0,
           "near_tie_flips": 0, "has_logits": True}
    quant = {"precision": "int8", "file": "q.onnx", "mb": 6.8, "fp32_top1": 0.6, "quant_top1": 0.59,
             "top1_delta_points": -1.0, "top1_agreement": 0.99, "cosine_min": 0.999, "max_abs_logit_diff": 0.07,
             "seconds": 6.0, "images": 300, "has_labels": True}
    load = {"cpu_count": 2, "load_before": [3.0, 2.0, 1.0], "load_after": [4.0, 3.0, 2.0],
            "others_cpu_share": 0.6 if busy else 0.01, "busy": busy}
    bench = {"workload": "mixed (24 images)", "rows": [], "targets": [], "skipped": [],
             "meta": {"peak_gemm_gflop_per_s": 190.0, "load": load}, "plots": ["latency.png", "packs.png"],
             "out": "/tmp/x/bench"}
    return {"model": "builtin", "weights_sha256": "0" * 64, "machine": "x", "processor": "y", "passed": True,
            "exports": [], "parity": [row], "quantization": [quant], "quantization_images": 300, "compile": {},
            "bench": bench, "stage_seconds": {"export dense": 5.0, "benchmark": 60.0}}


def test_deploy_report_explains_its_numbers():
    from navit_deploy.deploy import render_markdown

    md = render_markdown(_deploy_report(busy=True))
    assert "## Quantization (300 held-out images" in md and "1,000" in md
    assert "*Reference kernels (CPU)*: trt-plugin" in md and "agree" in md and "numpy reference kernels" in md
    assert "[latency.png](bench/latency.png)" in md and "![packs.png](bench/packs.png)" in md
    assert "Warning: the machine was busy" in md and "other processes used 60% of the CPUs" in md
    assert "## Time per stage (65 s in all)" in md and "| benchmark | 60 |" in md
    assert "Warning" not in render_markdown(_deploy_report(busy=False))
