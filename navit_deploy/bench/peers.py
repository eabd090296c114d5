"""Peers: the same weights and images through the source library's own path, timed beside the runtime.

For a SigLIP 2 checkpoint: transformers' ``Siglip2ImageProcessor`` (the PIL one: the torchvision one does not
load beside the CPU build of torch here) and ``Siglip2VisionModel`` with ``sdpa`` and ``eager`` attention, at
batches of 8 and 32, against the project's pipeline on ONNX Runtime CPU (FP32 and INT8 when given), end to end
from JPEG files on disk to embeddings, at the model's own preprocessing (both sides compute the same outputs;
the first round checks it). Every configuration runs once per round, round-robin, so ratios are paired round
by round. GFLOP/s count the work each side executes (transformers pads every image to ``max_num_patches``).

For a Qwen2.5-VL / Qwen2-VL checkpoint: transformers' ``Qwen2VLImageProcessor`` (PIL) and the vision tower
(``sdpa``, ``eager``), several images per call as a VLM batches them (pixel rows concatenated, ``grid_thw``),
against the runtime's merged visual tokens, both at the same ``max_pixels`` (the model's, or the bench's
``--max-patches`` x patch^2).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PEER_TARGETS = {"fp32": 1.6, "int8": 2.5}  # images/s against transformers sdpa at batch 8, end to end
QWEN_PEER_TARGETS = {"fp32": 1.5}  # issue 13: ONNX Runtime CPU FP32 >= 1.5x transformers at equal outputs
BASELINE = "transformers sdpa b8"
PEERS = ("transformers",)


def workload_files(model_frontend: Any, n: int, seed: int, out: Path, name: str = "mixed") -> list[str]:
    """``n`` images of a workload rendered and written as JPEG files (quality 90), as a service receives them."""
    from navit_deploy.bench.workloads import make_workload, render_workload

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(render_workload(make_workload(name, n, seed), seed)):
        p = out / f"{name}_{i:04d}.jpg"
        img.save(p, "JPEG", quality=90)
        paths.append(str(p))
    return paths


def transformers_siglip2(path: str | Path, attn: str, batch: int) -> Callable[[Sequence[str]], tuple[list, int]]:
    """transformers' own path: load_image, the processor (padded to ``max_num_patches``), the vision model."""
    import torch
    from transformers.image_utils import load_image

    from navit_deploy.importers.reference import Siglip2Reference

    ref = Siglip2Reference(path, attn_implementation=attn)

    def run(files: Sequence[str]) -> tuple[list, int]:
        outs, tokens = [], 0
        for s in range(0, len(files), batch):
            inputs = ref.processor(images=[load_image(f) for f in files[s:s + batch]], return_tensors="pt")
            tokens += int(inputs["pixel_values"].shape[0] * inputs["pixel_values"].shape[1])
            with torch.inference_mode():
                outs += list(ref.model(**inputs).pooler_output.numpy())
        return outs, tokens

    return run


def transformers_qwen_vl(path: str | Path, attn: str, batch: int,
                         max_pixels: int | None = None) -> Callable[[Sequence[str]], tuple[list, int]]:
    """transformers' own path for a Qwen-VL tower: load_image, the processor (at ``max_pixels``), the tower on
    ``batch`` images per call; the merged tokens of each image, flattened."""
    import torch
    from transformers.image_utils import load_image

    from navit_deploy.importers.reference_qwen import QwenVLReference

    ref = QwenVLReference(path, attn_implementation=attn)
    kw = {"max_pixels": max_pixels} if max_pixels else {}

    def run(files: Sequence[str]) -> tuple[list, int]:
        outs, tokens = [], 0
        for s in range(0, len(files), batch):
            inputs = ref.processor(images=[load_image(f) for f in files[s:s + batch]], return_tensors="pt", **kw)
            grid = inputs["image_grid_thw"]
            tokens += int(inputs["pixel_values"].shape[0])
            with torch.inference_mode():
                merged = ref.model(inputs["pixel_values"], grid_thw=grid).pooler_output.numpy()
            sizes = [int(t * h * w) // ref.merge ** 2 for t, h, w in grid.tolist()]
            outs += [x.reshape(-1) for x in np.split(merged, np.cumsum(sizes)[:-1])]
        return outs, tokens

    return run


def _ours(onnx: Path, max_pixels: int | None = None) -> tuple[Any, Callable[[Sequence[str]], tuple[list, int]], Any]:
    from navit_deploy.runtime.open import open_runner, pipeline_for

    runner, art = open_runner(onnx)
    runner.activate()
    pipe = pipeline_for(runner, art)
    if max_pixels:
        pipe = pipe.with_budget(max_pixels=max_pixels)

    def run(files: Sequence[str]) -> tuple[list, int]:
        res = pipe.run(list(files))
        return [r.vector for r in res], pipe.stats.computed_tokens

    return runner, run, pipe


def run_peers(model: str, onnx: Path, onnx_int8: Path | None, n: int = 32, repeats: int = 3, seed: int = 0,
              peers: Sequence[str] = PEERS, log: Callable[[str], None] = print,
              max_patches: int | None = None, max_pixels: int | None = None,
              onnx_mha: Path | None = None) -> dict[str, Any]:
    """The peers' rows and ratios (see the module docstring). Qwen-VL: both sides at ``max_pixels`` (or
    ``max_patches * patch^2``) instead of the model's own. ``onnx_mha``: also time the ``ort-mha`` export (row
    ``navit-deploy ORT fp32 ort-mha``); a precision's target is judged on its fastest row."""
    from navit_deploy.bench.flops import ModelShape, gemm_peak_gflops
    from navit_deploy.model.weights import model_config, model_source

    from navit_deploy.errors import ConfigError

    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ConfigError(f"unknown peer(s) {unknown}; choose from {list(PEERS)}")
    src = model_source(model)
    if "transformers" in peers and src.family not in ("siglip2", "qwen-vl"):
        return {"skipped": f"no transformers peer for a {src.family} model (SigLIP 2 and Qwen-VL checkpoints only)"}
    cfg = model_config(model)
    qwen = src.family == "qwen-vl"
    if qwen and max_pixels is None and max_patches:
        max_pixels = max_patches * cfg.frontend.patch_size ** 2
    elif not qwen:
        max_pixels = None
    shape = ModelShape.from_config(cfg)
    peak = gemm_peak_gflops()
    configs: dict[str, Callable[[Sequence[str]], tuple[list, int]]] = {}
    runners = []
    r32, configs["navit-deploy ORT fp32"], _ = _ours(onnx, max_pixels)
    runners.append(r32)
    if onnx_mha is not None:
        rm, configs["navit-deploy ORT fp32 ort-mha"], _ = _ours(onnx_mha, max_pixels)
        runners.append(rm)
    if onnx_int8 is not None:
        r8, configs["navit-deploy ORT int8"], _ = _ours(onnx_int8, max_pixels)
        runners.append(r8)
    for attn in ("sdpa", "eager"):
        for batch in (8, 32):
            if qwen:
                if batch == 8 or attn == "sdpa":
                    configs[f"transformers {attn} b{batch}"] = transformers_qwen_vl(src.path, attn, batch, max_pixels)
            else:
                configs[f"transformers {attn} b{batch}"] = transformers_siglip2(src.path, attn, batch)
    with tempfile.TemporaryDirectory(prefix="navit-peers-") as tmp:
        files = workload_files(cfg.frontend, n, seed, Path(tmp))
        budget = (f"max_pixels {max_pixels or cfg.frontend.max_pixels}" if qwen
                  else f"{cfg.frontend.max_patches} patches")
        log(f"[peers] {len(files)} JPEG files of the mixed workload at the model's preprocessing "
            f"({cfg.frontend.budget}, {budget}); {len(configs)} configurations")
        # Warm-up: every file once through every configuration. ONNX Runtime plans memory per input shape, so a
        # first pass over only a few files left the first timed round slow (1.23x against 1.83-2.00x after).
        for name, fn in configs.items():
            fn(files)
        rounds: dict[str, list[float]] = {k: [] for k in configs}
        tokens: dict[str, int] = {}
        outputs: dict[str, list] = {}
        for k in range(max(1, repeats)):
            for name, fn in configs.items():
                t0 = time.perf_counter()
                outs, tok = fn(files)
                dt = time.perf_counter() - t0
                rounds[name].append(len(files) / dt)
                tokens[name] = tok
                outputs.setdefault(name, outs)
                log(f"  round {k + 1}: {name:<24} {len(files) / dt:7.2f} img/s")
    for r in runners:
        r.deactivate()
    report = _report(rounds, tokens, outputs, shape, peak, len(files), cfg, QWEN_PEER_TARGETS if qwen else PEER_TARGETS)
    if qwen:
        report["frontend"] = {"budget": "pixels", "max_patches": (max_pixels or cfg.frontend.max_pixels)
                              // cfg.frontend.patch_size ** 2, "max_pixels": max_pixels or cfg.frontend.max_pixels}
    return report


def _report(rounds: dict[str, list[float]], tokens: dict[str, int], outputs: dict[str, list], shape: Any, peak: float,
            n: int, cfg: Any, goals: dict[str, float] = PEER_TARGETS) -> dict[str, Any]:
    from navit_deploy.bench.flops import model_flops

    base = rounds.get(BASELINE)
    rows = []
    ref = outputs.get(BASELINE)  # per image: a pooled vector, or a VLM tower's merged tokens flattened
    for name, rates in rounds.items():
        med = float(np.median(rates))
        # Executed work: tokens each side ran through the linear layers (transformers pads to max_num_patches).
        per_image_tokens = tokens[name] / n
        flops = model_flops(shape, [int(round(per_image_tokens))], None, "varlen")["total"]
        row: dict[str, Any] = {"config": name, "images_per_s": round(med, 3), "images_per_s_runs": [round(x, 3) for x in rates],
                               "computed_tokens_per_image": round(per_image_tokens, 1),
                               "gflop_per_s": round(flops * med / 1e9, 1), "fraction_of_peak": round(flops * med / 1e9 / peak, 3)}
        if base:
            q = [a / b for a, b in zip(rates, base)]
            row["vs_baseline"] = [round(float(np.median(q)), 3), round(min(q), 3), round(max(q), 3)]
        if ref is not None and name in outputs:
            pairs = list(zip(outputs[name], ref, strict=True))
            row["max_abs_vs_baseline"] = max(float(np.abs(g - r).max()) for g, r in pairs)
            row["min_cosine_vs_baseline"] = min(float(g @ r / np.linalg.norm(g) / np.linalg.norm(r)) for g, r in pairs)
        rows.append(row)
    targets = []
    for precision, goal in goals.items():
        ours = [r for r in rows if r["config"].split(" ")[:3] == ["navit-deploy", "ORT", precision]
                and "vs_baseline" in r]
        if ours:
            row = max(ours, key=lambda r: r["vs_baseline"][0])
            targets.append({"target": f"{precision} >= {goal}x {BASELINE}, end to end from JPEG files "
                                      f"({row['config']}, the fastest {precision} row)",
                            "value": f"{row['images_per_s']:.2f} vs {next(r for r in rows if r['config'] == BASELINE)['images_per_s']:.2f} img/s "
                                     f"(paired median {row['vs_baseline'][0]:.2f}x, rounds {row['vs_baseline'][1]:.2f}-"
                                     f"{row['vs_baseline'][2]:.2f}x)", "ratio": row["vs_baseline"][0],
                            "passed": row["vs_baseline"][0] >= goal})
    return {"images": n, "frontend": {"budget": cfg.frontend.budget, "max_patches": cfg.frontend.max_patches},
            "peak_gemm_gflop_per_s": round(peak, 1), "rows": rows, "targets": targets, "baseline": BASELINE}


def peers_markdown(peers: dict[str, Any]) -> str:
    """The benchmark report's peers section."""
    if peers.get("skipped"):
        return f"## Peers\n\nSkipped: {peers['skipped']}\n"
    lines = [f"## Peers: the same weights through transformers ({peers['images']} JPEG files, "
             f"{peers['frontend']['budget']} at {peers['frontend']['max_patches']} patches, end to end)", "",
             f"Float32 GEMM peak (numpy) in the same run: {peers['peak_gemm_gflop_per_s']} GFLOP/s. Ratios are paired "
             f"round by round against {peers['baseline']}; GFLOP/s count each side's executed tokens.", "",
             "| configuration | images/s | vs baseline (rounds) | tokens/image | GFLOP/s | of peak | max abs vs baseline |",
             "|---|---|---|---|---|---|---|"]
    for r in peers["rows"]:
        vs = r.get("vs_baseline")
        lines.append(f"| {r['config']} | {r['images_per_s']:.2f} | "
                     + (f"{vs[0]:.2f}x ({vs[1]:.2f}-{vs[2]:.2f})" if vs else "-")
                     + f" | {r['computed_tokens_per_image']:.0f} | {r['gflop_per_s']:.0f} | {r['fraction_of_peak']:.0%} | "
                     + (f"{r['max_abs_vs_baseline']:.1e}" if "max_abs_vs_baseline" in r else "-") + " |")
    for t in peers["targets"]:
        lines.append(f"- {'pass' if t['passed'] else 'MISS'}: {t['target']}: {t['value']}")
    return "\n".join(lines) + "\n"
