"""``navit bench --embed``: ``navit embed`` on a few thousand image files, one process against Ray Data.

The files are a workload's rendered images written as JPEGs (``distinct`` renders, copied under new names
up to ``images`` files: the work per file is the same as for distinct images). Every configuration embeds
all of them into its own fresh output folder; configurations run one after the other in each round, in
the same process, on one local Ray cluster started once (its start is reported apart). Ray's images/s
count from submitting the dataset to the last part written: actor start, model loading, scheduling,
object transfers and Parquet writes are what Ray adds.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from navit_deploy.bench.workloads import make_workload, render_workload
from navit_deploy.embed import DEFAULT_BATCH


@dataclass(frozen=True)
class EmbedBenchConfig:
    """What ``navit bench --embed`` runs."""

    onnx: Path
    out: Path
    workload: str = "mixed"
    images: int = 2000
    distinct: int = 64
    actors: tuple[int, ...] = (1, 2)
    batch_size: int = DEFAULT_BATCH
    rounds: int = 1
    seed: int = 0


def write_corpus(folder: Path, workload: str, images: int, distinct: int, seed: int = 0) -> list[str]:
    """``images`` JPEG files of ``workload``'s sizes and content in ``folder`` (reused when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"img_{i:06d}.jpg") for i in range(images)]
    if all(os.path.exists(p) for p in paths):
        return paths
    wl = make_workload(workload, distinct, seed)
    renders = []
    for i, img in enumerate(render_workload(wl, seed)):
        p = folder / f"render_{i:04d}.jpg"
        img.save(p, "JPEG", quality=90)
        renders.append(p)
    for i, p in enumerate(paths):
        shutil.copyfile(renders[i % len(renders)], p)
    return paths


def run_embed_bench(cfg: EmbedBenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Single process, then Ray with each actor count, ``rounds`` times; images/s of each run."""
    import ray

    from navit_deploy.embed.local import embed_files
    from navit_deploy.embed.ray_embed import embed_with_ray, init_ray

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    paths = write_corpus(cfg.out / "corpus", cfg.workload, cfg.images, cfg.distinct, cfg.seed)
    log(f"[embed] {len(paths)} files ({cfg.distinct} distinct {cfg.workload} renders), batch {cfg.batch_size}")
    t0 = time.perf_counter()
    started = init_ray(None)
    ray_start = time.perf_counter() - t0
    log(f"  local Ray cluster started in {ray_start:.1f} s")
    configs = [("single process", None)] + [(f"Ray, {a} actor{'s' if a > 1 else ''}", a) for a in cfg.actors]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in configs}
    try:
        for r in range(max(1, cfg.rounds)):
            for name, actors in configs:
                out = cfg.out / f"run-{r}-{actors or 0}.parquet"
                shutil.rmtree(out, ignore_errors=True)
                if actors is None:
                    s = embed_files(paths, cfg.onnx, out, batch_size=cfg.batch_size, progress=False)
                    seconds = s.seconds
                else:
                    s = embed_with_ray(paths, cfg.onnx, out, actors=actors, batch_size=cfg.batch_size,
                                       progress=False)
                    seconds = s.extra["run_s"]
                runs[name].append({"seconds": seconds, "images_per_s": len(paths) / seconds, "failed": s.failed,
                                   "extra": s.extra})
                log(f"  round {r + 1} {name:<16} {len(paths) / seconds:7.1f} img/s ({seconds:.1f} s)")
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if started:
            ray.shutdown()
    single = float(np.median([x["images_per_s"] for x in runs["single process"]]))
    rows = []
    for name, actors in configs:
        rate = float(np.median([x["images_per_s"] for x in runs[name]]))
        extra = runs[name][0]["extra"]
        rows.append({"config": name, "actors": actors, "images_per_s": rate, "vs_single": rate / single,
                     "seconds": float(np.median([x["seconds"] for x in runs[name]])),
                     "cpus_per_actor": extra.get("cpus_per_actor"), "threads_per_actor": extra.get("threads_per_actor"),
                     "rounds_images_per_s": [round(x["images_per_s"], 2) for x in runs[name]]})
    one = next((r for r in rows if r["actors"] == 1), None)
    return {"meta": {"machine": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
                     "ray": ray.__version__, "images": len(paths), "workload": cfg.workload,
                     "batch_size": cfg.batch_size, "rounds": cfg.rounds, "date": time.strftime("%Y-%m-%d %H:%M:%S")},
            "ray_cluster_start_s": ray_start, "rows": rows,
            "ray_overhead": None if one is None else {"seconds_per_1000_images": 1000 / one["images_per_s"]
                                                      - 1000 / single, "one_actor_vs_single": one["vs_single"]}}


def format_embed_table(report: dict[str, Any]) -> str:
    lines = ["| configuration | images/s | vs single process | seconds | CPUs / threads per actor |",
             "|---|---|---|---|---|"]
    for r in report["rows"]:
        per = "" if r["actors"] is None else f"{r['cpus_per_actor']:g} / {r['threads_per_actor']}"
        lines.append(f"| {r['config']} | {r['images_per_s']:.1f} | {r['vs_single']:.2f}x | {r['seconds']:.1f} | {per} |")
    o = report["ray_overhead"]
    lines += ["", f"Local Ray cluster start: {report['ray_cluster_start_s']:.1f} s (once, not in the rows)."]
    if o:
        lines.append(f"Ray overhead at 1 actor: {o['seconds_per_1000_images']:+.2f} s per 1000 images "
                     f"({o['one_actor_vs_single']:.2f}x the single-process rate).")
    return "\n".join(lines)
