"""``navit export``, ``navit parity``, ``navit infer`` and ``navit deploy``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from navit_deploy.commands.budget_args import add_pixel_budget_args, budget_frontend
from navit_deploy.export.lowerings import LOWERINGS


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a NaViT to ONNX with dynamic token/image axes")
    p.add_argument("--model", default="builtin", help="'builtin' or a model directory")
    p.add_argument("--out", required=True, help="output .onnx path (a .onnx.json sidecar is written beside it)")
    p.add_argument("--attention", default="dense", help=f"attention lowering: {', '.join(LOWERINGS)}")
    p.add_argument("--pack-len", type=int, default=1024, help="default pack length recorded for the runtime")
    p.add_argument("--max-images", type=int, default=64, help="images per pack recorded for the runtime")
    p.add_argument("--opset", type=int, default=20,
                   help="ONNX opset, 17-20 (default 20: one Gelu node; TensorRT >= 10.0 and ONNX Runtime parse it)")
    p.add_argument("--external-data-threshold", type=int, default=None, metavar="BYTES",
                   help="weights over this many bytes are saved beside the model as OUT.data (ONNX external data; "
                        "default 1.8e9, under protobuf's 2 GB limit; 0 always)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("parity", help="compare an exported model (or engine) with its reference, image by image",
                       description="The reference is the PyTorch model for project models, and the source library "
                                   "(transformers' SigLIP 2, vit-pytorch's NaViT) for imported ones, when installed.")
    p.add_argument("--model", default="builtin", help="'builtin', a model directory, or a SigLIP 2 / Qwen2(.5)-VL / vit-pytorch checkpoint")
    p.add_argument("--onnx", required=True, help="an exported .onnx model or a TensorRT engine")
    p.add_argument("--images", default=None, help="folder of images (default: the builtin real+generated samples)")
    p.add_argument("--provider", default="cpu", help="ONNX Runtime provider: cpu (default) or cuda")
    p.add_argument("--precision", default=None, help="thresholds to apply (default: the artifact's precision)")
    p.add_argument("--reference-ops", action="store_true",
                   help="run custom-node lowerings on CPU with reference kernels (validation only)")
    p.add_argument("--no-source", action="store_true",
                   help="for imported models: compare with the converted PyTorch model, not the source library")
    p.add_argument("--json", action="store_true", help="print the checks as JSON (errors too, on stdout)")
    p.set_defaults(func=cmd_parity)

    p = sub.add_parser("infer", help="run an exported model on image files")
    p.add_argument("--onnx", required=True, help="an exported .onnx model or a TensorRT engine")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--provider", default="cpu", help="ONNX Runtime provider: cpu (default) or cuda")
    p.add_argument("--top-k", type=positive_int, default=3, help="labels to show per image (default 3; >= 1)")
    p.add_argument("--pack-len", type=positive_int, default=None,
                   help="fixed packs of N tokens, padded (default: the runtime's packing policy for the model)")
    p.add_argument("--max-patches", type=positive_int, default=None,
                   help="per-image token budget (default: the model's; within its positional table, max_grid)")
    p.add_argument("--max-image-pixels", type=positive_int, default=None,
                   help="decompression-bomb limit in pixels (default: the model's, 89,478,485)")
    add_pixel_budget_args(p)
    p.add_argument("--reference-ops", action="store_true",
                   help="run custom-node lowerings (trt-plugin, ort-packed, trt-native) on CPU with reference "
                        "kernels (validation only, slow)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per image (sizes are width x height, grid is rows x cols; errors "
                        "too, on stdout)")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("deploy", help="export, check parity and profile in one go; writes DIR/report.md")
    p.add_argument("--model", default="builtin",
                   help="'builtin' (default), a model directory, or a SigLIP 2 / Qwen2(.5)-VL / vit-pytorch NaViT checkpoint")
    p.add_argument("--out", required=True, help="output directory (exports, engines, report.md, report.json)")
    p.add_argument("--images", default=None, help="parity images (default: builtin samples)")
    p.add_argument("--quick", action="store_true", help="fewer images and repeats in the latency profile")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress of each stage on stderr (auto: when stderr is a terminal)")
    p.set_defaults(func=cmd_deploy)


def cmd_export(args: argparse.Namespace) -> int:
    from navit_deploy.export.onnx_export import export_onnx
    from navit_deploy.model.weights import load_model, model_digest

    model = load_model(args.model)
    digest = model_digest(args.model)
    from navit_deploy.runtime.external_data import ARTIFACT_KEY, EXTERNAL_DATA_THRESHOLD, files_size

    threshold = EXTERNAL_DATA_THRESHOLD if args.external_data_threshold is None else args.external_data_threshold
    res = export_onnx(model, args.out, lowering=args.attention, weights_sha256=digest, pack_len=args.pack_len,
                      max_images=args.max_images, opset=args.opset, external_data_threshold=threshold)
    data = res.artifact.extra.get(ARTIFACT_KEY)
    print(f"exported {args.model} -> {res.path} ({args.attention}, {files_size(res.path) / 1e6:.1f} MB, {res.seconds:.1f} s); "
          f"runs on: {LOWERINGS[args.attention].tensorrt}")
    if data:
        print(f"  weights in {res.path.with_name(data)} (ONNX external data): keep it beside {res.path.name}")
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    from navit_deploy.parity_run import parity_images, render_runs, run_parity

    runs = run_parity(args.model, args.onnx, parity_images(args.images), args.provider, args.precision,
                      args.reference_ops, source=not args.no_source)
    if args.json:
        print(json.dumps({"passed": all(r.passed for r in runs), "checks": [r.to_json() for r in runs]}, indent=1))
    else:
        print(render_runs(runs))
    return 0 if all(r.passed for r in runs) else 1


# How to read ``navit infer --json``'s sizes; said in each result, as the numbers alone do not tell.
INFER_UNITS = {"grid": "patches, rows x cols", "resized_size": "pixels, width x height, what the model saw",
               "original_size": "pixels, width x height, the file (EXIF orientation applied)"}


def cmd_infer(args: argparse.Namespace) -> int:
    from navit_deploy.runtime.open import open_runner, pipeline_for

    runner, artifact = open_runner(args.onnx, provider=args.provider, reference_ops=args.reference_ops)
    fe = budget_frontend(args, artifact.frontend) or artifact.frontend  # --max-patches, --min/--max-pixels
    if args.max_image_pixels is not None:
        fe = fe.replace(max_image_pixels=args.max_image_pixels)
    with runner:
        results = pipeline_for(runner, artifact, frontend=fe, pack_len=args.pack_len).run(args.images)
    labels = artifact.labels
    entries = [r.to_json(labels, k=args.top_k) for r in results]
    for e in entries:
        if "error" not in e:
            e["units"] = INFER_UNITS
    if args.json:
        print(json.dumps(entries, indent=1))
    else:
        for e in entries:
            if "error" in e:
                print(f"{e['path']}: ERROR {e['error_type']}: {e['error']}", file=sys.stderr)
                continue
            size = f"resized {e['resized_size'][0]}x{e['resized_size'][1]}"
            if e.get("output_kind") == "tokens":  # a VLM tower: merged visual tokens, no pooled embedding
                n, dim = e["visual_tokens_shape"]
                print(f"{e['path']}: {n} visual tokens x {dim} | {e['tokens']} patch tokens, {size}")
                continue
            top = ", ".join(f"{t['label']} {t['score']:.3f}" for t in e.get("top_k", [])) or "embedding"
            print(f"{e['path']}: {top} | |emb| {e['embedding_norm']:.2f} | {e['tokens']} tokens, {size}")
    return 1 if any("error" in e for e in entries) else 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from navit_deploy.deploy import deploy

    report = deploy(args.model, Path(args.out), images=args.images, quick=args.quick, progress=args.progress)
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0 if report["passed"] else 1
