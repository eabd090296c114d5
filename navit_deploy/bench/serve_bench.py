"""``navit bench --serve``: the HTTP service under concurrent loopback clients, cross-request packing against
the same server taking one request per model call.

Two ``navit serve`` processes run side by side on 127.0.0.1, identical but for ``--batching`` (``packed``
and ``per-request``). ``clients`` threads, each with its own keep-alive connection, send one image per
request and the next as soon as the answer is back (a closed loop). Rounds alternate between the two
servers (and which goes first), after a warm-up, so that drift of a shared machine hits both alike; the
throughput ratio is taken round by round. Latency is per request, from sending to the parsed answer.
"""

from __future__ import annotations

import os
import platform
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from navit_deploy.bench.workloads import Workload, make_workload, workload_sources
from navit_deploy.serve.client import EmbeddingClient, metric_value

SERVE_WORKLOADS = ("thumbnails", "crops", "mixed")
MODES = ("packed", "per-request")
Server = tuple[str, str]  # (model label, batching)
TARGET_WORKLOADS = ("thumbnails", "crops")
TARGET_SPEEDUP = 1.3


@dataclass(frozen=True)
class ServeBenchConfig:
    """What ``navit bench --serve`` runs."""

    onnx: Path
    workloads: tuple[str, ...] = SERVE_WORKLOADS
    clients: int = 16
    requests_per_client: int = 16
    rounds: int = 5
    images: int = 64
    max_wait_ms: float = 0.0
    seed: int = 0
    threads: int | None = None  # both servers' --threads (ONNX Runtime intra-op threads per call)
    workers: int | None = None  # both servers' --workers (front-end threads)
    more_onnx: tuple[Path, ...] = ()  # more model files (other lowerings of the same weights), two servers each


@contextmanager
def server_process(onnx: Path, workload: Workload, batching: str, max_wait_ms: float,
                   start_timeout: float = 120.0, threads: int | None = None,
                   workers: int | None = None) -> Iterator[int]:
    """``navit serve`` for ``workload``'s budget on a free loopback port; yields the port; SIGTERM on leaving."""
    cmd = [sys.executable, "-m", "navit_deploy.cli", "serve", "--onnx", str(onnx), "--port", "0",
           "--batching", batching, "--max-wait-ms", str(max_wait_ms), "--max-patches", str(workload.max_patches)]
    cmd += ["--threads", str(threads)] if threads else []
    cmd += ["--workers", str(workers)] if workers else []
    if not workload.upscale:
        cmd.append("--no-upscale")
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in iter(proc.stdout.readline, "")],  # type: ignore[union-attr]
                     daemon=True).start()
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                break
        yield int(m.group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def closed_loop(port: int, sources: Sequence[bytes], clients: int, per_client: int, offset: int = 0) -> dict[str, Any]:
    """``clients`` threads, ``per_client`` one-image requests each, back to back. Throughput, latencies, and
    what the server's metrics say about the model calls in between."""
    with EmbeddingClient("127.0.0.1", port) as probe:
        before = probe.metrics()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    barrier = threading.Barrier(clients + 1, timeout=60)

    def client(i: int) -> None:
        with EmbeddingClient("127.0.0.1", port, timeout=120) as c:
            c.request("GET", "/healthz")  # connect before the clock starts
            barrier.wait()
            for k in range(per_client):
                img = sources[(offset + i * per_client + k) % len(sources)]
                t = time.perf_counter()
                status, _ = c.embed(img)
                latencies[i].append(1000 * (time.perf_counter() - t))
                failures[i] += status != 200

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    with EmbeddingClient("127.0.0.1", port) as probe:
        after = probe.metrics()
    delta = {k: metric_value(after, k) - metric_value(before, k)
             for k in ("navit_packs_total", "navit_images_per_pack_sum", "navit_requests_per_pack_sum",
                       "navit_pack_tokens_sum", "navit_queue_wait_seconds_sum", "navit_queue_wait_seconds_count")}
    flat = [x for lat in latencies for x in lat]
    packs = max(delta["navit_packs_total"], 1.0)
    return {"requests": len(flat), "failed": sum(failures), "wall_s": wall, "images_per_s": len(flat) / wall,
            "latency_ms": flat, "packs": int(delta["navit_packs_total"]),
            "images_per_pack": delta["navit_images_per_pack_sum"] / packs,
            "requests_per_pack": delta["navit_requests_per_pack_sum"] / packs,
            "tokens_per_pack": delta["navit_pack_tokens_sum"] / packs,
            "queue_wait_ms": 1000 * delta["navit_queue_wait_seconds_sum"]
            / max(delta["navit_queue_wait_seconds_count"], 1.0)}


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _row(workload: str, model: str, mode: str, runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One server's row: median round's throughput, latency percentiles over every round's requests."""
    lat = [x for r in runs for x in r["latency_ms"]]
    return {"workload": workload, "model": model, "batching": mode,
            "images_per_s": float(np.median([r["images_per_s"] for r in runs])),
            "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "requests": len(lat),
            "failed": sum(r["failed"] for r in runs),
            "images_per_pack": float(np.mean([r["images_per_pack"] for r in runs])),
            "requests_per_pack": float(np.mean([r["requests_per_pack"] for r in runs])),
            "tokens_per_pack": float(np.mean([r["tokens_per_pack"] for r in runs])),
            "queue_wait_ms": float(np.mean([r["queue_wait_ms"] for r in runs])),
            "rounds_images_per_s": [round(r["images_per_s"], 2) for r in runs]}


def _ratio(workload: str, rows: dict[Server, dict[str, Any]], rounds: dict[Server, list[dict[str, Any]]],
           packed: Server, single: Server) -> dict[str, Any]:
    """``packed`` / ``single``: throughput paired round by round (median and every round), p50 and p99
    over all requests, and p99 round by round."""
    a, b = rounds[packed], rounds[single]
    paired = [x["images_per_s"] / y["images_per_s"] for x, y in zip(a, b)]
    p99 = [_pct(x["latency_ms"], 99) / _pct(y["latency_ms"], 99) for x, y in zip(a, b)]
    return {"workload": workload, "packed": packed[0], "per_request": single[0],
            "throughput_x": float(np.median(paired)), "throughput_x_rounds": paired,
            "p50_x": rows[packed]["p50_ms"] / rows[single]["p50_ms"],
            "p99_x": rows[packed]["p99_ms"] / rows[single]["p99_ms"], "p99_x_rounds": p99}


def summarize(workload: str, rounds: dict[Server, list[dict[str, Any]]]) -> dict[str, Any]:
    """Rows per server (model, batching) and the packed / per-request ratios: for each model file against
    itself, and the headline ``ratio``: the fastest packed server against the fastest per-request one
    (median round), so that a model file that only suits one side cannot flatter packing."""
    rows = {srv: _row(workload, srv[0], srv[1], runs) for srv, runs in rounds.items()}
    models = list(dict.fromkeys(m for m, _ in rounds))
    per_model = [_ratio(workload, rows, rounds, (m, "packed"), (m, "per-request")) for m in models]
    fastest = {mode: max((srv for srv in rows if srv[1] == mode), key=lambda srv: rows[srv]["images_per_s"])
               for mode in MODES}
    return {"rows": [rows[(m, mode)] for m in models for mode in MODES], "per_model": per_model,
            "ratio": _ratio(workload, rows, rounds, fastest["packed"], fastest["per-request"])}


def run_serve_bench(cfg: ServeBenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every workload: a packed and a per-request server per model file, a warm-up, then ``rounds`` rounds
    in which every server runs once (the order rotating from round to round)."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    models = model_labels([cfg.onnx, *cfg.more_onnx])
    servers: list[Server] = [(m, mode) for m in models for mode in MODES]
    results = []
    for name in cfg.workloads:
        wl = make_workload(name, cfg.images, cfg.seed)
        sources = workload_sources(wl, "jpeg", cfg.seed)
        log(f"[serve {name}] {len(sources)} JPEGs, budget {wl.max_patches}, {cfg.clients} clients x "
            f"{cfg.requests_per_client} requests x {cfg.rounds} rounds per server, {len(servers)} servers")
        with ExitStack() as stack:
            ports = {srv: stack.enter_context(server_process(models[srv[0]], wl, srv[1], cfg.max_wait_ms,
                                                             threads=cfg.threads, workers=cfg.workers))
                     for srv in servers}
            for srv in servers:  # warm-up: sessions, thread pools, connections
                closed_loop(ports[srv], sources, cfg.clients, 2)
            rounds: dict[Server, list[dict[str, Any]]] = {srv: [] for srv in servers}
            for r in range(max(1, cfg.rounds)):
                k = r % len(servers)
                for srv in servers[k:] + servers[:k]:
                    run = closed_loop(ports[srv], sources, cfg.clients, cfg.requests_per_client, offset=r)
                    rounds[srv].append(run)
                    log(f"  round {r + 1} {srv[0]:<10} {srv[1]:<11} {run['images_per_s']:7.1f} img/s  p99 "
                        f"{_pct(run['latency_ms'], 99):7.1f} ms  {run['images_per_pack']:.2f} img/pack")
        results.append(summarize(name, rounds))
    return {"meta": machine(cfg), "workloads": results, "targets": targets(results)}


def model_label(path: Path) -> str:
    """A model file's name in the report: its attention lowering and, if not FP32, its precision (from the
    sidecar); else its file name."""
    from navit_deploy.errors import NavitError
    from navit_deploy.runtime.artifact import read_artifact

    try:
        art = read_artifact(path)
    except (NavitError, OSError):
        return path.name
    return art.lowering if art.precision == "fp32" else f"{art.lowering} {art.precision}"


def model_labels(paths: Sequence[Path]) -> dict[str, Path]:
    """Each model file under its label; the file name joins a label two files share."""
    labels = [model_label(p) for p in paths]
    return {(f"{lab} ({p.name})" if labels.count(lab) > 1 else lab): p for lab, p in zip(labels, paths)}


def targets(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cross-request packing >= 1.3x the throughput at no worse p99, on thumbnails and crops: the fastest
    packed server against the fastest per-request one."""
    out = []
    for res in results:
        r = res["ratio"]
        if r["workload"] in TARGET_WORKLOADS:
            ok = r["throughput_x"] >= TARGET_SPEEDUP and r["p99_x"] <= 1.0
            out.append({"workload": r["workload"], "target": f">= {TARGET_SPEEDUP}x images/s at p99 <= 1.0x",
                        "value": f"{r['throughput_x']:.2f}x images/s, p99 {r['p99_x']:.2f}x "
                                 f"({r['packed']} packed vs {r['per_request']} per-request)", "passed": ok})
    return out


def machine(cfg: ServeBenchConfig) -> dict[str, Any]:
    from importlib.metadata import version

    return {"machine": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "onnxruntime": version("onnxruntime"),
            "uvicorn": version("uvicorn"), "starlette": version("starlette"), "http": _installed("httptools", "h11"),
            "loop": _installed("uvloop", "asyncio"), "onnx": str(cfg.onnx),
            "models": {label: str(p) for label, p in model_labels([cfg.onnx, *cfg.more_onnx]).items()},
            "clients": cfg.clients, "requests_per_client": cfg.requests_per_client, "rounds": cfg.rounds,
            "max_wait_ms": cfg.max_wait_ms, "threads": cfg.threads, "workers": cfg.workers, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _installed(module: str, otherwise: str) -> str:
    """What uvicorn's ``auto`` picks: ``module`` when it is installed."""
    from importlib.util import find_spec

    return module if find_spec(module) else otherwise


def format_serve_table(report: dict[str, Any]) -> str:
    """The rows and the ratios as Markdown tables."""
    lines = ["| workload | model | batching | images/s | p50 ms | p99 ms | images / model call "
             "| requests / model call | queue wait ms |", "|---|---|---|---|---|---|---|---|---|"]
    for res in report["workloads"]:
        for r in res["rows"]:
            lines.append(f"| {r['workload']} | {r['model']} | {r['batching']} | {r['images_per_s']:.1f} "
                         f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['images_per_pack']:.2f} "
                         f"| {r['requests_per_pack']:.2f} | {r['queue_wait_ms']:.2f} |")
    lines += ["", "| workload | packed / per-request | images/s, median of paired rounds (range) | p50 | p99, all "
              "requests (range of rounds) |", "|---|---|---|---|---|"]
    for res in report["workloads"]:
        several = len(res["per_model"]) > 1
        for r, head in [(r, False) for r in (res["per_model"] if several else [])] + [(res["ratio"], True)]:
            lo, hi = min(r["throughput_x_rounds"]), max(r["throughput_x_rounds"])
            plo, phi = min(r["p99_x_rounds"]), max(r["p99_x_rounds"])
            which = f"{r['packed']} / {r['per_request']}" + (" (fastest of each)" if head and several else "")
            x = f"**{r['throughput_x']:.2f}x**" if head else f"{r['throughput_x']:.2f}x"
            lines.append(f"| {r['workload']} | {which} | {x} ({lo:.2f}-{hi:.2f}) | {r['p50_x']:.2f}x "
                         f"| {r['p99_x']:.2f}x ({plo:.2f}-{phi:.2f}) |")
    return "\n".join(lines)
