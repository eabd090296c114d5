"""FP32 vs INT8 on ONNX Runtime CPU: the model's images/s on the very same packs, side by side, in one run.

    python -m navit_deploy.calibration.bench_int8 --onnx navit.dense.onnx [--int8 navit.int8.onnx]
        [--workload mixed] [--images 64] [--repeats 5] [--threads N] [--json]

Without ``--int8`` the FP32 model is quantized first (default settings, calibration cache used).
Images are rendered once (``navit_deploy.bench.workloads``, at the workload's budget), prepared and packed
once with the runtime's default packing; each round runs all packs through each model the way
``Pipeline`` does (its concurrency included), the two models alternating so background load hits both
alike (:func:`navit_deploy.bench.measure.measure_model_only`); the best round of each is reported, and
the median. The model alone is timed: the front end is identical for both precisions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from navit_deploy.packing import Packer


def bench_int8(fp32_onnx: str | Path, int8_onnx: str | Path, *, images: list | None = None, workload: str = "mixed",
               n_images: int = 64, repeats: int = 5, threads: int | None = None,
               pack_len: int | None = None) -> dict[str, Any]:
    """Images/s of both models on the same packs; ``images`` default: the ``workload`` of ``n_images``.

    ``pack_len`` replaces the default packing with packs padded to that length.
    """
    from navit_deploy.bench.measure import Plan, measure_model_only, workload_frontend
    from navit_deploy.packing.policy import recommended_packing
    from navit_deploy.runtime.onnx_runner import OnnxRunner

    runners = {"fp32": OnnxRunner(fp32_onnx, threads=threads), "int8": OnnxRunner(int8_onnx, threads=threads)}
    if runners["int8"].artifact.precision != "int8":
        print(f"warning: {int8_onnx} says precision {runners['int8'].artifact.precision!r}", file=sys.stderr)
    art = runners["fp32"].artifact
    frontend = art.frontend
    if images is None:
        from navit_deploy.bench.workloads import make_workload, render_workload

        wl = make_workload(workload, n_images)
        images = list(render_workload(wl))
        frontend = workload_frontend(frontend, wl.max_patches, wl.upscale)
        what = f"{workload} workload, budget {wl.max_patches}"
    else:
        what = "given images"
    packer = (Packer(pack_len, art.max_images) if pack_len
              else recommended_packing(frontend.max_patches, art.lowering, "cpu", art.max_images))
    plan = Plan("packed", frontend, packer, frontend.max_patches)
    fp32, int8 = measure_model_only([(runners["fp32"], plan), (runners["int8"], plan)], images, repeats, warmup=1)
    rows = {name: {"images_per_s_best": round(max(m.rates), 2),
                   "images_per_s_median": round(statistics.median(m.rates), 2),
                   "ms_per_pack_best": round(1000 * m.images / max(m.rates) / max(1, m.packs), 3)}
            for name, m in (("fp32", fp32), ("int8", int8))}
    return {"images": fp32.images, "packs": fp32.packs, "pack_len": packer.pack_len, "data": what,
            "threads": runners["fp32"].threads, "concurrency": runners["fp32"].concurrency, "repeats": repeats,
            "fp32": rows["fp32"], "int8": rows["int8"],
            "speedup_best": round(rows["int8"]["images_per_s_best"] / rows["fp32"]["images_per_s_best"], 3),
            "speedup_median": round(rows["int8"]["images_per_s_median"] / rows["fp32"]["images_per_s_median"], 3),
            "fp32_model": str(fp32_onnx), "int8_model": str(int8_onnx)}


def table(r: dict[str, Any]) -> str:
    lines = [(f"ONNX Runtime CPU, {r['images']} images in {r['packs']} packs of {r['pack_len']} tokens ({r['data']}), "
             f"best/median of {r['repeats']} rounds, {r['concurrency']} call(s) at once x "
             f"{r['threads'] or 'default'} thread(s)"),
             f"  {'model':<6}{'images/s best':>15}{'median':>10}{'ms/pack':>10}"]
    for k in ("fp32", "int8"):
        x = r[k]
        lines.append(f"  {k:<6}{x['images_per_s_best']:>15.1f}{x['images_per_s_median']:>10.1f}{x['ms_per_pack_best']:>10.2f}")
    lines.append(f"  INT8 / FP32 speed: {r['speedup_best']:.2f}x best, {r['speedup_median']:.2f}x median")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m navit_deploy.calibration.bench_int8", description=__doc__.split("\n")[0])
    ap.add_argument("--onnx", required=True, help="FP32 export (dense lowering)")
    ap.add_argument("--int8", default=None, help="its INT8 version (default: quantize now, default settings)")
    ap.add_argument("--workload", default="mixed", help="camera, documents, thumbnails, crops, mixed")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--pack-len", type=int, default=None, help="override the artifact's pack length")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="navit-bench-") as td:
        int8 = args.int8
        if int8 is None:
            from navit_deploy.calibration.quantize import quantize_model

            int8 = str(Path(td) / "model.int8.onnx")
            quantize_model(args.onnx, int8, "int8", eval_size=0, progress=not args.json)
        res = bench_int8(args.onnx, int8, workload=args.workload, n_images=args.images, repeats=args.repeats,
                         threads=args.threads, pack_len=args.pack_len)
    print(json.dumps(res, indent=1) if args.json else table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
