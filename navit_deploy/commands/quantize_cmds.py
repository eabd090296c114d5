"""``navit quantize``: INT8 (calibrated, QDQ) or FP16 versions of an exported NaViT, with an accuracy report."""

from __future__ import annotations

import argparse
import json
import sys

from navit_deploy.commands.budget_args import add_pixel_budget_args, budget_frontend


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="INT8 (calibrated) or FP16 version of an exported FP32 model + accuracy report",
                       description="Writes OUT, its OUT.json sidecar (precision set) and OUT's .accuracy.json report "
                                   "(held-out top-1 and agreement against the FP32 model).")
    p.add_argument("--onnx", required=True, help="the FP32 export (navit export)")
    p.add_argument("--precision", required=True, choices=["int8", "fp16"],
                   help="int8: calibrated Q/DQ model; fp16: FP16 weights and compute")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--calib", default=None,
                   help="INT8: folder of calibration images (default: builtin samples + procedural train split)")
    p.add_argument("--max-images", type=int, default=128, help="INT8: calibration images to use (default 128)")
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="INT8 calibration method (default minmax)")
    p.add_argument("--keep-fp32", nargs="*", default=None, metavar="OP",
                   help="what stays in FP32, replacing the default list: groups (attention-scores, pool, head, "
                        "patch-embed, norm, softmax, custom), op types (Softmax), module prefixes (blocks.0.mlp) or "
                        "node names. INT8 default: attention-scores pool head norm softmax custom; FP16 default: "
                        "LayerNormalization. Give the flag alone to keep nothing")
    p.add_argument("--op-types", nargs="+", default=None, metavar="OP",
                   help="INT8: operator types to quantize (default MatMul Gemm)")
    p.add_argument("--activations", choices=["int8", "uint8"], default="int8",
                   help="INT8 activation type: int8 symmetric (TensorRT-compatible, default) or uint8 asymmetric "
                        "(faster on ONNX Runtime x86 CPUs: u8s8 integer GEMM)")
    p.add_argument("--per-tensor", action="store_true", help="INT8: per-tensor instead of per-channel weight scales")
    p.add_argument("--eval-size", type=int, default=200,
                   help="held-out images for the accuracy report (default 200; 0 skips it)")
    p.add_argument("--pack-len", type=int, default=None, help="calibration pack length (must match the model's artifact)")
    p.add_argument("--max-patches", type=int, default=None,
                   help="calibration token budget (must match the model's artifact)")
    add_pixel_budget_args(p)
    p.add_argument("--cache-dir", default=None, help="calibration cache folder (default ~/.cache/navit_deploy/calibration)")
    p.add_argument("--no-cache", action="store_true", help="recalibrate even if cached ranges exist (and cache nothing)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    from navit_deploy.calibration.quantize import quantize_model

    frontend = None
    if any(v is not None for v in (args.max_patches, args.min_pixels, args.max_pixels)):
        import onnx

        from navit_deploy.runtime.artifact import read_artifact

        meta = {p.key: p.value for p in onnx.load(args.onnx, load_external_data=False).metadata_props}
        frontend = budget_frontend(args, read_artifact(args.onnx, meta).frontend)
    res = quantize_model(args.onnx, args.out, args.precision, calib=args.calib, max_images=args.max_images,
                         method=args.method, keep_fp32=args.keep_fp32, op_types=args.op_types,
                         activations=args.activations, per_channel=not args.per_tensor, eval_size=args.eval_size,
                         cache_dir=args.cache_dir, use_cache=not args.no_cache, frontend=frontend,
                         pack_len=args.pack_len, progress=not args.json, threads=args.threads)
    if args.json:
        print(json.dumps(res.to_json(), indent=1, default=str))
        return 0
    d = res.details
    from navit_deploy.runtime.external_data import files_size

    print(f"{args.precision}: {res.path} ({files_size(res.path) / 1e6:.1f} MB, {res.seconds:.1f} s)")
    if args.precision == "int8":
        cal = "cached ranges reused" if d["cache_hit"] else (f"{d['usable_images']} images in {d['packs']} packs")
        print(f"  calibration ({d['method']}): {d['calibration_data']}; {cal}; {d['calibration_s']:.1f} s")
        for f in d["failed_images"][:5]:
            print(f"  skipped {f['image']}: {f['error']}", file=sys.stderr)
        print(f"  quantized {d['quantized_nodes']} {'/'.join(d['op_types'])} nodes (INT8 weights per channel, "
              f"{d['activations']} activations); kept in FP32: {len(res.kept_fp32)} {'/'.join(d['op_types'])} nodes "
              "(all other ops compute in FP32 too)")
    else:
        print(f"  kept in FP32: {len(res.kept_fp32)} nodes ({', '.join(d['keep_fp32_rules']) or 'none'})")
        if "fp16_headroom" in d:
            room = ", ".join(f"{op} {r['max_abs']:.3g}" for op, r in d["fp16_headroom"].items())
            print(f"  largest FP32 activations ({d['fp16_headroom_images']} images; FP16 max 65504): {room}")
    reasons: dict[str, int] = {}
    for why in res.kept_fp32.values():
        reasons[why] = reasons.get(why, 0) + 1
    for why, n in sorted(reasons.items()):
        print(f"    {n:3d} x {why}")
    for w in d.get("warnings", []):
        print(f"  warning: {w}", file=sys.stderr)
    if res.report is not None:
        print(res.report.table())
        print(f"report: {res.report_path}")
    return 0
