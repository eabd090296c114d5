"""``navit bench``: strategies x backends x workloads, a pack-length sweep, camera streaming, targets.

:func:`run_bench` does the whole job and returns the JSON report; :func:`bench_summary` is the short
version ``navit deploy`` includes.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from navit_deploy.bench.backends import DEFAULT_BACKENDS, Backend, resolve_backends
from navit_deploy.bench.machine_load import LoadMonitor
from navit_deploy.bench.flops import ModelShape, attention_kind, gemm_peak_gflops, model_flops, useful_flops
from navit_deploy.bench.measure import (
    STRATEGIES,
    Measurement,
    Plan,
    anyres_counts,
    host_breakdown,
    make_plan,
    measure_interleaved,
    measure_plans,
    percentiles,
    stream_camera,
    workload_frontend,
)
from navit_deploy.packing.policy import BucketedPacker
from navit_deploy.bench.workloads import (
    WORKLOADS,
    Workload,
    camera_frames,
    folder_workload,
    make_workload,
    workload_sources,
)
from navit_deploy.console import Progress
from navit_deploy.frontend import FrontendConfig
from navit_deploy.packing import Packer

DEFAULT_SWEEP = (256, 512, 1024, 2048)
TARGET_BACKEND = "ort-cpu"


@dataclass
class BenchConfig:
    """What to run. Paths may be None: the dense ONNX model is exported on the fly when ``onnx`` is None."""

    model: str = "builtin"
    onnx: Path | None = None
    onnx_int8: Path | None = None
    onnx_packed: Path | None = None
    onnx_mha: Path | None = None  # the ort-mha export of the ort-cpu-mha rows (exported on the fly when None)
    engine: Path | None = None
    out: Path | None = None
    workloads: tuple[str, ...] = WORKLOADS
    images: str | None = None
    max_patches: int | None = None
    max_pixels: int | None = None  # a VLM tower's pixel budget (Qwen-VL), exactly
    upscale: bool | None = None
    n: int = 32
    strategies: tuple[str, ...] = STRATEGIES
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    repeats: int = 3
    warmup: int = 1
    threads: int | None = None
    workers: int | None = None
    input_format: str = "jpeg"
    sweep_pack_len: tuple[int, ...] = ()
    sweep_workloads: tuple[str, ...] | None = None
    sweep_backends: tuple[str, ...] = (TARGET_BACKEND,)
    stream_fps: float = 30.0
    stream_frames: int = 60
    pack_len: int | None = None
    bucket: int | None = None
    seed: int = 0
    plots: bool = True
    breakdown_images: int = 6
    peers: tuple[str, ...] = ()  # "transformers": the source library's own path on the same weights and images


def _model_config(model: str):
    from navit_deploy.model.weights import model_config

    return model_config(model)


def _ensure_onnx(cfg: BenchConfig, workdir: Path, log: Callable[[str], None], lowering: str = "dense") -> Path:
    """The model of the ``lowering`` rows: the one given (``cfg.onnx`` / ``cfg.onnx_mha``), else exported into
    ``workdir`` once."""
    given = cfg.onnx if lowering == "dense" else cfg.onnx_mha
    if given is not None:
        return Path(given)
    from navit_deploy.export.onnx_export import export_onnx
    from navit_deploy.model.weights import load_model, model_digest

    out = workdir / f"navit.{lowering}.onnx"
    if not out.exists():
        log(f"exporting {cfg.model} ({lowering} lowering) -> {out}")
        export_onnx(load_model(cfg.model), out, lowering=lowering, weights_sha256=model_digest(cfg.model))
    return out


def _pixel_budget(cfg: BenchConfig, base: FrontendConfig) -> int | None:
    """``--max-pixels`` for a model with a pixel budget; a typed error for one without."""
    if cfg.max_pixels is None:
        return None
    from navit_deploy.errors import ConfigError

    if base.budget != "pixels":
        raise ConfigError(f"--max-pixels is for models with a pixel budget (Qwen-VL); this model's budget is "
                          f"{base.budget!r}: use --max-patches")
    if cfg.max_patches is not None:
        raise ConfigError("give --max-pixels or --max-patches, not both")
    return cfg.max_pixels


def _workloads(cfg: BenchConfig, base: FrontendConfig) -> list[Workload]:
    pixels = _pixel_budget(cfg, base)
    max_patches = pixels // base.patch_size ** 2 if pixels else cfg.max_patches  # nominal, for plans and labels
    if cfg.images:
        wl = folder_workload(cfg.images, max_patches or base.max_patches,
                             base.upscale if cfg.upscale is None else cfg.upscale, limit=cfg.n or None)
        return [replace(wl, max_pixels=pixels)]
    out = []
    for name in cfg.workloads:
        wl = make_workload(name, cfg.n, cfg.seed)
        if max_patches:
            wl = Workload(wl.name, wl.sizes, max_patches, wl.upscale if cfg.upscale is None else cfg.upscale,
                          wl.description, max_pixels=pixels)
        out.append(wl)
    return out


# ------------------------------------------------------------------------------------------------ rows

def _row(m: Measurement, b: Backend, wl: Workload, shape: ModelShape, peak: float,
         model_rates: Sequence[float] | None = None) -> dict[str, Any]:
    run = m.median_run()
    n_good = max(1, len(run.request_ms))
    computed = sum(pl for pl, _ in run.packs)
    valid = sum(sum(s) for _, s in run.packs)
    kind = attention_kind(b.lowering)
    executed = sum(model_flops(shape, s, pl, kind)["total"] for pl, s in run.packs)
    useful = sum(useful_flops(shape, s) for _, s in run.packs)
    ideal_attn = sum(n * n for _, s in run.packs for n in s)
    exec_attn = sum(pl * pl for pl, _ in run.packs) if kind == "dense" else ideal_attn
    req = [x for r in m.runs for x in r.request_ms]
    packs_ms = [x for r in m.runs for x in r.pack_ms]
    p50, p95, p99 = percentiles(req)
    k50, k95, k99 = percentiles(packs_ms)
    model_rate = executed / run.model_s / 1e9 if run.model_s > 0 else None
    return {
        "workload": wl.name, "strategy": m.plan.strategy, "backend": b.backend, "precision": b.precision,
        "lowering": b.lowering, "backend_key": b.key, "threads": b.threads, "measured": True, "estimated": False,
        "images": len(wl.sizes), "failed": run.failed, "budget": m.plan.budget, "packing": m.plan.packing,
        "images_per_s": round(n_good / run.wall_s, 3),
        "ms_per_image": round(1000 * run.wall_s / n_good, 3),
        "tokens_per_s": round(valid / run.wall_s, 1),
        "computed_tokens_per_s": round(computed / run.wall_s, 1),
        "padding_fraction": round(1 - valid / computed, 5) if computed else 0.0,
        "computed_tokens_per_image": round(computed / n_good, 2),
        "valid_tokens_per_image": round(valid / n_good, 2),
        "merged_tokens_per_image": merged_tokens_per_image(valid / n_good, m.plan.frontend),
        "attention_waste": round(exec_attn / ideal_attn, 3) if ideal_attn else 1.0,
        "packs": len(run.packs), "mean_pack_len": round(computed / max(1, len(run.packs)), 1),
        "images_per_pack": round(valid_images(run.packs) / max(1, len(run.packs)), 2),
        "p50_ms": _r(p50), "p95_ms": _r(p95), "p99_ms": _r(p99),
        "pack_p50_ms": _r(k50), "pack_p95_ms": _r(k95), "pack_p99_ms": _r(k99),
        "host_fraction": round(run.host_s / run.wall_s, 4),
        "host_ms_per_image": round(1000 * run.host_s / n_good, 3),
        "host_cpu_fraction": round(run.host_cpu_fraction, 4),
        "frontend_cpu_ms_per_image": round(1000 * run.frontend_cpu_s / n_good, 3),
        "prepare_ms_per_image": round(1000 * run.prepare_s / n_good, 3),
        "pack_ms_per_image": round(1000 * run.pack_s / n_good, 4),
        "model_ms_per_image": round(1000 * run.model_s / n_good, 3),
        "executed_gflop_per_image": round(executed / n_good / 1e9, 4),
        "useful_gflop_per_image": round(useful / n_good / 1e9, 4),
        "model_gflop_per_s": _r(model_rate, 2),
        "useful_gflop_per_s": round(useful / run.wall_s / 1e9, 2),
        "peak_gemm_gflop_per_s": round(peak, 1),
        # Against the float32 GEMM peak: meaningful for fp32 rows only (INT8/FP16 GEMMs have other peaks).
        "fraction_of_peak": round(model_rate / peak, 4) if model_rate and peak and b.precision == "fp32" else None,
        "peak_rss_mb": round(m.peak_rss_mb, 1), "repeats": len(m.runs),
        "images_per_s_range": [round(n_good / max(r.wall_s for r in m.runs), 3),
                               round(n_good / min(r.wall_s for r in m.runs), 3)],
        # One per interleaved round, in order: round k of every row of a workload ran back to back.
        "images_per_s_runs": [round(n_good / r.wall_s, 3) for r in m.runs],
        # Fastest / slowest round: above UNSTABLE_SPREAD the machine's load changed during the row.
        "round_spread": round(max(r.wall_s for r in m.runs) / min(r.wall_s for r in m.runs), 3),
        "packs_signature": _signature(run.packs),
        "latency_samples_ms": [round(x, 3) for x in packs_ms],
        "concurrency": int(getattr(b.runner(), "concurrency", 1)),
        # The same packs without the front end, one value per interleaved round (default strategy only).
        "model_images_per_s": round(float(np.median(model_rates)), 3) if model_rates else None,
        "model_images_per_s_runs": [round(x, 3) for x in model_rates] if model_rates else None,
    }


def merged_tokens_per_image(patch_tokens: float, frontend: FrontendConfig) -> float | None:
    """Visual tokens per image after the model's patch merger (patch tokens / merge_size**2: what an image
    costs in a VLM's prompt); None for a model without a merger."""
    if frontend.merge_size <= 1:
        return None
    return round(patch_tokens / frontend.tokens_per_merged_token, 2)


def valid_images(packs: Sequence[tuple[int, list[int]]]) -> int:
    """Images in ``(pack_len, seqlens)`` packs."""
    return sum(len(s) for _, s in packs)


def _signature(packs: Sequence[tuple[int, list[int]]]) -> str:
    """Identifies the work a run executed (pack lengths and images per pack, order-free)."""
    key = json.dumps(sorted([pl, sorted(s)] for pl, s in packs))
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def _anyres_row(wl: Workload, plan: Plan, b: Backend, shape: ModelShape, square: dict[str, Any] | None,
                peak: float) -> dict[str, Any]:
    counts = [c for c in anyres_counts(wl.sizes, plan.frontend) if c > 0]
    g = plan.frontend.square_grid
    per_image = float(np.mean(counts)) if counts else 0.0
    flops = [model_flops(shape, [g * g] * (c // (g * g)), None, "varlen")["total"] for c in counts]
    est = square["computed_tokens_per_s"] / per_image if square and per_image else None
    return {
        "workload": wl.name, "strategy": "anyres", "backend": b.backend, "precision": b.precision,
        "lowering": b.lowering, "backend_key": b.key, "threads": b.threads, "measured": False, "estimated": True,
        "images": len(wl.sizes), "failed": len(wl.sizes) - len(counts), "budget": plan.budget,
        "packing": plan.packing, "images_per_s": _r(est), "ms_per_image": _r(1000 / est if est else None),
        "tokens_per_s": None, "computed_tokens_per_s": square["computed_tokens_per_s"] if square else None,
        "padding_fraction": 0.0, "computed_tokens_per_image": round(per_image, 2),
        "valid_tokens_per_image": round(per_image, 2),
        "merged_tokens_per_image": merged_tokens_per_image(per_image, plan.frontend), "tiles_per_image": round(per_image / (g * g) - 1, 3) if g else None,
        "attention_waste": 1.0, "packs": None, "mean_pack_len": g * g,
        "p50_ms": None, "p95_ms": None, "p99_ms": None, "pack_p50_ms": None, "pack_p95_ms": None, "pack_p99_ms": None,
        "host_fraction": None, "executed_gflop_per_image": round(float(np.mean(flops)) / 1e9, 4) if flops else None,
        "useful_gflop_per_image": round(float(np.mean(flops)) / 1e9, 4) if flops else None,
        "model_gflop_per_s": None, "useful_gflop_per_s": None, "peak_gemm_gflop_per_s": round(peak, 1),
        "fraction_of_peak": None, "peak_rss_mb": None, "repeats": 0,
        "note": "token count only; images/s = square strategy's computed tokens/s / AnyRes tokens per image",
    }


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


# ------------------------------------------------------------------------------------------- targets

INT8_BACKEND = "ort-cpu-int8"
INT8_TARGET = 1.5  # INT8 vs FP32 images/s on ONNX Runtime CPU, mixed workload
MIN_ROUNDS_FOR_TIE = 5  # interleaved rounds needed before "lost every round" means something


def paired_ratio(a: dict[str, Any], b: dict[str, Any], key: str = "images_per_s") -> tuple[float, float, float]:
    """``a``'s images/s over ``b``'s: the median over interleaved rounds (round k of both ran back to back,
    so drift of a shared machine cancels), with the smallest and largest round. Rows without per-round
    data (or with different round counts) compare their reported images/s. ``key="model_images_per_s"``
    compares the model-only rates."""
    ra, rb = a.get(f"{key}_runs"), b.get(f"{key}_runs")
    if ra and rb and len(ra) == len(rb) and all(y > 0 for y in rb):
        q = [x / y for x, y in zip(ra, rb)]
        return float(np.median(q)), min(q), max(q)
    r = a[key] / b[key]
    return r, r, r


def _rounds(r: tuple[float, float, float]) -> str:
    return f"paired median {r[0]:.3f}x, rounds {r[1]:.2f}-{r[2]:.2f}x"


def evaluate_targets(rows: Sequence[dict[str, Any]], backend_key: str = TARGET_BACKEND) -> list[dict[str, Any]]:
    """The targets per workload, on ``backend_key`` (ONNX Runtime CPU fp32), from measured rows: the
    benchmark issue's (default >= other strategies, packed vs padded, padding, host share) and, where an
    INT8 row was measured beside it, the INT8/FP32 speed (a target on the mixed workload)."""
    out = []
    workloads = sorted({r["workload"] for r in rows if r["backend_key"] == backend_key}, key=str)
    for wl in workloads:
        by = {r["strategy"]: r for r in rows if r["workload"] == wl and r["backend_key"] == backend_key}
        packed = by.get("packed")
        if packed is None:
            continue
        others = {s: r for s, r in by.items() if s not in ("packed", "square") and r["measured"]}
        # A strategy that executes exactly the packs the default executes (e.g. one ~budget-sized camera
        # frame per pack either way) does the same work: their difference is noise, not a miss.
        sig = packed.get("packs_signature")
        same = sorted(s for s, r in others.items() if sig and r.get("packs_signature") == sig)
        differ = {s: r for s, r in others.items() if s not in same}
        checks: list[dict[str, Any]] = []
        info: list[dict[str, Any]] = []  # reported, not targets
        if differ:
            ratios = {s: paired_ratio(packed, r) for s, r in differ.items()}
            worst = min(ratios, key=lambda s: ratios[s][0])
            med, _, best_round = ratios[worst]
            note = f"; same packs as {', '.join(same)}" if same else ""
            # Slower only if it lost every interleaved round: with 5 rounds, two equally fast
            # configurations do that 1 time in 32. A lower median with a round won is a tie.
            tie = med < 1.0 and best_round >= 1.0 and (packed.get("repeats") or 0) >= MIN_ROUNDS_FOR_TIE
            checks.append({"target": "default packed >= every other strategy (square aside), images/s",
                           "value": f"{packed['images_per_s']:.2f} vs {worst} {differ[worst]['images_per_s']:.2f} "
                                    f"({_rounds(ratios[worst])}{note})"
                                    + ("; a tie: the default won at least one round" if tie else ""),
                           "ratio": round(med, 3), "passed": med >= 1.0 or tie, "tie": tie})
        elif same:
            checks.append({"target": "default packed >= every other strategy (square aside), images/s",
                           "value": f"{packed['images_per_s']:.2f}; {', '.join(same)} run the same packs",
                           "ratio": 1.0, "passed": True})
        padded = by.get("padded")
        if padded is not None:
            pr = paired_ratio(packed, padded)
            speed = pr[0]
            tokens = padded["computed_tokens_per_image"] / packed["computed_tokens_per_image"]
            checks.append({"target": "packed/padded images/s >= 0.9 x padded/packed computed tokens",
                           "value": f"{speed:.2f}x speed ({_rounds(pr)}) vs {tokens:.2f}x tokens",
                           "ratio": round(speed / tokens, 3), "passed": speed >= 0.9 * tokens})
            if packed.get("model_ms_per_image") and padded.get("model_ms_per_image"):
                model = padded["model_ms_per_image"] / packed["model_ms_per_image"]
                info.append({"target": "model time only: padded/packed ms per image vs computed tokens",
                             "value": f"{model:.2f}x speed vs {tokens:.2f}x tokens", "ratio": round(model / tokens, 3),
                             "passed": model >= 0.9 * tokens, "goal": "speed >= 0.9 x tokens"})
        checks.append({"target": "padding < 2% of computed tokens", "value": f"{packed['padding_fraction']:.2%}",
                       "ratio": packed["padding_fraction"], "passed": packed["padding_fraction"] < 0.02})
        checks.append({"target": "host preprocessing+packing < 10% of end-to-end time",
                       "value": f"{packed['host_fraction']:.1%}", "ratio": packed["host_fraction"],
                       "passed": packed["host_fraction"] < 0.10})
        if packed.get("host_cpu_fraction") is not None:
            # The front end overlaps the model, so its wall-time share (above) is what the model waits for;
            # its share of the CPU work says how much of the machine it takes.
            info.append({"target": "front end share of the process's CPU time (overlapped work)",
                         "value": f"{packed['host_cpu_fraction']:.1%} "
                                  f"({packed['frontend_cpu_ms_per_image']:.2f} CPU ms per image)",
                         "ratio": packed["host_cpu_fraction"], "passed": packed["host_cpu_fraction"] < 0.10,
                         "goal": "< 10%"})
        int8 = next((r for r in rows if r["workload"] == wl and r["backend_key"] == INT8_BACKEND
                     and r["strategy"] == "packed" and r["measured"]), None)
        if int8 is not None:
            # The quantization target is on the model's images/s: the same packs of the workload through
            # the FP32 and the INT8 model, side by side. End to end, decoding and resizing (the same work
            # for both precisions) dilute it; that ratio is reported beside it.
            q = paired_ratio(int8, packed)
            e2e = {"target": "INT8/FP32 images/s end to end (front end included, the same work for both)",
                   "value": f"{int8['images_per_s']:.2f} vs {packed['images_per_s']:.2f} ({_rounds(q)})",
                   "ratio": round(q[0], 3), "passed": q[0] >= INT8_TARGET, "goal": f">= {INT8_TARGET}x"}
            if int8.get("model_images_per_s") and packed.get("model_images_per_s"):
                qm = paired_ratio(int8, packed, "model_images_per_s")
                (checks if wl == "mixed" else info).append(
                    {"target": f"INT8/FP32 model images/s >= {INT8_TARGET}x (ONNX Runtime CPU, default packs)",
                     "value": f"{int8['model_images_per_s']:.2f} vs {packed['model_images_per_s']:.2f} ({_rounds(qm)})",
                     "ratio": round(qm[0], 3), "passed": qm[0] >= INT8_TARGET, "goal": f">= {INT8_TARGET}x"})
                info.append(e2e)
            else:
                (checks if wl == "mixed" else info).append(e2e)
        out.append({"workload": wl, "backend": backend_key, "checks": checks, "info": info,
                    "passed": all(c["passed"] for c in checks)})
    return out


# --------------------------------------------------------------------------------------------- sweep

def sweep_plans(frontend: FrontendConfig, capacities: Sequence[int], max_images: int) -> list[Plan]:
    """Packs padded to each capacity, packs cut to their fill at each capacity, and one image per pack."""
    budget = frontend.max_patches
    plans = [Plan("per-image", frontend, BucketedPacker(budget, 1, 1), budget)]
    for cap in sorted({int(c) for c in capacities}):
        if cap < budget:
            continue
        plans.append(Plan(f"L={cap} padded", frontend, Packer(cap, max_images), budget))
        plans.append(Plan(f"L={cap} cut", frontend, BucketedPacker(cap, max_images, 1), budget))
    return plans


def _sweep_row(m: Measurement, b: Backend, wl: Workload) -> dict[str, Any]:
    run = m.median_run()
    n_good = max(1, len(run.request_ms))
    computed = sum(pl for pl, _ in run.packs)
    valid = sum(sum(s) for _, s in run.packs)
    packer = m.plan.packer
    assert packer is not None
    ideal = sum(n * n for _, s in run.packs for n in s)
    dense = sum(pl * pl for pl, _ in run.packs)
    return {"workload": wl.name, "backend": b.backend, "precision": b.precision, "lowering": b.lowering,
            "backend_key": b.key, "config": m.plan.strategy, "capacity": packer.pack_len,
            "max_images": packer.max_images, "cut": isinstance(packer, BucketedPacker) and packer.bucket > 0,
            "images_per_s": round(n_good / run.wall_s, 3), "model_ms_per_image": round(1000 * run.model_s / n_good, 3),
            "padding_fraction": round(1 - valid / computed, 5) if computed else 0.0,
            "attention_waste": round((dense if b.lowering == "dense" else ideal) / ideal, 3) if ideal else 1.0,
            "packs": len(run.packs), "mean_pack_len": round(computed / max(1, len(run.packs)), 1),
            "host_fraction": round(run.host_s / run.wall_s, 4)}


def best_sweep(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (workload, backend), the fastest sweep configuration and how far the others are from it."""
    out = []
    keys = sorted({(r["workload"], r["backend_key"]) for r in rows})
    for wl, bk in keys:
        rs = [r for r in rows if r["workload"] == wl and r["backend_key"] == bk]
        best = max(rs, key=lambda r: r["images_per_s"])
        out.append({"workload": wl, "backend_key": bk, "best": best["config"], "images_per_s": best["images_per_s"],
                    "relative": {r["config"]: round(r["images_per_s"] / best["images_per_s"], 3) for r in rs}})
    return out


# ------------------------------------------------------------------------------------------------ main

def run_bench(cfg: BenchConfig, log: Callable[[str], None] | None = None,
              progress: Progress | None = None) -> dict[str, Any]:
    """Run everything ``cfg`` asks for; writes ``bench.json``, ``bench.md`` and plots under ``cfg.out``.

    ``progress``: a bar per workload (timed passes, what runs now, an estimate) on its stream (stderr)."""
    progress = progress or Progress("bench", enabled=False)
    log = log or (progress.write if progress.enabled else (lambda s: print(s, file=sys.stderr, flush=True)))
    started = time.time()
    out_dir = Path(cfg.out) if cfg.out else None
    tmp = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        workdir = out_dir
    else:
        tmp = tempfile.TemporaryDirectory(prefix="navit-bench-")
        workdir = Path(tmp.name)
    try:
        return _run(cfg, out_dir, workdir, log, started, progress)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _run(cfg: BenchConfig, out_dir: Path | None, workdir: Path, log: Callable[[str], None],
         started: float, progress: Progress) -> dict[str, Any]:
    load = LoadMonitor().start()
    mcfg = _model_config(cfg.model)
    shape = ModelShape.from_config(mcfg)
    onnx = _ensure_onnx(cfg, workdir, log)
    want_mha = "ort-cpu-mha" in cfg.backends or bool(cfg.peers)
    onnx_mha = _ensure_onnx(cfg, workdir, log, "ort-mha") if want_mha else None
    backends, skipped = resolve_backends(list(cfg.backends), cfg.model, onnx, cfg.onnx_int8, cfg.onnx_packed,
                                         cfg.engine, cfg.threads, onnx_mha)
    for s in skipped:
        log(f"skipping {s.key}: {s.reason}")
    peak = gemm_peak_gflops()
    log(f"numpy float32 GEMM peak: {peak:.1f} GFLOP/s")
    art = next((b._runner.artifact for b in backends if hasattr(b._runner, "artifact")), None)
    if art is None and onnx.exists():
        from navit_deploy.runtime.artifact import read_artifact

        art = read_artifact(onnx)
    base = art.frontend if art is not None else mcfg.frontend
    export_pack_len = art.pack_len if art is not None else 1024
    max_images = art.max_images if art is not None else 64

    rows: list[dict[str, Any]] = []
    breakdown: dict[str, Any] = {}
    plan_skips: list[dict[str, str]] = []
    workloads = _workloads(cfg, base)
    sources_of: dict[str, list] = {}
    for wl in workloads:
        fe = workload_frontend(base, wl.max_patches, wl.upscale, wl.max_pixels)
        log(f"[{wl.name}] {len(wl.sizes)} images, budget {wl.max_patches} patches, upscale={wl.upscale}")
        sources = workload_sources(wl, cfg.input_format, cfg.seed)  # type: ignore[arg-type]
        sources_of[wl.name] = sources
        if cfg.breakdown_images:
            breakdown[wl.name] = host_breakdown(sources, fe, cfg.breakdown_images)
        # Every backend's strategies are measured in one interleaved loop, so that round k of INT8 and of
        # FP32 (or of packed and padded) ran back to back and can be compared pairwise.
        entries: list[tuple[Backend, Plan]] = []
        anyres_plans: dict[str, Plan] = {}
        for b in backends:
            plans = []
            for s in cfg.strategies:
                try:
                    plan = make_plan(s, fe, b.lowering, b.provider, export_pack_len, max_images, cfg.pack_len, cfg.bucket)
                except ValueError as exc:
                    plan_skips.append({"workload": wl.name, "backend_key": b.key, "strategy": s, "reason": str(exc)})
                    continue
                if plan.packer is None:
                    anyres_plans[b.key] = plan
                else:
                    plans.append(plan)
            entries += [(b, p) for p in plans]
            log(f"  {b.label}: {', '.join(p.strategy for p in plans)}")
        # The default strategy is also timed without the front end, on the packs its end-to-end pass ran, right
        # after that pass: what the model itself does (e.g. INT8 vs FP32) apart from decoding and resizing.
        with progress.steps(f"bench {wl.name} ({len(wl.sizes)} images)", len(entries) * max(1, cfg.repeats),
                            "pass") as bar:
            def tick(i: int, bar=bar) -> None:
                bar.update(1)
                bar.set_postfix_str(f"{entries[i][0].label} {entries[i][1].strategy}")

            ms = measure_interleaved([(b.runner(), p) for b, p in entries], sources, cfg.repeats, cfg.warmup,
                                     cfg.workers, model_only=[p.strategy == "packed" for _, p in entries],
                                     progress=tick)
        for b in backends:
            got = [_row(m, b, wl, shape, peak, m.model_rates or None) for (eb, _), m in zip(entries, ms) if eb is b]
            rows += got
            if b.key in anyres_plans:
                square = next((r for r in got if r["strategy"] == "square"), None)
                rows.append(_anyres_row(wl, anyres_plans[b.key], b, shape, square, peak))
            log(f"  {b.label}:")
            for r in got:
                log(f"    {r['strategy']:<13} {r['images_per_s']:>9.2f} img/s  pad {r['padding_fraction']:6.1%}  "
                    f"{r['computed_tokens_per_image']:>7.1f} tok/img  host {r['host_fraction']:5.1%}")

    sweep: list[dict[str, Any]] = []
    if cfg.sweep_pack_len:
        names = cfg.sweep_workloads or tuple(w.name for w in workloads)
        for b in [b for b in backends if b.key in cfg.sweep_backends] or backends[:1]:
            for wl in [w for w in workloads if w.name in names]:
                fe = workload_frontend(base, wl.max_patches, wl.upscale, wl.max_pixels)
                plans = sweep_plans(fe, cfg.sweep_pack_len, max_images)
                log(f"[sweep {wl.name}] {b.label}: {len(plans)} configurations")
                for m in measure_plans(b.runner(), plans, sources_of[wl.name], cfg.repeats, cfg.warmup, cfg.workers):
                    sweep.append(_sweep_row(m, b, wl))
                    r = sweep[-1]
                    log(f"    {r['config']:<16} {r['images_per_s']:>9.2f} img/s  pad {r['padding_fraction']:6.1%}  "
                        f"attention x{r['attention_waste']:.2f}  mean pack {r['mean_pack_len']:.0f}")

    streaming = None
    if cfg.stream_frames > 0 and backends:
        b = next((b for b in backends if b.key == TARGET_BACKEND), backends[0])
        cam = make_workload("camera", 1)
        fe = workload_frontend(base, cam.max_patches, cam.upscale)
        log(f"[stream] {cfg.stream_frames} frames 1280x720 at {cfg.stream_fps} FPS on {b.label}")
        streaming = {"backend": b.backend, "backend_key": b.key, "precision": b.precision, "lowering": b.lowering,
                     "frame_size": [1280, 720], "budget": cam.max_patches,
                     **stream_camera(b.runner(), fe, camera_frames(cfg.stream_frames, seed=cfg.seed), cfg.stream_fps)}

    for b in backends:
        b.close()
    peers = None
    if cfg.peers:
        from navit_deploy.bench.peers import run_peers

        peers = run_peers(cfg.model, onnx, cfg.onnx_int8, cfg.n, cfg.repeats, cfg.seed, cfg.peers, log,
                          max_patches=cfg.max_patches, max_pixels=_pixel_budget(cfg, base), onnx_mha=onnx_mha)
    # The peak is measured again at the end and the best kept: a shared machine rarely gives it twice.
    peak_end = gemm_peak_gflops()
    if peak_end > peak:
        peak = peak_end
        for r in rows:
            r["peak_gemm_gflop_per_s"] = round(peak, 1)
            if r.get("model_gflop_per_s") and r["precision"] == "fp32":
                r["fraction_of_peak"] = round(r["model_gflop_per_s"] / peak, 4)
    report: dict[str, Any] = {
        "meta": {"model": str(cfg.model), "onnx": str(onnx), "onnx_mha": _s(onnx_mha), "onnx_int8": _s(cfg.onnx_int8),
                 "machine": platform.platform(), "processor": platform.processor() or platform.machine(),
                 "cpu_count": os.cpu_count(), "python": platform.python_version(),
                 "onnxruntime": _version("onnxruntime"), "torch": _version("torch"),
                 "model_config": {"dim": mcfg.dim, "depth": mcfg.depth, "heads": mcfg.heads,
                                  "patch_size": base.patch_size, "max_grid": base.max_grid},
                 "export_pack_len": export_pack_len, "max_images": max_images,
                 "repeats": cfg.repeats, "warmup": cfg.warmup, "images_per_workload": cfg.n,
                 "input_format": "files" if cfg.images else cfg.input_format, "threads": cfg.threads,
                 "peak_gemm_gflop_per_s": round(peak, 1), "peak_memory": "VmHWM reset per run via /proc/self/clear_refs",
                 "latency": "p50/p95/p99_ms: per image, from submitting the workload to its result; "
                            "pack_*: one model call",
                 "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": None, "load": load.stop(),
                 "strategies": {s: h for s, h in _strategy_help().items() if s in cfg.strategies}},
        "rows": rows,
        "skipped": [asdict(s) for s in skipped] + plan_skips,
        "targets": evaluate_targets(rows),
        "sweep": sweep, "sweep_best": best_sweep(sweep) if sweep else [],
        "streaming": streaming,
        "peers": peers,
        "host_breakdown": breakdown,
        "plots": [],
    }
    if out_dir is not None:
        from navit_deploy.bench.report import render_markdown, write_json, write_plots

        if cfg.plots:
            report["plots"] = [p.name for p in write_plots(report, out_dir, _packs_for_picture(cfg, base, workloads,
                                                                                              sources_of, max_images))]
        report["meta"]["seconds"] = round(time.time() - started, 1)
        write_json(report, out_dir / "bench.json")
        (out_dir / "bench.md").write_text(render_markdown(report))
    else:
        report["meta"]["seconds"] = round(time.time() - started, 1)
    return report


def _packs_for_picture(cfg: BenchConfig, base: FrontendConfig, workloads: list[Workload], sources_of: dict,
                       max_images: int):
    """The default packing of one workload (mixed when run), for the packed-batch picture."""
    if not workloads:
        return None
    wl = next((w for w in workloads if w.name == "mixed"), workloads[0])
    fe = workload_frontend(base, wl.max_patches, wl.upscale, wl.max_pixels)
    plan = make_plan("packed", fe, "dense", "cpu", 1024, max_images, cfg.pack_len, cfg.bucket)
    from navit_deploy.frontend import prepare_image

    items, idx = [], []
    for i, src in enumerate(sources_of[wl.name][:32]):
        try:
            items.append(prepare_image(src, fe))
            idx.append(i)
        except Exception:  # noqa: BLE001, S112 - bad images are reported by the measured runs
            continue
    if not items:
        return None
    assert plan.packer is not None
    padded_cap = Packer(plan.packer.pack_len, plan.packer.max_images)
    return {"workload": wl.name, "packing": plan.packing, "packs": plan.packer.pack(items, idx),
            "capacity_packs": padded_cap.pack(items, idx),
            "names": {i: f"{w}x{h}" for i, (w, h) in enumerate(wl.sizes)}}


def _strategy_help() -> dict[str, str]:
    from navit_deploy.bench.measure import STRATEGY_HELP

    return STRATEGY_HELP


def _s(p: Path | None) -> str | None:
    return None if p is None else str(p)


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001
        return None


# ------------------------------------------------------------------------------------- short version

def bench_summary(model: str, onnx_path: str | Path, quick: bool = True, onnx_int8: str | Path | None = None,
                  out: str | Path | None = None, n: int | None = None,
                  progress: Progress | None = None, onnx_mha: str | Path | None = None) -> dict[str, Any]:
    """The short benchmark ``navit deploy`` includes: the mixed workload, packed vs padded vs square vs one
    image at a time (and AnyRes token counts), on PyTorch eager (dense and segment loop) and ONNX Runtime
    CPU (dense; ``ort-mha`` and INT8 when given), with the targets. ``quick``: 24 images, 1 repeat, no streaming (else 64
    images, :data:`MIN_ROUNDS_FOR_TIE` interleaved rounds, so that a tie can be told from a loss, and 60
    streamed frames); ``n`` overrides the image count. ``out``: also write
    bench.json/bench.md/plots there. Render with :func:`summary_markdown`."""
    cfg = BenchConfig(model=model, onnx=Path(onnx_path), onnx_int8=Path(onnx_int8) if onnx_int8 else None,
                      onnx_mha=Path(onnx_mha) if onnx_mha else None,
                      out=Path(out) if out else None, workloads=("mixed",), n=n or (24 if quick else 64),
                      strategies=("packed", "padded", "square", "single", "anyres"),
                      backends=("ort-cpu",) + (("ort-cpu-mha",) if onnx_mha else ())
                      + ("ort-cpu-int8", "torch-dense", "torch-segment"),
                      repeats=1 if quick else MIN_ROUNDS_FOR_TIE, stream_frames=0 if quick else 60, plots=out is not None,
                      breakdown_images=4)
    report = run_bench(cfg, log=lambda s: None, progress=progress)
    for r in report["rows"]:
        r.pop("latency_samples_ms", None)
    return {"workload": f"mixed ({cfg.n} images)", "rows": report["rows"], "targets": report["targets"],
            "streaming": report["streaming"], "host_breakdown": report["host_breakdown"],
            "skipped": report["skipped"], "meta": report["meta"], "plots": report["plots"],
            "out": str(out) if out else None}


def summary_markdown(summary: dict[str, Any]) -> str:
    """The deploy report's benchmark section."""
    from navit_deploy.bench.report import rows_markdown, targets_markdown

    from navit_deploy.bench.machine_load import describe_load

    lines = [f"## Benchmark: what packing buys ({summary['workload']}, end to end)", "",
             f"Machine float32 GEMM peak (numpy): {summary['meta']['peak_gemm_gflop_per_s']} GFLOP/s. "
             + describe_load(summary["meta"].get("load")), "",
             rows_markdown(summary["rows"]), "", targets_markdown(summary["targets"])]
    if summary.get("plots"):
        where = Path(summary["out"]).name if summary.get("out") else "."
        lines += ["", "Plots: " + ", ".join(f"[{p}]({where}/{p})" for p in summary["plots"])
                  + f" (explained in [{where}/bench.md]({where}/bench.md)):", ""]
        lines += [f"![{p}]({where}/{p})" for p in summary["plots"]]
    if summary.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{s.get('key') or s.get('strategy')}: {s['reason']}"
                                             for s in summary["skipped"])]
    return "\n".join(lines)
