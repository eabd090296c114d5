"""Timing: strategies (how images become packs), end-to-end runs, host-stage breakdown, camera streaming.

Everything here drives the runtime's own code (:class:`~navit_deploy.runtime.pipeline.Pipeline`: its
thread-pool front end, its packer hook, ``run_pack``) with timers around the stages. Torch-free.
"""

from __future__ import annotations

import io
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from navit_deploy.bench.anyres import anyres_tokens, square_grid_for
from navit_deploy.packing.policy import BucketedPacker, describe_packer, recommended_packing
from navit_deploy.frontend import FrontendConfig, grid_coords, load_image, patchify, target_size
from navit_deploy.frontend.patchify import normalize_patches, resize_to, to_pixels
from navit_deploy.frontend import PreparedImage
from navit_deploy.packing import PackedBatch, Packer
from navit_deploy.runtime.pipeline import Pipeline
from navit_deploy.runtime.results import ImageResult
from navit_deploy.runtime.runner import Runner

STRATEGIES = ("packed", "packed-fixed", "padded", "square", "single", "anyres")
STRATEGY_HELP = {
    "packed": "this runtime's default: native aspect, first-fit-decreasing packs (capacity/bucketing per lowering)",
    "packed-fixed": "native aspect, packs padded to the exported pack length (the runtime as shipped)",
    "padded": "NaFlex-style: one image per row padded to the budget (SigLIP 2 in transformers)",
    "square": "classic ViT: every image squashed to g x g patches, g*g <= budget",
    "single": "one image at a time, native aspect at the budget, no padding (batch size 1)",
    "anyres": "LLaVA-NeXT AnyRes tiles + thumbnail (token count; images/s estimated from square's tokens/s)",
}


# ----------------------------------------------------------------------------------------------- plans

@dataclass(frozen=True)
class Plan:
    """How one strategy runs a workload: its front end and its packer (None: counted, not run)."""

    strategy: str
    frontend: FrontendConfig
    packer: Packer | None
    budget: int

    @property
    def packing(self) -> str:
        if self.packer is None:
            g = self.frontend.square_grid
            return f"tiles of {g}x{g} patches + thumbnail"
        return describe_packer(self.packer)


def workload_frontend(base: FrontendConfig, max_patches: int, upscale: bool,
                      max_pixels: int | None = None) -> FrontendConfig:
    """The model's front end at a workload's budget (NaFlex-style ``max_patches``; ``max_pixels``, when given,
    is a VLM tower's pixel budget exactly). A model whose size rule
    is SigLIP 2's (``budget="naflex"``, one position table resized to any grid) keeps its rule, with the
    grid limit raised to the budget."""
    if base.budget == "naflex":
        return base.replace(max_patches=max_patches, upscale=upscale, square_grid=0,
                            max_grid=max(base.max_grid, max_patches))
    if base.merge_size > 1:
        # A VLM tower (Qwen-VL) keeps its processor's pixel rule (sides in whole merge blocks): the workload's
        # budget of patch tokens becomes its max_pixels.
        hi = max_pixels or max_patches * base.patch_size ** 2
        return base.replace(min_pixels=min(base.min_pixels, hi), max_pixels=hi, square_grid=0)
    return base.replace(budget="max_patches", max_patches=max_patches, upscale=upscale, square_grid=0)


def make_plan(strategy: str, frontend: FrontendConfig, lowering: str, provider: str, export_pack_len: int,
              max_images: int, pack_len: int | None = None, bucket: int | None = None) -> Plan:
    """The :class:`Plan` of ``strategy`` at ``frontend``'s budget; raises ValueError when it cannot run."""
    # In patch tokens; for a pixel budget its nominal size (the processor's rule lets a rare thin image go over it).
    budget = frontend.max_pixels // frontend.patch_size ** 2 if frontend.budget == "pixels" else frontend.max_patches
    if strategy == "packed":
        rec = recommended_packing(budget, lowering, provider, max_images)
        if pack_len is not None or bucket is not None:
            cap = pack_len if pack_len is not None else rec.pack_len
            if cap < budget:
                raise ValueError(f"--pack-len {cap} is shorter than the budget {budget}")
            rec = BucketedPacker(cap, max_images, rec.bucket if bucket is None else bucket)
        return Plan(strategy, frontend, rec, budget)
    if strategy == "packed-fixed":
        if export_pack_len < budget:
            raise ValueError(f"the exported pack length {export_pack_len} is shorter than the budget {budget}")
        return Plan(strategy, frontend, Packer(export_pack_len, max_images), budget)
    if strategy == "padded":
        return Plan(strategy, frontend, Packer(budget, 1), budget)
    if strategy == "single":
        return Plan(strategy, frontend, BucketedPacker(budget, 1, 1), budget)
    if strategy in ("square", "anyres"):
        g = min(square_grid_for(budget), frontend.max_grid)
        g = max(frontend.merge_size, g - g % frontend.merge_size)  # whole merge blocks
        fe = frontend.replace(square_grid=g)
        return Plan(strategy, fe, Packer(g * g, 1) if strategy == "square" else None, budget)
    raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


def anyres_counts(sizes: Sequence[tuple[int, int]], frontend: FrontendConfig) -> list[int]:
    """AnyRes tokens per image, tiles of the square strategy's grid."""
    g = frontend.square_grid or square_grid_for(frontend.max_patches)
    return [anyres_tokens(w, h, g, frontend.patch_size).tokens if w > 0 and h > 0 else 0 for w, h in sizes]


# ---------------------------------------------------------------------------------------------- memory

def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``/proc/self/clear_refs``); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB; None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB: ``VmHWM`` (since the last reset) or ``ru_maxrss``."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    """Resident memory of this process now, MiB (Linux ``VmRSS``; 0 where there is no /proc)."""
    return _status_mb("VmRSS") or 0.0


# ---------------------------------------------------------------------------------------------- timing

@dataclass
class RunTiming:
    """One end-to-end pass over a workload, as :class:`PipelineStats` recorded it."""

    wall_s: float
    host_s: float  # wall time in which the model was not running: front end, packing, waiting (exposed host)
    prepare_s: float  # of which: waiting for the front end and packer
    pack_s: float  # packing (on its own thread when overlapped, so not necessarily in host_s)
    model_s: float
    frontend_cpu_s: float  # CPU seconds in the front end, all threads (overlapped with the model or not)
    host_cpu_fraction: float  # the front end's share of the process's CPU seconds during the pass
    pack_ms: list[float]
    request_ms: list[float]  # per image: from submission of the batch to its result
    packs: list[tuple[int, list[int]]]  # (pack_len, seqlens) of every pack
    failed: int


@dataclass
class Measurement:
    plan: Plan
    runs: list[RunTiming] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    # Model-only images/s, one per round, timed right after that round's end-to-end pass on the same packs
    # (only for the entries :func:`measure_interleaved` was asked to time so).
    model_rates: list[float] = field(default_factory=list)

    def median_run(self) -> RunTiming:
        return sorted(self.runs, key=lambda r: r.wall_s)[len(self.runs) // 2]


def run_once(pipe: Pipeline, sources: Sequence[Any]) -> RunTiming:
    """One ``Pipeline.run`` (the runtime's own overlapped front end, packer and runner) and its timers."""
    pipe.run(list(sources))
    st = pipe.stats
    return RunTiming(st.wall_s, st.wall_s - st.model_s, st.wait_s, st.pack_s, st.model_s, st.frontend_cpu_s,
                     st.frontend_cpu_fraction,
                     list(st.pack_ms), [st.done_ms[i] for i in sorted(st.done_ms)], list(st.pack_shapes), st.failed)


def measure_plans(runner: Runner, plans: Sequence[Plan], sources: Sequence[Any], repeats: int = 3,
                  warmup: int = 1, workers: int | None = None) -> list[Measurement]:
    """Time every plan on one runner; see :func:`measure_interleaved`."""
    return measure_interleaved([(runner, plan) for plan in plans], sources, repeats, warmup, workers)


def window_packs(pipe: Pipeline, sources: Sequence[Any]) -> tuple[list[PackedBatch], dict[int, PreparedImage]]:
    """The packs :meth:`Pipeline.run` makes of ``sources`` (each front-end window packed on its own, as
    there), and the good images they hold: what a model-only timing must run to compare with ``run``."""
    packs: list[PackedBatch] = []
    good: dict[int, PreparedImage] = {}
    for a, b in pipe.window_bounds(len(sources)):
        window = {i: p for i in range(a, b) if not isinstance(p := pipe.prepare(i, sources[i]), ImageResult)}
        if window:
            packs += pipe.packer.pack(list(window.values()), list(window))
            good.update(window)
    return packs, good


def _model_rate(pipe: Pipeline, packs: Sequence[PackedBatch], good: dict[int, PreparedImage]) -> float:
    pipe.run_packs(packs, good)
    return len(good) / pipe.stats.wall_s if good and pipe.stats.wall_s > 0 else 0.0


def measure_interleaved(entries: Sequence[tuple[Runner, Plan]], sources: Sequence[Any], repeats: int = 3,
                        warmup: int = 1, workers: int | None = None, model_only: Sequence[bool] | None = None,
                        progress: Callable[[int], None] | None = None) -> list[Measurement]:
    """Time every (runner, plan) pair on ``sources``, ``repeats`` times, interleaved (A, B, ..., A, B, ...)
    so that drift of a shared machine hits every strategy and backend alike and round ``k`` of one pair
    can be compared with round ``k`` of another; ``warmup`` untimed passes over a few images first.
    Each distinct runner is opened once for the whole measurement.

    ``model_only[i]``: also time pair ``i`` without the front end, right after each of its end-to-end
    passes, on the packs that pass ran (:func:`window_packs`), into :attr:`Measurement.model_rates`; model
    only and end to end then see the same work and the same moment of a shared machine.
    ``progress(i)`` is called after each timed pass of pair ``i``."""
    pipes = []
    for runner, plan in entries:
        kw = {} if workers is None else {"workers": workers}
        pipes.append(Pipeline(runner, plan.frontend, plan.packer, **kw))
    results = [Measurement(plan) for _, plan in entries]
    flags = list(model_only) if model_only is not None else [False] * len(entries)
    runners = list({id(r): r for r, _ in entries}.values())
    with ExitStack() as stack:
        for r in runners:
            stack.enter_context(r)
        jobs = {i: window_packs(pipe, sources) for i, pipe in enumerate(pipes) if flags[i]}
        for i, pipe in enumerate(pipes):
            for _ in range(warmup):
                run_once(pipe, sources[: max(1, min(len(sources), 8))])
                if i in jobs:
                    pipe.run_packs(jobs[i][0][:2], jobs[i][1])
        for _ in range(max(1, repeats)):
            for i, (pipe, m) in enumerate(zip(pipes, results)):
                reset_peak_rss()
                m.runs.append(run_once(pipe, sources))
                m.peak_rss_mb = max(m.peak_rss_mb, peak_rss_mb())
                if i in jobs:
                    m.model_rates.append(_model_rate(pipe, *jobs[i]))
                if progress is not None:
                    progress(i)
    return results


@dataclass
class ModelOnly:
    """Model-only images/s of one (runner, plan) pair, one value per interleaved round, and what was run."""

    rates: list[float]
    images: int
    packs: int


def measure_model_only(entries: Sequence[tuple[Runner, Plan]], sources: Sequence[Any], repeats: int = 3,
                       warmup: int = 1) -> list[ModelOnly]:
    """Model-only images/s of every (runner, plan) pair, one value per interleaved round.

    Each pair's images go through its plan's front end and packer once, untimed, into the packs
    :meth:`Pipeline.run` makes (:func:`window_packs`); then every round runs
    each pair's packs with :meth:`Pipeline.run_packs` (the runtime's own concurrency, no front end), back
    to back, so round ``k`` of INT8 and of FP32 can be compared pairwise as in :func:`measure_interleaved`.
    """
    jobs = []
    for runner, plan in entries:
        pipe = Pipeline(runner, plan.frontend, plan.packer)
        packs, good = window_packs(pipe, sources)
        jobs.append((pipe, packs, good))
    results = [ModelOnly([], len(good), len(packs)) for _, packs, good in jobs]
    runners = list({id(r): r for r, _ in entries}.values())
    with ExitStack() as stack:
        for r in runners:
            stack.enter_context(r)
        for pipe, packs, good in jobs:
            for _ in range(warmup):
                pipe.run_packs(packs[:2], good)
        for _ in range(max(1, repeats)):
            for (pipe, packs, good), out in zip(jobs, results):
                out.rates.append(_model_rate(pipe, packs, good))
    return results


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> list[float | None]:
    if not len(values):
        return [None for _ in qs]
    arr = np.asarray(values, dtype=np.float64)
    return [float(np.percentile(arr, q)) for q in qs]


# ------------------------------------------------------------------------------------- host breakdown

def host_breakdown(sources: Sequence[Any], frontend: FrontendConfig, limit: int = 8,
                   draft_factors: Sequence[int] = (1, 2)) -> dict[str, Any]:
    """Where front-end time goes, one image at a time on one thread: decode, EXIF orientation + mode
    conversion (``ImageOps.exif_transpose`` copies the whole image even when there is nothing to rotate),
    resize, patchify (uint8), normalize (on the patch matrix).

    For JPEG inputs it also times *draft* decoding: libjpeg scales by 1/2, 1/4 or 1/8 while decoding
    (``Image.draft``) to the smallest size at least ``factor`` x the target, then the usual antialiased
    resize; factor 2 is what ``PIL.Image.thumbnail`` does by default. The runtime could do this for
    large JPEGs that are downscaled anyway.
    """
    stages = {"decode": 0.0, "orient_copy": 0.0, "resize": 0.0, "patchify": 0.0, "normalize": 0.0}
    draft = {f: [0.0, 0.0, 0] for f in draft_factors}
    full_jpeg = 0.0
    n = 0
    for src in list(sources)[:limit]:
        try:
            t0 = time.perf_counter()
            # What load_image does, split: decode, then EXIF orientation (a full copy even with no
            # orientation tag) and mode conversion. numpy frames skip the orientation step, as there.
            if isinstance(src, np.ndarray):
                img = load_image(src, max_image_pixels=frontend.max_image_pixels)
            elif isinstance(src, Image.Image):
                img = src
                img.load()
            else:
                img = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
                img.load()
            t1 = time.perf_counter()
            if not isinstance(src, np.ndarray):
                img = ImageOps.exif_transpose(img)
                if img.mode != "RGB":
                    img = img.convert("RGB")
            t1b = time.perf_counter()
            tw, th = target_size(img.size[0], img.size[1], frontend)
            resized = resize_to(img, (tw, th), frontend)
            t2 = time.perf_counter()
            patches = patchify(to_pixels(resized, frontend), frontend.patch_size, frontend.temporal_patch_size,
                               frontend.merge_size)
            grid_coords(th // frontend.patch_size, tw // frontend.patch_size, frontend.merge_size)
            t3 = time.perf_counter()
            normalize_patches(patches, frontend)
            t4 = time.perf_counter()
        except Exception:  # noqa: BLE001, S112 - a bad image is the pipeline's business, not the breakdown's
            continue
        n += 1
        for k, dt in zip(stages, (t1 - t0, t1b - t1, t2 - t1b, t3 - t2, t4 - t3)):
            stages[k] += dt
        if isinstance(src, (bytes, str)) and _is_jpeg(src):
            full_jpeg += t2 - t0
            for f in draft_factors:
                d0 = time.perf_counter()
                im = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
                im.draft("RGB", (tw * f, th * f))
                im = im.convert("RGB")
                d1 = time.perf_counter()
                resize_to(im, (tw, th), frontend)
                d2 = time.perf_counter()
                draft[f][0] += d1 - d0
                draft[f][1] += d2 - d1
                draft[f][2] += 1
    total = sum(stages.values())
    out: dict[str, Any] = {"images": n,
                           "ms_per_image": {k: round(1000 * v / max(n, 1), 3) for k, v in stages.items()},
                           "share": {k: round(v / total, 4) if total else 0.0 for k, v in stages.items()},
                           "dominant": max(stages, key=stages.get) if n else None}
    drafts = {}
    for f, (dec, res, k) in draft.items():
        if k:
            fast = (dec + res) / k
            drafts[f"x{f}"] = {"images": k, "decode_ms": round(1000 * dec / k, 3), "resize_ms": round(1000 * res / k, 3),
                               "decode_resize_speedup": round(full_jpeg / k / fast, 2) if fast else None}
    if drafts:
        out["jpeg_draft"] = drafts
    return out


def _is_jpeg(src: bytes | str) -> bool:
    if isinstance(src, bytes):
        return src[:3] == b"\xff\xd8\xff"
    return str(src).lower().endswith((".jpg", ".jpeg"))


# ------------------------------------------------------------------------------------------ streaming

def stream_camera(runner: Runner, frontend: FrontendConfig, frames: Sequence[np.ndarray], fps: float,
                  packer: Packer | None = None, buffer: int = 1) -> dict[str, Any]:
    """Frames arrive one by one at ``fps`` through :meth:`Pipeline.stream`; latency from each frame's
    scheduled arrival to its result (so a backlog shows up as latency), achieved FPS, and the service time
    per frame (what the pipeline could sustain back to back)."""
    budget = frontend.max_patches
    packer = packer or BucketedPacker(budget, 1, 1)
    pipe = Pipeline(runner, frontend, packer, workers=1)
    with runner:
        pipe.run(list(frames[:2]))  # warm-up
        due: dict[int, float] = {}
        handed: dict[int, float] = {}
        start = time.perf_counter() + 0.01

        def feed() -> Iterator[np.ndarray]:
            for i, frame in enumerate(frames):
                t = start + i / fps
                now = time.perf_counter()
                if now < t:
                    time.sleep(t - now)
                due[i] = t
                handed[i] = time.perf_counter()
                yield frame

        latency, service = [], []
        for res in pipe.stream(feed(), buffer=buffer, min_fill=0.0):
            now = time.perf_counter()
            latency.append(1000 * (now - due[res.index]))
            service.append(1000 * (now - handed[res.index]))
        end = time.perf_counter()
    p50, p95, p99 = percentiles(latency)
    achieved = len(latency) / (end - start) if end > start else 0.0
    mean_service = float(np.mean(service)) if service else 0.0
    return {"frames": len(frames), "target_fps": fps, "achieved_fps": round(achieved, 2),
            "keeps_up": achieved >= 0.95 * fps, "latency_p50_ms": _r(p50), "latency_p95_ms": _r(p95),
            "latency_p99_ms": _r(p99), "service_ms_mean": round(mean_service, 3),
            "sustainable_fps": round(1000 / mean_service, 2) if mean_service else None,
            "tokens_per_frame": round(pipe.stats.valid_tokens / max(1, len(latency)), 1),
            "padding_fraction": round(pipe.stats.padding_fraction, 4), "packing": describe_packer(packer),
            "latency_ms": [round(x, 3) for x in latency]}


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)
