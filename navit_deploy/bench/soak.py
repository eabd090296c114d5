"""Reliability soak: a long stream with hostile inputs, adversarial and camera streams, repeated calls,
threads sharing a runner, and artifact faults. A benchmark: it prints numbers (and writes JSON); the
pass/fail lines are the goals of the reliability issue, not timed tests. Torch-free.

    python -m navit_deploy.bench.soak --onnx out/deploy/navit.dense.onnx [--frames 20000] [--json F]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from navit_deploy.bench.measure import percentiles, rss_mb
from navit_deploy.bench.workloads import camera_frames, encode_image, make_workload, workload_sources
from navit_deploy.errors import NavitError
from navit_deploy.runtime.open import open_runner, pipeline_for
from navit_deploy.runtime.pipeline import Pipeline
from navit_deploy.runtime.runner import Runner


def _jpeg(img: Image.Image) -> bytes:
    return encode_image(img, "jpeg")  # type: ignore[return-value]


def hostile_inputs(good: bytes) -> list[Any]:
    """Inputs a feed really gets: garbage, a truncated JPEG, nothing, no image at all, a 1000:1 strip, a
    missing file. Each must come back as that input's typed error."""
    return [b"not an image", good[: len(good) // 3], b"", None, 42, np.zeros((4, 4000, 3), np.uint8),
            "/no/such/file.jpg", [1, 2, 3]]


def _lat(values: Sequence[float]) -> dict[str, float | None]:
    p50, p95, p99 = percentiles(values)
    r = (lambda x: None if x is None else round(x, 2))
    return {"p50": r(p50), "p95": r(p95), "p99": r(p99), "max": r(max(values)) if len(values) else None}


def watch_stream(pipe: Pipeline, sources: Iterator[Any], bad: set[int] | None = None,
                 sample_every: int = 500, **stream_kw: Any) -> dict[str, Any]:
    """Runs ``pipe.stream`` over ``sources``; per result its delay in later inputs pulled and in ms since it
    was pulled, whether every input came back exactly once and in order, and RSS along the way."""
    pulled_at: dict[int, float] = {}
    count = [0]

    def feed() -> Iterator[Any]:
        for i, src in enumerate(sources):
            pulled_at[i] = time.perf_counter()
            count[0] = i + 1
            yield src

    lag_frames: list[int] = []
    lag_ms: list[float] = []
    in_order = True
    wrong = 0
    rss: list[tuple[int, float]] = [(0, rss_mb())]
    t0 = time.perf_counter()
    n = 0
    for res in pipe.stream(feed(), **stream_kw):
        now = time.perf_counter()
        in_order &= res.index == n
        if bad is not None:
            wrong += res.ok == (res.index in bad)
        lag_frames.append(count[0] - (res.index + 1))
        lag_ms.append(1000 * (now - pulled_at.pop(res.index)))
        n += 1
        if n % sample_every == 0:
            rss.append((n, rss_mb()))
    wall = time.perf_counter() - t0
    rss.append((n, rss_mb()))
    return {"inputs": count[0], "results": n, "exactly_once_in_order": in_order and n == count[0],
            "_lag_frames": lag_frames, "_lag_ms": lag_ms, "wall_s": wall,
            "wrong_outcomes": wrong if bad is not None else None, "images_per_s": round(n / wall, 1) if wall else None,
            "delay_frames": _lat(lag_frames), "latency_ms": _lat(lag_ms), "rss_mb": [(k, round(v, 1)) for k, v in rss],
            "packs": pipe.stats.packs, "images_per_pack": round(pipe.stats.images / max(1, pipe.stats.packs), 2)}


def soak_stream(runner: Runner, artifact: Any, frames: int, hostile: float = 0.02, seed: int = 0,
                warmup: int = 2000) -> dict[str, Any]:
    """``frames`` inputs of the mixed workload (JPEG bytes), a ``hostile`` share of them bad, through
    ``Pipeline.stream``: exactly once and in order, the right ones failed, RSS growth after ``warmup``."""
    wl = make_workload("mixed", 160, seed)
    pool = workload_sources(wl, "jpeg", seed)
    bad_pool = hostile_inputs(pool[0])
    rng = np.random.default_rng(seed)
    is_bad = rng.random(frames) < hostile
    bad = set(np.flatnonzero(is_bad).tolist())
    pick = rng.integers(0, len(pool), frames)

    def sources() -> Iterator[Any]:
        for i in range(frames):
            yield bad_pool[i % len(bad_pool)] if is_bad[i] else pool[pick[i]]

    out = watch_stream(pipeline_for(runner, artifact), sources(), bad=bad, sample_every=500)
    del out["_lag_frames"], out["_lag_ms"]
    after = [v for k, v in out["rss_mb"] if k >= min(warmup, frames)]
    out["rss_growth_after_warmup_mb"] = round(max(after) - after[0], 1) if after else None
    out["hostile_inputs"] = len(bad)
    return out


def adversarial_stream(runner: Runner, artifact: Any, n: int = 2000, **stream_kw: Any) -> dict[str, Any]:
    """The field's reproduction: one 150x54 JPEG, then ``n`` 500x300 JPEGs that fill packs without it."""
    rng = np.random.default_rng(0)
    small = _jpeg(Image.fromarray(rng.integers(0, 255, (54, 150, 3), dtype=np.uint8)))
    big = _jpeg(Image.fromarray(rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)))
    pipe = pipeline_for(runner, artifact)
    out = watch_stream(pipe, iter([small] + [big] * n), **stream_kw)
    return out


def camera_stream(runner: Runner, artifact: Any, fps: float = 30.0, frames: int = 300, **stream_kw: Any) -> dict[str, Any]:
    """1280x720 frames arriving at ``fps``: latency from each frame's scheduled arrival to its result."""
    shots = camera_frames(frames)
    pipe = pipeline_for(runner, artifact)
    pipe.run(shots[:4])  # warm-up
    start = time.perf_counter() + 0.01

    def paced() -> Iterator[np.ndarray]:
        for i, f in enumerate(shots):
            wait = start + i / fps - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            yield f

    out = watch_stream(pipe, paced(), sample_every=10**9, **stream_kw)
    out["target_fps"] = fps
    out["achieved_fps"] = round(frames / (time.perf_counter() - start), 1)
    return out


def interleaved(variants: dict[str, Callable[[], dict[str, Any]]], rounds: int) -> dict[str, dict[str, Any]]:
    """Each variant once per round, round-robin (so the drift of a shared machine hits all alike); the rounds'
    delays and latencies pooled per variant."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    for _ in range(max(1, rounds)):
        for name, fn in variants.items():
            runs[name].append(fn())
    out = {}
    for name, rs in runs.items():
        frames = [x for r in rs for x in r["_lag_frames"]]
        ms = [x for r in rs for x in r["_lag_ms"]]
        n, wall = sum(r["results"] for r in rs), sum(r["wall_s"] for r in rs)
        out[name] = {"rounds": len(rs), "results": n, "exactly_once_in_order": all(r["exactly_once_in_order"] for r in rs),
                     "delay_frames": _lat(frames), "latency_ms": _lat(ms), "images_per_s": round(n / wall, 1) if wall else None,
                     "images_per_pack": round(float(np.mean([r["images_per_pack"] for r in rs])), 2)}
        if "achieved_fps" in rs[0]:
            out[name]["achieved_fps"] = round(float(np.mean([r["achieved_fps"] for r in rs])), 1)
    return out


def _run_calls_child(onnx: str, calls: int, images: int, trim: bool) -> dict[str, Any]:
    runner, art = open_runner(onnx)
    wl = make_workload("mixed", 160, 0)
    pool = workload_sources(wl, "jpeg", 0)
    sources = [pool[i % len(pool)] for i in range(images)]
    rss = [round(rss_mb(), 1)]
    with runner:
        pipe = pipeline_for(runner, art)
        pipe.trim_memory = trim
        for _ in range(calls):
            pipe.run(sources)
            rss.append(round(rss_mb(), 1))
    return {"rss_mb": rss}


def repeated_runs(onnx: str, calls: int = 5, images: int = 2000) -> dict[str, Any]:
    """RSS after each of ``calls`` ``Pipeline.run`` calls of ``images`` images, one process per setting: the
    runtime's default (ONNX Runtime memory patterns off, heap trimmed after each call), without the trim,
    and as it was before (memory patterns on, no trim), also with ``MALLOC_ARENA_MAX=2``."""
    before = {"NAVIT_ORT_MEMORY_PATTERN": "1"}
    settings = {"default (no memory pattern, trim)": ({}, True), "no memory pattern, no trim": ({}, False),
                "memory pattern, no trim (before)": (before, False),
                "memory pattern, no trim, MALLOC_ARENA_MAX=2": ({**before, "MALLOC_ARENA_MAX": "2"}, False)}
    out: dict[str, Any] = {}
    for name, (env, trim) in settings.items():
        code = ("import json, sys; from navit_deploy.bench.soak import _run_calls_child; "
                f"print(json.dumps(_run_calls_child({onnx!r}, {calls}, {images}, {trim})))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600,
                              env={**os.environ, **env})
        if proc.returncode:
            out[name] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        rss = json.loads(proc.stdout.strip().splitlines()[-1])["rss_mb"]
        out[name] = {"rss_mb": rss, "growth_after_first_call_mb": round(rss[-1] - rss[1], 1)}
    return out


def threads_vs_serial(runner: Runner, artifact: Any, threads: int = 8, per_thread: int = 48) -> dict[str, Any]:
    """``threads`` threads calling ``run`` on one pipeline (one runner) against the same calls made serially."""
    wl = make_workload("mixed", threads * per_thread, 1)
    pool = workload_sources(wl, "jpeg", 1)
    calls = [pool[k * per_thread:(k + 1) * per_thread] + [b"junk"] for k in range(threads)]
    pipe = pipeline_for(runner, artifact)
    serial = [pipe.run(c) for c in calls]
    got: dict[int, list] = {}
    barrier = threading.Barrier(threads)

    def work(k: int) -> None:
        barrier.wait(timeout=60)
        got[k] = pipe.run(calls[k])

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    diff, same_outcomes = 0.0, True
    for k in range(threads):
        for a, b in zip(got.get(k, []), serial[k]):
            same_outcomes &= a.ok == b.ok and a.index == b.index
            if a.ok and b.ok:
                diff = max(diff, float(np.abs(a.embedding - b.embedding).max()))
    return {"threads": threads, "images": threads * (per_thread + 1), "all_answered": len(got) == threads,
            "same_outcomes": same_outcomes, "max_abs_diff_vs_serial": diff, "wall_s": round(wall, 2)}


def artifact_faults(onnx: str) -> list[dict[str, str]]:
    """Each fault must raise a typed error (ArtifactMismatchError) and never run."""
    from navit_deploy.runtime.artifact import sidecar_path

    cases: list[tuple[str, Callable[[Path], None], str]] = []

    def other_model(d: Path) -> None:
        side = json.loads(sidecar_path(d / "m.onnx").read_text())
        side["weights_sha256"], side["dim"] = "f" * 64, side["dim"] * 2
        sidecar_path(d / "m.onnx").write_text(json.dumps(side))

    def truncated(d: Path) -> None:
        data = (d / "m.onnx").read_bytes()
        (d / "m.onnx").write_bytes(data[: len(data) // 2])

    def truncated_engine(d: Path) -> None:
        # An engine as `navit compile` leaves it (file + sidecar with its hash), then cut short by a bad copy.
        # The hash check needs neither TensorRT nor a GPU, so this runs here.
        from navit_deploy.compile.compat import EngineInfo, GpuInfo, with_engine
        from navit_deploy.compile.profiles import PackProfile
        from navit_deploy.runtime.artifact import read_artifact, sha256_file, write_sidecar

        engine = d / "m.engine"
        engine.write_bytes(os.urandom(4096))
        info = EngineInfo("10.3.0.30", GpuInfo("NVIDIA Jetson AGX Orin", "8.7"), "fp32", "fp32", False, (), False,
                          (PackProfile(1, 256, 1024, 1, 8, 64),), str(d / "m.onnx"), sha256_file(d / "m.onnx"),
                          sha256_file(engine))
        write_sidecar(engine, with_engine(read_artifact(d / "m.onnx"), info))
        engine.write_bytes(engine.read_bytes()[:1000])

    cases += [("another model's artifact beside the ONNX file", other_model, "m.onnx"),
              ("truncated ONNX file", truncated, "m.onnx"),
              ("truncated engine", truncated_engine, "m.engine")]
    out = []
    for what, damage, target in cases:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            shutil.copy(onnx, d / "m.onnx")
            shutil.copy(sidecar_path(onnx), sidecar_path(d / "m.onnx"))
            damage(d)
            out.append({"fault": what, **_outcome(lambda: open_runner(d / target)[0].activate())})
    with tempfile.TemporaryDirectory() as tmp:  # a model file replaced while a runner holds it
        d = Path(tmp)
        shutil.copy(onnx, d / "m.onnx")
        shutil.copy(sidecar_path(onnx), sidecar_path(d / "m.onnx"))
        runner, _ = open_runner(d / "m.onnx")
        runner.activate()
        runner.deactivate()
        (d / "m.onnx").write_bytes((d / "m.onnx").read_bytes() + b"\0")
        out.append({"fault": "model file replaced while the runtime holds it", **_outcome(runner.activate)})
    return out


def _outcome(fn: Callable[[], Any]) -> dict[str, str]:
    try:
        fn()
    except NavitError as exc:
        return {"outcome": type(exc).__name__, "message": str(exc)[:160]}
    except Exception as exc:  # noqa: BLE001 - reported as what it is: not a typed error
        return {"outcome": f"UNTYPED {type(exc).__name__}", "message": str(exc)[:160]}
    return {"outcome": "ACCEPTED (wrong)", "message": ""}


def run_soak(onnx: str, frames: int = 20000, calls: int = 5, images: int = 2000, camera_frames_n: int = 150,
             adversarial_n: int = 600, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every part of the soak; returns the JSON report (and logs progress)."""
    report: dict[str, Any] = {"onnx": onnx, "machine": platform.platform(), "cpus": os.cpu_count()}
    runner, art = open_runner(onnx)
    with runner:
        log(f"adversarial stream: 1 short frame + {adversarial_n} full ones, 3 interleaved rounds")
        report["adversarial"] = interleaved({
            "default": lambda: adversarial_stream(runner, art, adversarial_n),
            "max_delay_ms=40": lambda: adversarial_stream(runner, art, adversarial_n, max_delay_ms=40)}, 3)
        log(f"camera stream: {camera_frames_n} frames at 30 FPS, 3 interleaved rounds")
        report["camera"] = interleaved({
            "default": lambda: camera_stream(runner, art, 30.0, camera_frames_n),
            "max_delay_ms=40": lambda: camera_stream(runner, art, 30.0, camera_frames_n, max_delay_ms=40),
            "buffer=1": lambda: camera_stream(runner, art, 30.0, camera_frames_n, buffer=1)}, 3)
        log("8 threads calling run on one runner vs serial")
        report["threads"] = threads_vs_serial(runner, art)
        log(f"soak: {frames} inputs (2% hostile) through Pipeline.stream")
        report["stream_soak"] = soak_stream(runner, art, frames)
    log("artifact faults")
    report["faults"] = artifact_faults(onnx)
    log(f"memory: {calls} calls of {images} images per setting (one process each)")
    report["repeated_runs"] = repeated_runs(onnx, calls, images)
    return report


def render(report: dict[str, Any]) -> str:
    """A readable summary of :func:`run_soak`'s report, with the goals' verdicts."""
    lines = [f"soak on {report['machine']} ({report['cpus']} CPUs), {report['onnx']}"]
    for section in ("adversarial", "camera"):
        for name, r in report[section].items():
            lines.append(f"{section:<11} {name:<16} delay frames p50 {r['delay_frames']['p50']} p99 "
                         f"{r['delay_frames']['p99']} max {r['delay_frames']['max']}; latency ms p50 "
                         f"{r['latency_ms']['p50']} p99 {r['latency_ms']['p99']} max {r['latency_ms']['max']}; "
                         f"{r['images_per_s']} img/s, {r['images_per_pack']} img/pack"
                         + (f", {r['achieved_fps']} FPS" if "achieved_fps" in r else ""))
    t = report["threads"]
    lines.append(f"threads     {t['threads']} threads x run on one runner: all answered {t['all_answered']}, same outcomes "
                 f"{t['same_outcomes']}, max |diff| vs serial {t['max_abs_diff_vs_serial']:.1e}")
    s = report["stream_soak"]
    ok = s["exactly_once_in_order"] and not s["wrong_outcomes"]
    goal = s["rss_growth_after_warmup_mb"] is not None and s["rss_growth_after_warmup_mb"] < 50
    lines.append(f"soak        {s['results']}/{s['inputs']} answered, exactly once in order: {s['exactly_once_in_order']}, "
                 f"{s['hostile_inputs']} hostile, wrong outcomes {s['wrong_outcomes']} -> {'pass' if ok else 'MISS'}; "
                 f"RSS {s['rss_mb'][0][1]} -> {s['rss_mb'][-1][1]} MiB, growth after warm-up "
                 f"{s['rss_growth_after_warmup_mb']} MiB (goal < 50) -> {'pass' if goal else 'MISS'}; "
                 f"{s['images_per_s']} img/s")
    for f in report["faults"]:
        typed = not f["outcome"].startswith(("UNTYPED", "ACCEPTED"))
        lines.append(f"fault       {f['fault']}: {f['outcome']} -> {'pass' if typed else 'MISS'}")
    for name, r in report["repeated_runs"].items():
        lines.append(f"runs        {name}: RSS after each call {r.get('rss_mb', r.get('error'))}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m navit_deploy.bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", required=True, help="a dense ONNX export (e.g. out/deploy/navit.dense.onnx)")
    ap.add_argument("--frames", type=int, default=20000, help="inputs in the stream soak (default 20000)")
    ap.add_argument("--calls", type=int, default=5, help="Pipeline.run calls per memory setting (default 5)")
    ap.add_argument("--images", type=int, default=2000, help="images per Pipeline.run call (default 2000)")
    ap.add_argument("--camera-frames", type=int, default=150, help="frames per camera round (3 rounds, default 150)")
    ap.add_argument("--adversarial", type=int, default=600, help="full frames after the short one, per round (default 600)")
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args(argv)
    report = run_soak(args.onnx, args.frames, args.calls, args.images, args.camera_frames, args.adversarial,
                      log=lambda m: print(f"[soak] {m}", file=sys.stderr, flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
