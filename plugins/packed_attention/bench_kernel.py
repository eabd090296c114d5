#!/usr/bin/env python3
"""Benchmark the NavitPackedAttention kernel against PyTorch on the same packs (needs a CUDA GPU).

Methods, all on identical inputs:
  navit            the kernel through its C API (auto: tensor cores for fp16, FP32 SIMT for fp32)
  navit_simt       the FP32 SIMT kernel forced for fp16 inputs (fp16 only)
  sdpa_loop        torch scaled_dot_product_attention called once per image (default backend)
  sdpa_dense_mask  one SDPA call over the whole pack with a dense [T, T] block-diagonal boolean mask
  varlen_attn      torch.nn.attention.varlen.varlen_attn (flash varlen), when this torch has it (fp16/bf16)

Reported per method: median time over --iters runs (CUDA events), speed relative to sdpa_loop, and the
max abs error over the image tokens against a float32 per-image SDPA reference (math backend).

    python plugins/packed_attention/bench_kernel.py --dtype float16 float32 --heads 12 --head-dim 64
    python plugins/packed_attention/bench_kernel.py --lib plugins/packed_attention/build/libnavit_packed_attention_kernel.so

The kernel library is --lib, else $NAVIT_KERNEL_LIB, else plugins/packed_attention/build/, else it is
compiled with nvcc for the current GPU into a temporary directory.
"""

from __future__ import annotations

import argparse
import ctypes
import inspect
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from navit_deploy.compile import plugin_lib
from navit_deploy.errors import PluginError

PACKS: dict[str, tuple[list[int], int]] = {
    # name: (image token counts, padding tokens at the end of the pack)
    "1x4096": ([4096], 0),
    "4x1024": ([1024] * 4, 0),
    "mixed_4096": ([1536, 900, 700, 400, 256, 196, 64, 1], 43),
    "64x64": ([64] * 64, 0),
    "256x16": ([16] * 256, 0),
    "mixed_16384": ([4096, 3000, 2500, 2048, 1600, 1024, 900, 576, 400, 196, 36, 9], 0),
}


def load_library(explicit: str | None) -> ctypes.CDLL:
    try:
        return plugin_lib.load_kernel_library(plugin_lib.find_kernel_library(explicit))
    except PluginError as exc:
        if explicit:
            raise
        print(f"note: {exc}\nnote: compiling the kernel library with nvcc for this GPU...", file=sys.stderr)
    major, minor = torch.cuda.get_device_capability()
    out = Path(tempfile.mkdtemp(prefix="navit_bench_")) / plugin_lib.KERNEL_LIBRARY_NAME
    cmd = [
        "nvcc",
        "-std=c++17",
        "-O3",
        "-shared",
        f"-arch=sm_{major}{minor}",
        "-Xcompiler=-fPIC",
        "-cudart=static",
        str(HERE / "packedAttentionKernel.cu"),
        str(HERE / "packedAttentionCApi.cpp"),
        "-o",
        str(out),
    ]
    subprocess.run(cmd, check=True)
    return plugin_lib.load_kernel_library(out)


def time_ms(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def heads_view(x: torch.Tensor, a: int, e: int, heads: int, head_dim: int) -> torch.Tensor:
    """[e-a, H*D] slice -> [1, H, e-a, D]."""
    return x[a:e].view(e - a, heads, head_dim).transpose(0, 1).unsqueeze(0)


def make_methods(lib, q, k, v, cu, cu_list, heads, head_dim, algo_simt: bool):
    total, width = q.shape
    valid = cu_list[-1]
    is_fp16 = q.dtype == torch.float16
    stream = torch.cuda.current_stream().cuda_stream
    out_kernel = torch.empty_like(q)
    methods = {}

    def navit(algo: int):
        def run():
            rc = lib.navitPackedAttentionLaunchAlgo(
                q.data_ptr(),
                k.data_ptr(),
                v.data_ptr(),
                cu.data_ptr(),
                out_kernel.data_ptr(),
                total,
                len(cu_list) - 1,
                heads,
                head_dim,
                0.0,
                is_fp16,
                algo,
                stream,
            )
            if rc != 0:
                raise RuntimeError(plugin_lib.status_string(lib, rc))
            return out_kernel

        return run

    methods["navit"] = navit(plugin_lib.ALGO_AUTO)
    if is_fp16 and algo_simt:
        methods["navit_simt"] = navit(plugin_lib.ALGO_SIMT)

    out_loop = torch.zeros_like(q)

    def sdpa_loop():
        for b in range(len(cu_list) - 1):
            a, e = cu_list[b], cu_list[b + 1]
            if e > a:
                o = F.scaled_dot_product_attention(
                    heads_view(q, a, e, heads, head_dim),
                    heads_view(k, a, e, heads, head_dim),
                    heads_view(v, a, e, heads, head_dim),
                )
                out_loop[a:e] = o.squeeze(0).transpose(0, 1).reshape(e - a, width)
        return out_loop

    methods["sdpa_loop"] = sdpa_loop

    seg = torch.full((total,), -1, dtype=torch.int64, device=q.device)
    for b in range(len(cu_list) - 1):
        seg[cu_list[b] : cu_list[b + 1]] = b
    mask = (seg[:, None] == seg[None, :]) & (seg[:, None] >= 0)
    mask |= torch.eye(total, dtype=torch.bool, device=q.device)  # padding attends to itself: no NaN rows

    def sdpa_dense_mask():
        o = F.scaled_dot_product_attention(
            heads_view(q, 0, total, heads, head_dim),
            heads_view(k, 0, total, heads, head_dim),
            heads_view(v, 0, total, heads, head_dim),
            attn_mask=mask,
        )
        return o.squeeze(0).transpose(0, 1).reshape(total, width)

    methods["sdpa_dense_mask"] = sdpa_dense_mask

    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    if varlen_attn is not None and is_fp16 and valid > 0:
        max_len = max(cu_list[i + 1] - cu_list[i] for i in range(len(cu_list) - 1))
        q3, k3, v3 = (x[:valid].view(valid, heads, head_dim) for x in (q, k, v))
        params = inspect.signature(varlen_attn).parameters
        kwargs = {}
        if "is_causal" in params:
            kwargs["is_causal"] = False

        def varlen():
            o = varlen_attn(q3, k3, v3, cu, cu, max_len, max_len, **kwargs)
            o = o[0] if isinstance(o, tuple) else o
            return o.reshape(valid, width)

        methods["varlen_attn"] = varlen
    return methods


def reference(q, k, v, cu_list, heads, head_dim) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    ref = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    with sdpa_kernel(SDPBackend.MATH):
        for b in range(len(cu_list) - 1):
            a, e = cu_list[b], cu_list[b + 1]
            if e > a:
                o = F.scaled_dot_product_attention(*(heads_view(x.float(), a, e, heads, head_dim) for x in (q, k, v)))
                ref[a:e] = o.squeeze(0).transpose(0, 1).reshape(e - a, q.shape[1])
    return ref


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lib", help="kernel (or plugin) library exporting navitPackedAttentionLaunch")
    parser.add_argument("--dtype", nargs="+", default=["float16", "float32"], choices=["float16", "float32"])
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, nargs="+", default=[64], choices=list(plugin_lib.SUPPORTED_HEAD_DIMS))
    parser.add_argument("--packs", nargs="+", default=list(PACKS), choices=list(PACKS))
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-simt", action="store_true", help="skip the forced-SIMT fp16 run")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("error: no CUDA GPU available", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    lib = load_library(args.lib)
    props = torch.cuda.get_device_properties(0)
    print(
        f"GPU: {props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs), "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    )
    rows = []
    header = f"{'pack':<12} {'dtype':<8} {'D':>4} {'method':<16} {'time ms':>9} {'vs loop':>8} {'max err':>9}"
    print(header)
    print("-" * len(header))
    for head_dim in args.head_dim:
        for dtype_name in args.dtype:
            dtype = getattr(torch, dtype_name)
            for pack in args.packs:
                lengths, pad = PACKS[pack]
                cu_list = [0]
                for n in lengths:
                    cu_list.append(cu_list[-1] + n)
                total = cu_list[-1] + pad
                gen = torch.Generator(device="cuda").manual_seed(0)
                q, k, v = (
                    torch.randn(total, args.heads * head_dim, device="cuda", generator=gen).to(dtype) for _ in range(3)
                )
                cu = torch.tensor(cu_list, dtype=torch.int32, device="cuda")
                ref = reference(q, k, v, cu_list, args.heads, head_dim)
                valid = cu_list[-1]
                methods = make_methods(lib, q, k, v, cu, cu_list, args.heads, head_dim, not args.no_simt)
                results = {}
                for name, fn in methods.items():
                    try:
                        out = fn()
                        torch.cuda.synchronize()
                        err = (out[:valid].float() - ref[:valid]).abs().max().item() if valid else 0.0
                        results[name] = (time_ms(fn, args.iters, args.warmup), err, "")
                    except Exception as exc:  # noqa: BLE001 - report and continue with the other methods
                        results[name] = (float("nan"), float("nan"), f"{type(exc).__name__}: {exc}"[:80])
                loop_ms = results["sdpa_loop"][0]
                for name, (ms, err, note) in results.items():
                    speed = loop_ms / ms if math.isfinite(ms) and ms > 0 else float("nan")
                    line = f"{pack:<12} {dtype_name:<8} {head_dim:>4} {name:<16} {ms:>9.3f} {speed:>7.2f}x {err:>9.2e}"
                    print(line + (f"  ({note})" if note else ""))
                    rows.append(
                        {
                            "pack": pack,
                            "tokens": total,
                            "images": len(lengths),
                            "dtype": dtype_name,
                            "heads": args.heads,
                            "head_dim": head_dim,
                            "method": name,
                            "time_ms": ms,
                            "speed_vs_sdpa_loop": speed,
                            "max_abs_err": err,
                            "note": note,
                        }
                    )
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": props.name, "torch": torch.__version__, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
