"""``navit serve`` (HTTP embedding service) and ``navit embed`` (a collection into Parquet, optionally on Ray)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from navit_deploy.commands.budget_args import add_pixel_budget_args, budget_frontend


def _model_args(p: argparse.ArgumentParser) -> None:
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--onnx", help="an exported .onnx model (ONNX Runtime)")
    model.add_argument("--engine", help="a compiled TensorRT engine")
    p.add_argument("--provider", default="cpu", help="ONNX Runtime provider: cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: ORT's)")
    p.add_argument("--max-patches", type=int, default=None, help="per-image token budget (default: the model's)")
    p.add_argument("--no-upscale", dest="upscale", action="store_false", default=None,
                   help="never enlarge images past their native size")
    add_pixel_budget_args(p)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from navit_deploy.embed import DEFAULT_BATCH

    p = sub.add_parser("serve", help="HTTP embedding service that packs images of concurrent requests together",
                       description="POST /v1/embeddings (raw image body or multipart files), GET /healthz, "
                                   "GET /metrics. Images of concurrent requests wait at most --max-wait-ms and "
                                   "share model calls. Needs the serve extra.")
    _model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port, printed at start)")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="longest an image waits for a fuller pack when a model slot is free (default 0: run what "
                        "has queued while the slots were busy; raise it where a fuller pack costs little more)")
    p.add_argument("--max-queue", type=int, default=256, help="images admitted and unanswered at once (then 503)")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body in MiB (then 413)")
    p.add_argument("--max-connections", type=int, default=256, help="open connections at once (then 503)")
    p.add_argument("--batching", choices=["packed", "per-request"], default="packed",
                   help="packed: across requests (default); per-request: one request per model call (baseline)")
    p.add_argument("--workers", type=int, default=None, help="front-end threads (default: min(4, cores))")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds to finish queued requests on SIGTERM before they are cancelled")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("embed", help="embed a collection of images into Parquet (resumable; --ray for Ray Data)",
                       description="One row per input (path, embedding, tokens, grid, error_type, error), in a "
                                   "folder of Parquet parts. Re-running with the same --out skips what is there.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, globs, or .txt lists of paths")
    _model_args(p)
    p.add_argument("--out", required=True, help="output folder of Parquet parts, e.g. out/embeddings.parquet")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="paths per batch (and per Parquet part)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray Data: a local cluster, or the cluster at ADDRESS (write --ray=ADDRESS after "
                        "the inputs)")
    p.add_argument("--actors", type=int, default=1, help="--ray: actors in the pool (each holds one runner)")
    p.add_argument("--cpus-per-actor", type=float, default=None,
                   help="--ray: CPUs (and ONNX Runtime threads) per actor (default: the cluster's, shared equally, "
                        "less half a CPU per node for the Parquet writers)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, help="--ray: GPUs per actor (GPU nodes)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON")
    p.set_defaults(func=cmd_embed)


def _open(args: argparse.Namespace):
    """Runner, artifact, pipeline (with the budget overrides) and the model path."""
    from navit_deploy.runtime.open import open_runner, pipeline_for

    path = args.onnx or args.engine
    runner, artifact = open_runner(path, provider=args.provider, threads=args.threads)
    fe = _frontend(args, artifact)
    return runner, artifact, (lambda: pipeline_for(runner, artifact, frontend=fe)), path


def _frontend(args: argparse.Namespace, artifact):
    return budget_frontend(args, artifact.frontend)


def _need(module: str, extra: str, what: str) -> None:
    from importlib.util import find_spec

    from navit_deploy.errors import BackendUnavailableError

    if find_spec(module) is None:
        raise BackendUnavailableError(f"{what} needs {module}: pip install 'navit-deploy[{extra}]'")


def cmd_serve(args: argparse.Namespace) -> int:
    for module in ("starlette", "uvicorn", "prometheus_client", "python_multipart", "orjson"):
        _need(module, "serve", "navit serve")
    from pathlib import Path

    from navit_deploy.serve import ServeConfig, create_app
    from navit_deploy.serve.server import serve

    runner, artifact, make_pipeline, path = _open(args)
    config = ServeConfig(max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         max_body_bytes=int(args.max_body_mb * 1024 * 1024), batching=args.batching,
                         workers=args.workers)
    with runner:
        pipe = make_pipeline()
        if args.workers:
            pipe.workers = args.workers

        def announce(host: str, port: int) -> None:
            print(f"navit serve: listening on http://{host}:{port} ({Path(path).name}, {args.batching} batching, "
                  f"pack capacity {pipe.packer.pack_len} tokens, max wait {args.max_wait_ms:g} ms, "
                  f"{pipe.concurrency} model calls at once)", flush=True)

        serve(create_app(pipe, artifact.labels, config, model=Path(path).name), args.host, args.port,
              args.graceful_timeout, args.max_connections, args.log_level, announce)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    _need("pyarrow", "scale", "navit embed")
    from navit_deploy.embed.inputs import expand_inputs
    from navit_deploy.errors import ConfigError

    if args.ray and args.ray != "local" and os.path.exists(args.ray):
        raise ConfigError(f"--ray took {args.ray!r} as the cluster address; put the inputs before --ray, "
                          "or write --ray=ADDRESS")
    paths = expand_inputs(args.inputs)
    path = args.onnx or args.engine
    if args.ray:
        _need("ray", "scale", "navit embed --ray")
        from navit_deploy.embed.local import model_artifact
        from navit_deploy.embed.ray_embed import embed_with_ray

        art = model_artifact(path)
        art.require_pooled("navit embed")
        fe = _frontend(args, art)
        summary = embed_with_ray(paths, path, args.out, address=args.ray, actors=args.actors,
                                 cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                                 batch_size=args.batch_size, provider=args.provider, frontend=fe,
                                 progress=args.progress)
    else:
        from navit_deploy.embed.local import embed_paths, output_metadata

        runner, artifact, make_pipeline, _ = _open(args)
        artifact.require_pooled("navit embed")
        with runner:
            pipe = make_pipeline()
            summary = embed_paths(paths, pipe, args.out, output_metadata(path, artifact, pipe.frontend),
                                  args.batch_size, args.progress)
    if args.json:
        print(json.dumps(summary.to_json(), indent=1))
    else:
        print(f"{summary.output}: {summary.inputs} inputs, {summary.skipped} already there, {summary.embedded} "
              f"embedded ({summary.failed} failed) in {summary.seconds:.1f} s, {summary.images_per_s:.1f} images/s"
              f" [{summary.engine}]", file=sys.stderr)
        for b in summary.broken_parts:
            print(f"  moved aside an unreadable part: {b}", file=sys.stderr)
    return 0
