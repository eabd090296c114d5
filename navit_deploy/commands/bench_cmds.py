"""``navit bench``: latency/throughput of packing vs padding vs square resize vs one image at a time."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _csv(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in _csv(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from navit_deploy.bench.backends import BACKEND_NAMES, DEFAULT_BACKENDS
    from navit_deploy.bench.measure import STRATEGIES
    from navit_deploy.bench.suite import DEFAULT_SWEEP
    from navit_deploy.bench.workloads import WORKLOADS

    p = sub.add_parser("bench", help="benchmark packing vs padding vs square resize vs one image at a time",
                       description="Runs every strategy on the same weights and backend, per workload, and writes "
                                   "OUT/bench.json, OUT/bench.md and plots. Numbers are end to end: decode, resize, "
                                   "pack, model.")
    p.add_argument("--model", default="builtin", help="'builtin' or a model directory (PyTorch rows, FLOP counts)")
    p.add_argument("--onnx", default=None, help="dense-lowering ONNX export (default: exported into OUT)")
    p.add_argument("--onnx-int8", default=None, help="an INT8 ONNX model for the ONNX Runtime CPU INT8 rows")
    p.add_argument("--onnx-packed", default=None, help="an ort-packed export for ONNX Runtime CUDA")
    p.add_argument("--engine", default=None, help="a TensorRT engine")
    p.add_argument("--out", default="bench_out", help="output directory (default: bench_out)")
    p.add_argument("--workloads", type=_csv, default=WORKLOADS, help=f"comma list of {', '.join(WORKLOADS)}")
    p.add_argument("--images", default=None, help="benchmark a folder of images instead of the builtin workloads")
    p.add_argument("--max-patches", type=int, default=None, help="token budget (default: per workload; folder: model's)")
    p.add_argument("--no-upscale", dest="upscale", action="store_false", default=None,
                   help="never enlarge images past their native size")
    p.add_argument("-n", "--num-images", type=int, default=32, help="images per workload (default 32)")
    p.add_argument("--strategies", type=_csv, default=STRATEGIES, help=f"comma list of {', '.join(STRATEGIES)}")
    p.add_argument("--backends", type=_csv, default=DEFAULT_BACKENDS,
                   help=f"comma list of {', '.join(BACKEND_NAMES)} (unavailable ones are skipped with the reason)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed passes over a few images per strategy")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    p.add_argument("--workers", type=int, default=None, help="front-end threads (default: the pipeline's)")
    p.add_argument("--input-format", choices=["jpeg", "png", "pil"], default="jpeg",
                   help="how rendered images reach the pipeline (jpeg/png bytes are decoded by it; pil: pre-decoded)")
    p.add_argument("--pack-len", type=int, default=None, help="override the packed strategy's pack capacity")
    p.add_argument("--bucket", type=int, default=None,
                   help="override the packed strategy's bucketing: cut packs to multiples of N tokens (0: pad to capacity)")
    p.add_argument("--sweep-pack-len", type=_ints, nargs="?", const=DEFAULT_SWEEP, default=(),
                   help="also measure images/s vs pack capacity, padded and cut (default list: "
                        f"{','.join(map(str, DEFAULT_SWEEP))})")
    p.add_argument("--sweep-backends", type=_csv, default=("ort-cpu",), help="backends for the sweep (default ort-cpu)")
    p.add_argument("--stream-fps", type=float, default=30.0, help="camera stream: frame rate")
    p.add_argument("--stream-frames", type=int, default=60, help="camera stream: frames (0: no streaming run)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quick", action="store_true", help="8 images per workload, 1 repeat, 15 streamed frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.set_defaults(func=cmd_bench)


def config_from_args(args: argparse.Namespace):
    from navit_deploy.bench.suite import BenchConfig

    n, repeats, frames = args.num_images, args.repeats, args.stream_frames
    if args.quick:
        n, repeats, frames = min(n, 8), 1, min(frames, 15)
    opt = lambda v: Path(v) if v else None
    return BenchConfig(model=args.model, onnx=opt(args.onnx), onnx_int8=opt(args.onnx_int8),
                       onnx_packed=opt(args.onnx_packed), engine=opt(args.engine), out=Path(args.out),
                       workloads=tuple(args.workloads), images=args.images, max_patches=args.max_patches,
                       upscale=args.upscale, n=n, strategies=tuple(args.strategies), backends=tuple(args.backends),
                       repeats=repeats, warmup=args.warmup, threads=args.threads, workers=args.workers,
                       input_format=args.input_format, sweep_pack_len=tuple(args.sweep_pack_len),
                       sweep_backends=tuple(args.sweep_backends), stream_fps=args.stream_fps, stream_frames=frames,
                       pack_len=args.pack_len, bucket=args.bucket, seed=args.seed, plots=not args.no_plots)


def cmd_bench(args: argparse.Namespace) -> int:
    from navit_deploy.bench.measure import STRATEGIES
    from navit_deploy.bench.report import format_table, sweep_markdown, verdict
    from navit_deploy.bench.suite import run_bench
    from navit_deploy.bench.workloads import WORKLOADS
    from navit_deploy.errors import ConfigError

    bad = [s for s in args.strategies if s not in STRATEGIES] + \
          ([w for w in args.workloads if w not in WORKLOADS] if not args.images else [])
    if bad:
        raise ConfigError(f"unknown strategy/workload {bad}; strategies: {list(STRATEGIES)}, workloads: {list(WORKLOADS)}")
    report = run_bench(config_from_args(args))
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return 0
    print(format_table(report["rows"]))
    if report["sweep"]:
        print()
        print(sweep_markdown(report["sweep"], report["sweep_best"]))
    s = report["streaming"]
    if s:
        print(f"\ncamera stream: {s['frames']} frames at {s['target_fps']} FPS -> {s['achieved_fps']} FPS, latency p50 "
              f"{s['latency_p50_ms']} ms p99 {s['latency_p99_ms']} ms, service {s['service_ms_mean']} ms/frame")
    print()
    for t in report["targets"]:
        for c in t["checks"]:
            print(f"[{verdict(c):<4}] {t['workload']:<11} {c['target']}: {c['value']}")
        for c in t.get("info", []):
            print(f"[info] {t['workload']:<11} {c['target']}: {c['value']}")
    for s in report["skipped"]:
        print(f"skipped {s.get('key') or s.get('strategy')}: {s['reason']}")
    print(f"\nwrote {Path(args.out) / 'bench.json'}, {Path(args.out) / 'bench.md'}"
          + (f", {', '.join(report['plots'])}" if report["plots"] else ""))
    return 0
