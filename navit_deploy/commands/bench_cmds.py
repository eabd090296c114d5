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
    p.add_argument("--onnx-mha", default=None, help="an ort-mha export for the ONNX Runtime CPU ort-mha rows and peers "
                   "(default: exported into OUT)")
    p.add_argument("--onnx-packed", default=None, help="an ort-packed export for ONNX Runtime CUDA")
    p.add_argument("--engine", default=None, help="a TensorRT engine")
    p.add_argument("--out", default="bench_out", help="output directory (default: bench_out)")
    p.add_argument("--workloads", type=_csv, default=WORKLOADS, help=f"comma list of {', '.join(WORKLOADS)}")
    p.add_argument("--images", default=None, help="benchmark a folder of images instead of the builtin workloads")
    p.add_argument("--max-patches", type=int, default=None, help="token budget (default: per workload; folder: model's)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="pixel budget of a model with one (Qwen-VL: max_pixels, e.g. 1048576 for 1024x1024), for every "
                        "workload and the --peers side alike; instead of --max-patches")
    p.add_argument("--no-upscale", dest="upscale", action="store_false", default=None,
                   help="never enlarge images past their native size")
    p.add_argument("-n", "--num-images", type=int, default=32, help="images per workload (default 32)")
    p.add_argument("--strategies", type=_csv, default=STRATEGIES, help=f"comma list of {', '.join(STRATEGIES)}")
    p.add_argument("--backends", type=_csv, default=DEFAULT_BACKENDS,
                   help=f"comma list of {', '.join(BACKEND_NAMES)} (unavailable ones are skipped with the reason)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per strategy, interleaved (default 3)")
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
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--peers", type=_csv, default=(),
                   help="also time the source library's own path on the same weights and JPEG files: 'transformers' "
                        "(SigLIP 2 checkpoints: its processor + Siglip2VisionModel, sdpa/eager, batch 8/32)")
    p.add_argument("--quick", action="store_true", help="8 images per workload, 1 repeat, 15 streamed frames")
    p.add_argument("--seed", type=int, default=0, help="seed of the rendered workload images")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="a bar per workload on stderr: timed passes, what runs, time left (auto: when stderr is a "
                        "terminal)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 when any target is missed (a MISS line), so CI can gate on the benchmark")
    s = p.add_argument_group("services (--serve, --embed; --repeats sets the rounds)")
    s.add_argument("--serve", action="store_true",
                   help="navit serve under concurrent loopback clients: cross-request packing vs one request per "
                        "model call, a pair of servers per model file (--onnx, and --onnx-mha when given or when "
                        "both are exported here); workloads default to thumbnails, crops, mixed")
    s.add_argument("--embed", action="store_true", help="navit embed: one process vs Ray Data with --embed-actors")
    s.add_argument("--clients", type=int, default=16, help="--serve: concurrent clients, one image per request")
    s.add_argument("--requests-per-client", type=int, default=16, help="--serve: requests per client per round")
    s.add_argument("--max-wait-ms", type=float, default=0.0, help="--serve: the packed server's --max-wait-ms")
    s.add_argument("--embed-images", type=int, default=2000, help="--embed: image files to embed")
    s.add_argument("--embed-actors", type=_ints, default=(1, 2), help="--embed: Ray actor counts (default 1,2)")
    s.add_argument("--embed-batch", type=int, default=128, help="--embed: paths per batch")
    s.add_argument("--embed-workload", default="mixed", help="--embed: the workload the files are rendered from")
    p.set_defaults(func=cmd_bench)


def config_from_args(args: argparse.Namespace):
    from navit_deploy.bench.suite import BenchConfig

    n, repeats, frames = args.num_images, args.repeats, args.stream_frames
    if args.quick:
        n, repeats, frames = min(n, 8), 1, min(frames, 15)
    opt = lambda v: Path(v) if v else None
    return BenchConfig(model=args.model, onnx=opt(args.onnx), onnx_int8=opt(args.onnx_int8),
                       onnx_packed=opt(args.onnx_packed), onnx_mha=opt(args.onnx_mha), engine=opt(args.engine), out=Path(args.out),
                       workloads=tuple(args.workloads), images=args.images, max_patches=args.max_patches, max_pixels=args.max_pixels,
                       upscale=args.upscale, n=n, strategies=tuple(args.strategies), backends=tuple(args.backends),
                       repeats=repeats, warmup=args.warmup, threads=args.threads, workers=args.workers,
                       input_format=args.input_format, sweep_pack_len=tuple(args.sweep_pack_len),
                       sweep_backends=tuple(args.sweep_backends), stream_fps=args.stream_fps, stream_frames=frames,
                       pack_len=args.pack_len, bucket=args.bucket, seed=args.seed, plots=not args.no_plots,
                       peers=tuple(args.peers))


def missed_targets(report: dict) -> list[str]:
    """``workload: target`` of every missed target of a ``navit bench`` report: its workloads', ``--peers``'
    (against the source library) and ``--serve``'s."""
    from navit_deploy.bench.report import verdict

    missed = [f"{t['workload']}: {c['target']}" for t in report.get("targets", []) for c in t.get("checks", [])
              if verdict(c) == "MISS"]
    missed += [f"{t['workload']}: {t['target']}" for t in report.get("serve", {}).get("targets", []) if not t["passed"]]
    peers = report.get("peers") or {}
    missed += [f"peers: {t['target']}" for t in peers.get("targets", []) if not t["passed"]]
    return missed


def _exit_code(args: argparse.Namespace, report: dict) -> int:
    """0, or with ``--check`` 1 when a target was missed (named on stderr)."""
    import sys

    missed = missed_targets(report) if args.check else []
    if missed:
        print(f"navit bench --check: {len(missed)} target(s) missed: " + "; ".join(missed), file=sys.stderr)
    return 1 if missed else 0


def cmd_service_bench(args: argparse.Namespace) -> int:
    """``navit bench --serve`` / ``--embed``: writes OUT/serve_bench.json, OUT/embed_bench.json."""
    import sys

    from navit_deploy.bench.suite import _ensure_onnx
    from navit_deploy.bench.workloads import WORKLOADS

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    onnx = Path(args.onnx) if args.onnx else _ensure_onnx(config_from_args(args), out, log)
    reports = {}
    if args.serve:
        from navit_deploy.bench.serve_bench import SERVE_WORKLOADS, ServeBenchConfig, format_serve_table, run_serve_bench

        workloads = SERVE_WORKLOADS if tuple(args.workloads) == tuple(WORKLOADS) else tuple(args.workloads)
        # The ort-mha file joins when given, or when both are this run's own exports of --model.
        mha = Path(args.onnx_mha) if args.onnx_mha else (
            None if args.onnx else _ensure_onnx(config_from_args(args), out, log, "ort-mha"))
        cfg = ServeBenchConfig(onnx, workloads, args.clients, args.requests_per_client, args.repeats,
                               args.num_images, args.max_wait_ms, args.seed, args.threads, args.workers,
                               more_onnx=(mha,) if mha else ())
        reports["serve"] = run_serve_bench(cfg, log)
        (out / "serve_bench.json").write_text(json.dumps(reports["serve"], indent=1, default=str))
    if args.embed:
        from navit_deploy.bench.embed_bench import EmbedBenchConfig, format_embed_table, run_embed_bench

        ecfg = EmbedBenchConfig(onnx, out / "embed", args.embed_workload, args.embed_images,
                                actors=tuple(args.embed_actors), batch_size=args.embed_batch, rounds=args.repeats,
                                seed=args.seed)
        reports["embed"] = run_embed_bench(ecfg, log)
        (out / "embed_bench.json").write_text(json.dumps(reports["embed"], indent=1, default=str))
    if args.json:
        print(json.dumps(reports, indent=1, default=str))
        return _exit_code(args, reports)
    meta = next(iter(reports.values()))["meta"]
    print(f"machine: {meta['machine']}, {meta['cpu_count']} CPUs, Python {meta['python']}")
    if "serve" in reports:
        m = reports["serve"]["meta"]
        print(f"\nnavit serve, {m['clients']} loopback clients, one image per request, {m['rounds']} interleaved "
              f"rounds of {m['requests_per_client']} requests per client (max wait {m['max_wait_ms']:g} ms):\n")
        print(format_serve_table(reports["serve"]))
        for t in reports["serve"]["targets"]:
            print(f"[{'PASS' if t['passed'] else 'MISS'}] {t['workload']:<11} {t['target']}: {t['value']}")
    if "embed" in reports:
        m = reports["embed"]["meta"]
        print(f"\nnavit embed, {m['images']} {m['workload']} JPEG files, batch {m['batch_size']}, "
              f"{m['rounds']} round(s):\n")
        print(format_embed_table(reports["embed"]))
    return _exit_code(args, reports)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.serve or args.embed:
        return cmd_service_bench(args)
    from navit_deploy.bench.measure import STRATEGIES
    from navit_deploy.bench.report import format_table, info_verdict, sweep_markdown, verdict
    from navit_deploy.bench.suite import run_bench
    from navit_deploy.bench.workloads import WORKLOADS
    from navit_deploy.errors import ConfigError

    bad = [s for s in args.strategies if s not in STRATEGIES] + \
          ([w for w in args.workloads if w not in WORKLOADS] if not args.images else [])
    if bad:
        raise ConfigError(f"unknown strategy/workload {bad}; strategies: {list(STRATEGIES)}, workloads: {list(WORKLOADS)}")
    from navit_deploy.console import Progress, progress_enabled

    report = run_bench(config_from_args(args), progress=Progress("navit bench", enabled=progress_enabled(args.progress)))
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return _exit_code(args, report)
    print(format_table(report["rows"]))
    if report["sweep"]:
        print()
        print(sweep_markdown(report["sweep"], report["sweep_best"]))
    s = report["streaming"]
    if s:
        print(f"\ncamera stream: {s['frames']} frames at {s['target_fps']} FPS -> {s['achieved_fps']} FPS, latency p50 "
              f"{s['latency_p50_ms']} ms p99 {s['latency_p99_ms']} ms, service {s['service_ms_mean']} ms/frame")
    if report.get("peers"):
        from navit_deploy.bench.peers import peers_markdown

        print("\n" + peers_markdown(report["peers"]))
    print()
    for t in report["targets"]:
        for c in t["checks"]:
            print(f"[{verdict(c):<4}] {t['workload']:<11} {c['target']}: {c['value']}")
        for c in t.get("info", []):
            print(f"[info] {t['workload']:<11} {c['target']}: {c['value']} ({info_verdict(c)})")
    for s in report["skipped"]:
        print(f"skipped {s.get('key') or s.get('strategy')}: {s['reason']}")
    print(f"\nwrote {Path(args.out) / 'bench.json'}, {Path(args.out) / 'bench.md'}"
          + (f", {', '.join(report['plots'])}" if report["plots"] else ""))
    return _exit_code(args, report)
