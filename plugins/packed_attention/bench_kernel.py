#!/usr/bin/env python3
"""Benchmark the NavitPackedAttention kernel against PyTorch on the same packs (needs a CUDA GPU).

Methods, all on identical inputs:
  navit            the kernel through its C API (auto: tensor cores for fp16, FP32 SIMT for fp32)
  navit_simt       the FP32 SIMT kernel forced for fp16 inputs (fp16 only)
  sdpa_loop        torch scaled_dot_product_attention called once per image (default backend)
  sdpa_flash_loop  the same, forced to the FlashAttention backend (fp16 only)
  sdpa_dense_mask  one SDPA call over the whole pack with a dense [T, T] block-diagonal boolean mask
                   (packs up to --dense-max-tokens)
  varlen_attn      torch.nn.attention.varlen.varlen_attn (flash varlen), when this torch has it (fp16/bf16)

Reported per method: median time over --iters runs (CUDA events), speed relative to sdpa_loop, and the
max abs error over the image tokens against a float32 per-image SDPA reference (math backend). A head dim the
kernel has no kernels for (e.g. 72) gets a navit row saying so, and the PyTorch methods are still timed.

    python plugins/packed_attention/bench_kernel.py --dtype float16 float32 --heads 12 --head-dim 64
    python plugins/packed_attention/bench_kernel.py --lib plugins/packed_attention/build/libnavit_packed_attention_kernel.so
    python plugins/packed_attention/bench_kernel.py --dry-run --json out.json   # no GPU: checks library and options

The kernel library is --lib, else $NAVIT_KERNEL_LIB, else plugins/packed_attention/build/, else it is
compiled with nvcc for the current GPU into a temporary directory. --dry-run loads the library, asks it which of
the requested head dims it supports, checks the packs and writes the JSON without timing anything.
"""

from __future__ import annotations

import argparse
import ctypes
import inspect
import json
import math
import sys
import tempfile
import time
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


def load_library(explicit: str | None, compile_if_missing: bool = True) -> ctypes.CDLL:
    try:
        return plugin_lib.load_kernel_library(plugin_lib.find_kernel_library(explicit))
    except PluginError as exc:
        if explicit or not compile_if_missing:
            raise
        print(f"note: {exc}\nnote: compiling the kernel library with nvcc for this GPU...", file=sys.stderr)
    major, minor = torch.cuda.get_device_capability()
    out_dir = tempfile.mkdtemp(prefix="navit_bench_")
    return plugin_lib.load_kernel_library(plugin_lib.compile_kernel_library(out_dir, f"sm_{major}{minor}", werror=False))


def time_ms(fn, iters: int, warmup: int, cuda: bool = True) -> float:
    """Median time of ``fn`` in ms over ``iters`` runs after ``warmup``: CUDA events, or wall time on the CPU."""
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def heads_view(x: torch.Tensor, a: int, e: int, heads: int, head_dim: int) -> torch.Tensor:
    """[e-a, H*D] slice -> [1, H, e-a, D]."""
    return x[a:e].view(e - a, heads, head_dim).transpose(0, 1).unsqueeze(0)


def make_methods(lib, q, k, v, cu, cu_list, heads, head_dim, algo_simt: bool, dense_max_tokens: int):
    total, width = q.shape
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

    if is_fp16:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa_flash_loop():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return sdpa_loop()

        methods["sdpa_flash_loop"] = sdpa_flash_loop
    if total > dense_max_tokens:
        return _add_varlen(methods, q, k, v, cu, cu_list, heads, head_dim)

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
    return _add_varlen(methods, q, k, v, cu, cu_list, heads, head_dim)


def _add_varlen(methods, q, k, v, cu, cu_list, heads, head_dim):
    """Add torch.nn.attention.varlen.varlen_attn when this torch has it (fp16 inputs, a non-empty pack)."""
    width = q.shape[1]
    valid = cu_list[-1]
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    if varlen_attn is not None and q.dtype == torch.float16 and valid > 0:
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lib", help="kernel (or plugin) library exporting navitPackedAttentionLaunch")
    parser.add_argument("--dtype", nargs="+", default=["float16", "float32"], choices=["float16", "float32"])
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, nargs="+", default=[64],
                        help=f"head dims to time (kernels exist for {plugin_lib.SUPPORTED_HEAD_DIMS})")
    parser.add_argument("--packs", nargs="+", default=list(PACKS), choices=list(PACKS))
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--dense-max-tokens", type=int, default=16384, help="skip the dense mask above this")
    parser.add_argument("--no-simt", action="store_true", help="skip the forced-SIMT fp16 run")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: check the library and options, time nothing")
    args = parser.parse_args(argv)
    if args.heads < 1 or args.iters < 1 or args.warmup < 0 or any(d < 1 for d in args.head_dim):
        parser.error("--heads, --iters and --head-dim must be positive, --warmup >= 0")
    return args


def head_dim_support(lib: ctypes.CDLL, head_dims: list[int]) -> dict[int, str]:
    """{head dim: "" if the library has kernels for it, else the reason}."""
    support = {}
    for d in head_dims:
        ok, text = plugin_lib.library_supports_head_dim(lib, d)
        support[d] = "" if ok else f"unsupported head_dim {d}: the kernel library says '{text}'"
    return support


def bench_pack(lib, args, pack: str, dtype_name: str, head_dim: int, unsupported: str) -> list[dict]:
    """Time every method on one pack; one row per method."""
    dtype = getattr(torch, dtype_name)
    lengths, pad = PACKS[pack]
    cu_list = [0]
    for n in lengths:
        cu_list.append(cu_list[-1] + n)
    total = cu_list[-1] + pad
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(total, args.heads * head_dim, device="cuda", generator=gen).to(dtype) for _ in range(3))
    cu = torch.tensor(cu_list, dtype=torch.int32, device="cuda")
    ref = reference(q, k, v, cu_list, args.heads, head_dim)
    valid = cu_list[-1]
    methods = make_methods(lib, q, k, v, cu, cu_list, args.heads, head_dim, not args.no_simt, args.dense_max_tokens)
    results = {}
    for name, fn in methods.items():
        if unsupported and name.startswith("navit"):
            results[name] = (float("nan"), float("nan"), unsupported)
            continue
        try:
            out = fn()
            torch.cuda.synchronize()
            err = (out[:valid].float() - ref[:valid]).abs().max().item() if valid else 0.0
            results[name] = (time_ms(fn, args.iters, args.warmup), err, "")
        except Exception as exc:  # noqa: BLE001 - report and continue with the other methods
            results[name] = (float("nan"), float("nan"), f"{type(exc).__name__}: {exc}"[:120])
    loop_ms = results["sdpa_loop"][0]
    rows = []
    for name, (ms, err, note) in results.items():
        speed = loop_ms / ms if math.isfinite(ms) and ms > 0 else float("nan")
        line = f"{pack:<12} {dtype_name:<8} {head_dim:>4} {name:<16} {ms:>9.3f} {speed:>7.2f}x {err:>9.2e}"
        print(line + (f"  ({note})" if note else ""))
        rows.append({"pack": pack, "tokens": total, "images": len(lengths), "dtype": dtype_name, "heads": args.heads,
                     "head_dim": head_dim, "method": name, "time_ms": ms, "speed_vs_sdpa_loop": speed,
                     "max_abs_err": err, "note": note})
    return rows


def write_json(path: str | None, report: dict) -> None:
    if path:  # NaN (unsupported or failed rows) is written as null: strict JSON
        clean = json.loads(json.dumps(report), parse_constant=lambda _: None)
        Path(path).write_text(json.dumps(clean, indent=2, allow_nan=False))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        lib = load_library(args.lib, compile_if_missing=False)
        support = head_dim_support(lib, args.head_dim)
        for d, why in support.items():
            print(f"head_dim {d}: {why or 'supported'}")
        print(f"dry run: library {lib._name} loaded; packs {', '.join(args.packs)}; "
              f"dtypes {', '.join(args.dtype)}; nothing timed")
        write_json(args.json, {"dry_run": True, "gpu": None, "torch": torch.__version__, "library": lib._name,
                               "head_dims": {str(d): why or "supported" for d, why in support.items()}, "rows": []})
        return 0
    if not torch.cuda.is_available():
        print("error: no CUDA GPU available (use --dry-run to check the setup without one)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    lib = load_library(args.lib)
    support = head_dim_support(lib, args.head_dim)
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs), "
          f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    header = f"{'pack':<12} {'dtype':<8} {'D':>4} {'method':<16} {'time ms':>9} {'vs loop':>8} {'max err':>9}"
    print(header)
    print("-" * len(header))
    rows = []
    for head_dim in args.head_dim:
        for dtype_name in args.dtype:
            for pack in args.packs:
                rows += bench_pack(lib, args, pack, dtype_name, head_dim, support[head_dim])
    write_json(args.json, {"dry_run": False, "gpu": props.name, "sm": f"{props.major}{props.minor}",
                           "torch": torch.__version__, "cuda": torch.version.cuda, "library": lib._name,
                           "head_dims": {str(d): why or "supported" for d, why in support.items()},
                           "iters": args.iters, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
