"""VLM towers in the bench (no model needed): workloads keep the processor's pixel rule, plans are sized in patch
tokens, and rows and tables report visual tokens after the patch merger (patch tokens / merge_size^2)."""

from __future__ import annotations

from navit_deploy.bench.measure import make_plan, workload_frontend
from navit_deploy.bench.report import format_table, rows_markdown
from navit_deploy.bench.suite import merged_tokens_per_image
from navit_deploy.bench.workloads import make_workload
from navit_deploy.frontend import FrontendConfig, target_size

QWEN = FrontendConfig(patch_size=14, budget="pixels", merge_size=2, temporal_patch_size=2, min_pixels=56 * 56,
                      max_pixels=28 * 28 * 1280, max_grid=1 << 14, resample="bicubic", reducing_gap=None,
                      jpeg_draft=False, to_rgb="convert")


def test_workload_budget_becomes_max_pixels_in_whole_merge_blocks():
    fe = workload_frontend(QWEN, 256, True)
    assert fe.budget == "pixels" and fe.merge_size == 2 and fe.max_pixels == 256 * 14 * 14
    assert fe.max_tokens_per_image >= 256
    for w, h in make_workload("mixed", 40, 0).sizes:
        tw, th = target_size(w, h, fe)
        assert tw % 28 == 0 and th % 28 == 0 and tw * th // 196 <= fe.max_tokens_per_image
    # Models without a merger are unchanged: a NaFlex-style max_patches budget.
    assert workload_frontend(FrontendConfig(), 64, False).max_patches == 64


def test_plans_are_sized_in_patch_tokens_and_squares_in_whole_blocks():
    fe = workload_frontend(QWEN, 200, True)
    assert make_plan("padded", fe, "dense", "cpu", 1024, 64).budget == 200
    square = make_plan("square", fe, "dense", "cpu", 1024, 64)
    g = square.frontend.square_grid
    assert g % 2 == 0 and g * g <= 200
    odd = make_plan("square", workload_frontend(QWEN, 169, True), "dense", "cpu", 1024, 64)  # isqrt(169) = 13
    assert odd.frontend.square_grid == 12


def test_merged_tokens_per_image():
    assert merged_tokens_per_image(1564.0, QWEN) == 391.0
    assert merged_tokens_per_image(100.0, FrontendConfig()) is None


def _rows(merged):
    row = {"workload": "mixed", "strategy": "packed", "backend": "onnxruntime", "precision": "fp32",
           "lowering": "dense", "images_per_s": 10.0, "computed_tokens_per_image": 1564.0,
           "merged_tokens_per_image": merged}
    return [row]


def test_tables_show_merged_tokens_only_for_models_with_a_merger():
    assert "merged tok/img" in format_table(_rows(391.0)) and "391" in format_table(_rows(391.0))
    assert "merged tok/img" in rows_markdown(_rows(391.0)).splitlines()[0]
    assert "merged tok/img" not in format_table(_rows(None))
    assert "merged tok/img" not in rows_markdown(_rows(None)).splitlines()[0]


def test_max_pixels_sets_a_towers_pixel_budget_exactly():
    """``navit bench --max-pixels 1048576``: every workload's front end at that pixel count (``--max-patches``
    can only give multiples of patch^2, 1048404 for 5349), and a typed error for a model without a pixel budget."""
    import pytest

    from navit_deploy.bench.suite import BenchConfig, _workloads
    from navit_deploy.errors import ConfigError

    wls = _workloads(BenchConfig(workloads=("mixed", "documents"), n=4, max_pixels=1024 * 1024), QWEN)
    assert {workload_frontend(QWEN, wl.max_patches, wl.upscale, wl.max_pixels).max_pixels for wl in wls} == {1048576}
    assert {wl.max_patches for wl in wls} == {1048576 // 196}
    with pytest.raises(ConfigError, match="pixel budget"):
        _workloads(BenchConfig(n=4, max_pixels=1024 * 1024), FrontendConfig())
    with pytest.raises(ConfigError, match="not both"):
        _workloads(BenchConfig(n=4, max_pixels=1024 * 1024, max_patches=64), QWEN)
