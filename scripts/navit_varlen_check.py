#!/usr/bin/env python3
"""NaViT with varlen attention against the dense block-diagonal mask, on the GPU (a step of scripts/gpu_check.sh).

Runs a NaViT (the builtin model, or --model DIR) on packs of random patches three ways: attention "varlen"
(``torch.nn.attention.varlen.varlen_attn``, CUDA, fp16) and "dense" (SDPA with a ``[T, T]`` mask), both in fp16,
and "dense" in float32 as the reference. Reports, per pack, the max abs difference of embeddings and logits,
the lowest embedding cosine and the top-1 agreement of each fp16 run against the reference and of varlen against
dense, and the median forward time of each (CUDA events). The check passes when varlen agrees with dense
within the fp16 parity threshold.

Without a GPU (``--dry-run``) it runs the same code on the CPU in float32 with "segment" (a per-image loop) in
place of varlen on a small pack, records why varlen did not run (the reason its implementation gives), and writes
the same JSON.

    python scripts/navit_varlen_check.py --json out/navit_varlen.json
    python scripts/navit_varlen_check.py --dry-run --json out/navit_varlen.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins" / "packed_attention"))

import torch  # noqa: E402  (after the path: the working tree's navit_deploy)
from bench_kernel import time_ms  # noqa: E402  (the kernel benchmark's timer: CUDA events, or wall time on CPU)

from navit_deploy.errors import BackendUnavailableError  # noqa: E402
from navit_deploy.frontend import PreparedImage, grid_coords  # noqa: E402
from navit_deploy.model.attention import get_attention  # noqa: E402
from navit_deploy.model.weights import load_model  # noqa: E402
from navit_deploy.packing import build_pack  # noqa: E402

FP16_EMBEDDING_ATOL = 5e-2  # navit parity's fp16 threshold (max abs difference of embeddings)
MIN_COSINE = 0.999
PACKS: dict[str, list[tuple[int, int]]] = {
    # name: image patch grids (rows, cols); the builtin model's positional table is 64 x 64
    "mixed_1024": [(8, 8), (5, 7), (1, 1), (3, 3), (2, 30), (16, 2), (6, 6), (4, 9), (1, 64), (12, 12), (7, 3),
                   (10, 10), (2, 2), (9, 5), (11, 13), (1, 5)],
    "256x64_16384": [(8, 8)] * 256,
    "dry_run_small": [(3, 4), (1, 1), (2, 5), (4, 4)],
}


def make_pack(grids: list[tuple[int, int]], patch_dim: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    items = [PreparedImage(rng.standard_normal((h * w, patch_dim)).astype(np.float32), grid_coords(h, w), (h, w),
                           (w * 16, h * 16), (w * 16, h * 16)) for h, w in grids]
    return build_pack(items, list(range(len(items)))).model_inputs()


def compare(out: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    emb, logits = (t.float() for t in out)
    ref_emb, ref_logits = (t.float() for t in ref)
    cos = torch.nn.functional.cosine_similarity(emb, ref_emb, dim=1)
    return {"max_abs_embedding": float((emb - ref_emb).abs().max()), "max_abs_logits": float((logits - ref_logits).abs().max()),
            "min_cosine": float(cos.min()), "top1_agreement": float((logits.argmax(1) == ref_logits.argmax(1)).float().mean())}


def check_pack(model_name: str, name: str, device: str, low: torch.dtype, fast: str, iters: int, warmup: int) -> dict:
    """Run one pack with ``fast`` and ``dense`` attention in ``low`` precision and dense in float32."""
    model = load_model(model_name)
    feed = make_pack(PACKS[name], model.config.patch_dim, seed=len(name))
    inputs = [torch.from_numpy(feed[k]).to(device) for k in ("patches", "coords", "segment_ids", "cu_seqlens")]
    cuda = device == "cuda"
    result: dict[str, Any] = {"pack": name, "images": len(PACKS[name]), "tokens": int(feed["patches"].shape[0]),
                              "dtype": str(low).removeprefix("torch."), "fast": fast}
    with torch.inference_mode():
        ref_model = model.to(device).float().set_attention("dense")
        ref = ref_model(*inputs)
        low_model = load_model(model_name).to(device=device, dtype=low)
        low_inputs = [inputs[0].to(low), *inputs[1:]]
        runs = {}
        for attention in (fast, "dense"):
            low_model.set_attention(attention)
            try:
                runs[attention] = low_model(*low_inputs)
            except BackendUnavailableError as exc:
                result[f"{attention}_not_run"] = str(exc)
                continue
            result[f"{attention}_ms"] = time_ms(lambda: low_model(*low_inputs), iters, warmup, cuda)
            result[f"{attention}_vs_fp32_dense"] = compare(runs[attention], ref)
        if fast in runs:
            result[f"{fast}_vs_dense"] = compare(runs[fast], runs["dense"])
            if "dense_ms" in result:
                result["speedup_vs_dense"] = result["dense_ms"] / result[f"{fast}_ms"]
    agree = result.get(f"{fast}_vs_dense")
    result["ok"] = bool(agree and agree["max_abs_embedding"] <= FP16_EMBEDDING_ATOL and agree["min_cosine"] >= MIN_COSINE)
    return result


def varlen_unavailable_reason() -> str:
    """Why the varlen attention cannot run here, in its own words ("" if it ran on a CPU tensor)."""
    q = torch.zeros(2, 1, 8)
    try:
        get_attention("varlen")(q, q, q, torch.zeros(2, dtype=torch.int64), torch.tensor([0, 2], dtype=torch.int32),
                                1.0)
    except BackendUnavailableError as exc:
        return str(exc)
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin", help="builtin or a model directory")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dry-run", action="store_true", help="no GPU: CPU float32, segment in place of varlen")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"dry_run": args.dry_run, "model": args.model, "torch": torch.__version__}
    if args.dry_run:
        torch.set_num_threads(1)  # a tiny pack: more threads only spin, badly so on a busy machine
        rows = [check_pack(args.model, "dry_run_small", "cpu", torch.float32, "segment", 1, 1)]
        report["varlen_not_run"] = varlen_unavailable_reason()
    elif not torch.cuda.is_available():
        print("error: no CUDA GPU available (torch.cuda.is_available() is False); use --dry-run", file=sys.stderr)
        return 2
    else:
        report["gpu"] = torch.cuda.get_device_name(0)
        rows = [check_pack(args.model, name, "cuda", torch.float16, "varlen", args.iters, args.warmup)
                for name in ("mixed_1024", "256x64_16384")]
    report["rows"] = rows
    report["ok"] = all(r["ok"] for r in rows)
    for r in rows:
        fast = r["fast"]
        agree = r.get(f"{fast}_vs_dense", {})
        print(f"{r['pack']:<14} {r['tokens']:>6} tokens {r['images']:>4} images {r['dtype']}: {fast} "
              f"{r.get(f'{fast}_ms', float('nan')):.3f} ms, dense {r.get('dense_ms', float('nan')):.3f} ms, "
              f"max |d emb| {agree.get('max_abs_embedding', float('nan')):.2e}, "
              f"min cos {agree.get('min_cosine', float('nan')):.6f} -> {'ok' if r['ok'] else 'FAIL'}")
    if args.dry_run:
        print(f"varlen not run: {report['varlen_not_run']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
