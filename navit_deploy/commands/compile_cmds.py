"""``navit compile`` (ONNX -> TensorRT engine + sidecar) and ``navit engine-info``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from navit_deploy.compile.compat import PRECISIONS

PROFILE_HELP = (
    "one optimization profile, trtexec/Polygraphy shape syntax: NAME:MIN,OPT,MAX per input with x-separated dims, "
    "e.g. --profile patches:1x768,512x768,1024x768 cu_seqlens:2,17,65 (coords and segment_ids follow patches; a Qwen-VL tower also takes "
    "window_cu_seqlens:MIN,OPT,MAX, windows + 1, its window_segment_ids following patches). "
    "Repeat --profile for several profiles. Default: one profile per pack-length bucket (see --pack-lens)"
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="build a TensorRT engine from an exported ONNX model (writes ENGINE.json too)")
    p.add_argument("--onnx", required=True, help="an exported .onnx model (navit export / navit quantize)")
    p.add_argument("--out", required=True, help="engine file to write (.engine, .plan or .trt)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="default: the ONNX model's precision. TensorRT 10: fp16 from an fp32 model sets the FP16 "
                        "builder flag; int8 needs a Q/DQ model (navit quantize). TensorRT 11: must match the model")
    p.add_argument("--plugin", default=None,
                   help="libnavit_packed_attention_plugin.so for trt-plugin models (default: $NAVIT_PLUGIN_LIB, "
                        "then plugins/packed_attention/build/)")
    p.add_argument("--profile", action="append", nargs="+", default=None, metavar="NAME:MIN,OPT,MAX", help=PROFILE_HELP)
    p.add_argument("--pack-lens", default=None,
                   help="pack-length buckets, one profile each, e.g. 256,512,1024 (default: powers of two from 256 up "
                        "to the model's pack length, plus the pack length)")
    p.add_argument("--max-images", type=int, default=None, help="images per pack (default: the model's max_images)")
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file to load and update")
    p.add_argument("--workspace", type=int, default=None, metavar="MiB", help="builder workspace limit in MiB")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in fp32 layers (faster, ~1e-3 relative error)")
    p.add_argument("--strongly-typed", action="store_true",
                   help="TensorRT 10: build a strongly typed network (precision from the ONNX model, no flags); "
                        "TensorRT 11 always does")
    p.add_argument("--device", type=int, default=0, help="CUDA device to build for")
    p.add_argument("--json", action="store_true", help="print the engine description as JSON")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("engine-info", help="show what an engine was built for, and whether it runs here")
    p.add_argument("engine", help="a TensorRT engine built by navit compile")
    p.add_argument("--device", type=int, default=0, help="CUDA device to check the engine against (default 0)")
    p.add_argument("--json", action="store_true", help="print the description as JSON (errors too, on stdout)")
    p.set_defaults(func=cmd_engine_info)


def request_from_args(args: argparse.Namespace):
    """A :class:`CompileRequest` from parsed arguments (profiles parsed against the model's patch dim)."""
    from navit_deploy.compile.engine import CompileRequest, read_onnx_summary
    from navit_deploy.compile.profiles import parse_pack_lens, parse_profile

    profiles = None
    if args.profile:
        patch_dim = read_onnx_summary(args.onnx).artifact.frontend.patch_dim
        profiles = tuple(parse_profile(entries, patch_dim) for entries in args.profile)
    return CompileRequest(
        onnx=Path(args.onnx), out=Path(args.out), precision=args.precision, plugin=args.plugin, profiles=profiles,
        pack_lens=tuple(parse_pack_lens(args.pack_lens)) if args.pack_lens else None, max_images=args.max_images,
        timing_cache=Path(args.timing_cache) if args.timing_cache else None, workspace_mib=args.workspace,
        tf32=args.tf32, strongly_typed=True if args.strongly_typed else None, device=args.device)


def cmd_compile(args: argparse.Namespace) -> int:
    from navit_deploy.compile.engine import compile_engine, describe_profiles

    res = compile_engine(request_from_args(args))
    if args.json:
        print(json.dumps(res.info.to_dict(), indent=1))
        return 0
    info = res.info
    for note in res.notes:
        print(f"note: {note}")
    flags = ", ".join(info.builder_flags) or "none"
    print(f"built {res.engine_path} ({res.engine_path.stat().st_size / 1e6:.1f} MB, {info.build_seconds:.1f} s) from "
          f"{Path(info.source_onnx).name}\n  TensorRT {info.tensorrt_version} on {info.gpu.describe()}\n  precision "
          f"{info.precision} (model {info.source_precision}, strongly typed: {info.strongly_typed}, builder flags: "
          f"{flags}, tf32: {info.tf32})\n{describe_profiles(info.profiles)}\n  sidecar: {res.sidecar_path}")
    return 0


def cmd_engine_info(args: argparse.Namespace) -> int:
    from navit_deploy.compile.compat import EngineInfo, engine_problems, rebuild_hint, sha256_file
    from navit_deploy.compile.engine import describe_profiles
    from navit_deploy.errors import ArtifactMismatchError, BackendUnavailableError
    from navit_deploy.runtime.artifact import read_artifact

    path = Path(args.engine)
    if not path.is_file():
        raise ArtifactMismatchError(f"engine not found: {path}")
    artifact = read_artifact(path)
    info = EngineInfo.from_artifact(artifact, path)
    problems = engine_problems(info, engine_sha256=sha256_file(path))
    here = None
    try:
        from navit_deploy.compile import trt_env

        version, gpu = trt_env.tensorrt_version(), trt_env.gpu_info(args.device)
        here = {"tensorrt_version": version, "gpu": gpu.to_dict()}
        problems += engine_problems(info, trt_version=version, gpu=gpu)
    except BackendUnavailableError as exc:
        here = {"unavailable": str(exc)}
    if args.json:
        print(json.dumps({"engine": info.to_dict(), "lowering": artifact.lowering, "here": here,
                          "problems": problems}, indent=1))
    else:
        print(f"{path}: {artifact.lowering} lowering, precision {info.precision} (model {info.source_precision})\n"
              f"  built with TensorRT {info.tensorrt_version} on {info.gpu.describe()} at {info.built_at}\n"
              f"  from {info.source_onnx} (sha256 {info.source_onnx_sha256[:12]}…)\n{describe_profiles(info.profiles)}")
        if problems:
            print("  cannot run here: " + "; ".join(problems) + f"\n  {rebuild_hint(path, info)}")
        if "unavailable" in here:
            print(f"  TensorRT/GPU compatibility with this machine not checked: {here['unavailable']}")
        elif not problems:
            print(f"  runs here (TensorRT {here['tensorrt_version']}, device {args.device})")
    return 1 if problems else 0
