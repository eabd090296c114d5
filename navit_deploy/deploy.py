"""``navit deploy``: export every lowering, prove parity, quantize, profile latency, and write a readable report.

Works on every model source: the builtin model, a project model directory, and imported checkpoints (SigLIP 2,
vit-pytorch NaViT, Qwen2.5-VL / Qwen2-VL vision towers), whose parity is checked against their source library
when it is installed. A tower's outputs are its merged visual tokens, compared per image flattened.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from navit_deploy.console import Progress, progress_enabled
from navit_deploy.errors import ConfigError
from navit_deploy.export.lowerings import LOWERINGS
from navit_deploy.parity import THRESHOLDS
from navit_deploy.runtime.external_data import files_size
from navit_deploy.runtime.onnx_runner import native_providers

PARITY_KEYS = ("images", "max_abs_embedding_max", "max_abs_logit_max", "cosine_min", "cosine_mean", "top1_agreement",
               "near_tie_flips", "has_logits")
QUANT_MIN_MEAN_COSINE = 0.99  # embedding models (no labels): quantized vs FP32


# Expected seconds of each stage of the builtin model on the reference machine (2 shared x86 cores; see the
# README): the job bar's weights, so its estimate of the time left follows the slow stages.
# Measured: README "Set up and run" (quick 52 s, full 633 s with other jobs on half the CPUs).
STAGE_SECONDS = {"export": 5.0, "parity": 3.5, "quantize": 8.0, "quantized parity": 2.0, "compile": 1.0,
                 "bench": 25.0, "bench full": 450.0}


class _Stages:
    """Times each stage of the job, shows it on the progress bar and keeps the seconds for the report."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.seconds: dict[str, float] = {}

    @contextmanager
    def run(self, name: str, kind: str) -> Iterator[None]:
        self.progress.stage(name, STAGE_SECONDS[kind])
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - t, 1)
            self.progress.finish_stage()


def deploy(model: str, out: Path, images: str | None = None, quick: bool = False,
           progress: str | bool | None = "auto") -> dict[str, Any]:
    """Run the whole job and write ``out/report.md`` and ``out/report.json``. Returns the JSON report.

    ``progress``: each stage and the benchmark's passes on stderr, with an estimate of the time left
    (``"auto"``: when stderr is a terminal; ``"on"``/``"off"``)."""
    out.mkdir(parents=True, exist_ok=True)
    total = (len(LOWERINGS) * (STAGE_SECONDS["export"] + STAGE_SECONDS["parity"])
             + len(QUANTIZED_VARIANTS) * (STAGE_SECONDS["quantize"] + STAGE_SECONDS["quantized parity"])
             + STAGE_SECONDS["compile"] + STAGE_SECONDS["bench" if quick else "bench full"])
    with Progress("navit deploy", total, enabled=progress_enabled(progress)) as bar:
        stages = _Stages(bar)
        report = _deploy(model, out, images, quick, stages)
    report["stage_seconds"] = stages.seconds
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render_markdown(report))
    return report


def _deploy(model: str, out: Path, images: str | None, quick: bool, stages: _Stages) -> dict[str, Any]:
    from navit_deploy.bench.suite import bench_summary
    from navit_deploy.export.onnx_export import export_onnx
    from navit_deploy.model.weights import load_model, model_digest, model_source
    from navit_deploy.parity_run import parity_images, run_parity

    src = model_source(model)
    net = load_model(model)
    digest = model_digest(model)
    cfg = net.config
    report: dict[str, Any] = {"model": str(model), "family": cfg.family, "source": src.family,
                              "architecture": {"dim": cfg.dim, "depth": cfg.depth, "heads": cfg.heads,
                                               "head_dim": cfg.head_dim, "outputs": list(cfg.outputs)},
                              "weights_sha256": digest, "machine": platform.platform(),
                              "processor": platform.processor() or platform.machine(), "exports": [], "parity": []}
    parity_set = parity_images(images, cache=out / "parity_images")
    for name, low in LOWERINGS.items():
        try:
            with stages.run(f"export {name}", "export"):
                res = export_onnx(net, out / f"navit.{name}.onnx", lowering=name, weights_sha256=digest)
        except ConfigError as exc:  # e.g. the plugin's head dims: say so, export the others
            report["exports"].append({"lowering": name, "skipped": str(exc), "runs_on": low.tensorrt})
            stages.progress.advance(STAGE_SECONDS["parity"])
            continue
        report["exports"].append({"lowering": name, "file": res.path.name, "mb": round(files_size(res.path) / 1e6, 2),
                                  "export_s": round(res.seconds, 1), "runs_on": low.tensorrt,
                                  "ort_providers": list(native_providers(name))})
        native = "cpu" in native_providers(name)
        mode = "onnxruntime-cpu" if native else "reference kernels (CPU)"
        with stages.run(f"parity {name}", "parity"):
            for run in run_parity(model, str(res.path), parity_set, reference_ops=not native):
                report["parity"].append(_parity_row(name, mode, run))
    eval_size = QUICK_EVAL_IMAGES if quick else EVAL_IMAGES
    quant = _quantize(model, out, parity_set, eval_size=eval_size, stages=stages)
    report["quantization"] = quant["rows"]
    report["quantization_images"] = eval_size
    report["parity"] += quant["parity"]
    with stages.run("TensorRT engines", "compile"):
        report["compile"], engine_parity = _compile(model, out, parity_set)
    report["parity"] += engine_parity
    with stages.run("benchmark", "bench" if quick else "bench full"):
        report["bench"] = bench_summary(model, out / "navit.dense.onnx", quick=quick,
                                        onnx_int8=out / f"navit.dense.{ORT_CPU_INT8}.onnx", out=out / "bench",
                                        progress=stages.progress, onnx_mha=_existing(out / "navit.ort-mha.onnx"))
    report["passed"] = all(p["passed"] for p in report["parity"]) and all(q.get("passed", True) for q in quant["rows"])
    return report


def _what(report: dict[str, Any]) -> str:
    """What the rows compare: the embedding, or a VLM tower's visual tokens (per token; cosine per image)."""
    return "visual tokens" if report.get("architecture", {}).get("outputs") == ["tokens"] else "embedding"


def _parity_row(lowering: str, mode: str, run: Any) -> dict[str, Any]:
    s = run.report.summary
    return {"lowering": lowering, "mode": mode, "check": run.check, "reference": run.reference, "note": run.note,
            "passed": run.passed, "failures": run.report.failures, **{k: s[k] for k in PARITY_KEYS}}


# (file tag, precision, INT8 activation type): FP16; INT8 with symmetric int8 activations, the model
# TensorRT builds INT8 engines from; INT8 with uint8 activations, for ONNX Runtime on x86 CPUs, whose
# fast integer GEMM multiplies uint8 activations by int8 weights (VNNI/AVX2 u8s8). The int8-u8 model
# is the one the benchmark's ONNX Runtime CPU INT8 rows run.
QUANTIZED_VARIANTS = (("fp16", "fp16", "int8"), ("int8", "int8", "int8"), ("int8-u8", "int8", "uint8"))
ORT_CPU_INT8 = "int8-u8"


# Held-out images behind the quantization table's top-1 (the README's headline figures use 1,000:
# ``navit quantize --eval-size 1000``).
EVAL_IMAGES = 300
QUICK_EVAL_IMAGES = 100


def _quantize(model: str, out: Path, parity_set: list, eval_size: int, stages: _Stages) -> dict[str, list]:
    """FP16 and INT8 from the dense export: accuracy on held-out images (top-1 where the model has labels,
    embedding cosine otherwise) and parity at each precision's thresholds."""
    from navit_deploy.calibration import quantize_model
    from navit_deploy.parity_run import run_parity

    rows, parity = [], []
    for name, precision, activations in QUANTIZED_VARIANTS:
        with stages.run(f"quantize {name}", "quantize"):
            res = quantize_model(out / "navit.dense.onnx", out / f"navit.dense.{name}.onnx", precision,
                                 activations=activations, eval_size=eval_size, progress=False)
        assert res.report is not None
        row = {**res.report.to_json(), "precision": name, "file": res.path.name,
               "mb": round(files_size(res.path) / 1e6, 2), "seconds": round(res.seconds, 1)}
        if not res.report.has_labels:  # an embedding model: the target is the mean cosine against FP32
            row["passed"] = res.report.cosine_mean >= QUANT_MIN_MEAN_COSINE
        rows.append(row)
        with stages.run(f"parity dense {name}", "quantized parity"):
            for run in run_parity(model, str(res.path), parity_set):
                parity.append(_parity_row(f"dense {name}", "onnxruntime-cpu", run))
    return {"rows": rows, "parity": parity}


# What deploy compiles where TensorRT exists: the dense FP32 export (any TensorRT), the plugin export, and the
# symmetric INT8 model (explicit Q/DQ, what TensorRT 10 and 11 build INT8 engines from).
ENGINES = (("dense", "navit.dense.onnx"), ("trt-plugin", "navit.trt-plugin.onnx"), ("dense int8", "navit.dense.int8.onnx"))


def _compile(model: str, out: Path, parity_set: list) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """TensorRT engines of the exports, each held to the same references, or why not (no TensorRT here)."""
    from navit_deploy.compile import trt_env
    from navit_deploy.errors import BackendUnavailableError, NavitError

    try:
        trt_env.import_tensorrt()
        trt_env.import_cudart()
    except BackendUnavailableError as exc:
        return {"skipped": str(exc)}, []
    from navit_deploy.compile.engine import CompileRequest, compile_engine
    from navit_deploy.parity_run import run_parity

    rows, parity = [], []
    for name, onnx in ENGINES:
        if not (out / onnx).is_file():
            continue
        try:
            res = compile_engine(CompileRequest(out / onnx, out / onnx.replace(".onnx", ".engine")))
            for run in run_parity(model, str(res.engine_path), parity_set):
                parity.append(_parity_row(f"tensorrt {name}", "tensorrt", run))
        except NavitError as exc:  # e.g. no plugin library built: say so, keep the other engines
            rows.append({"engine": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append({"engine": name, "file": res.engine_path.name, "mb": round(res.engine_path.stat().st_size / 1e6, 2),
                     "precision": res.info.precision, "tensorrt": res.info.tensorrt_version,
                     "gpu": res.info.gpu.describe(), "build_s": round(res.info.build_seconds, 1)})
    return {"engines": rows}, parity


def _agreement(p: dict[str, Any]) -> str:
    if not p.get("has_logits", True):
        return "-"
    ties = p.get("near_tie_flips", 0)
    return f"{p['top1_agreement']:.3f}" + (f" ({ties} flipped near-tie{'s' if ties > 1 else ''})" if ties else "")


def _num(x: Any, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


CHECKS = {"pytorch": "PyTorch model", "source pixels": "source library, identical pixels",
          "source files": "source library, from image files", "packing invariance": "alone vs packed"}


def render_markdown(r: dict[str, Any]) -> str:
    """The human-readable deploy report."""
    arch = r.get("architecture", {})
    lines = [f"# navit deploy report: {r['model']}", "",
             f"Family: {r.get('family', 'navit')} ({arch.get('dim')} wide, {arch.get('depth')} layers, {arch.get('heads')} "
             f"heads of {arch.get('head_dim')}; outputs {', '.join(arch.get('outputs', []))}). "
             f"Weights sha256 `{r['weights_sha256'][:16]}…`; machine: {r['machine']} ({r['processor']}).", "",
             f"**Overall: {'PASSED' if r['passed'] else 'FAILED'}**", "", "## Exports", "",
             "| lowering | file | MB | export s | ONNX Runtime providers | TensorRT |", "|---|---|---|---|---|---|"]
    for e in r["exports"]:
        if e.get("skipped"):
            lines.append(f"| {e['lowering']} | not exported: {e['skipped']} | | | | {e['runs_on']} |")
            continue
        lines.append(f"| {e['lowering']} | {e['file']} | {e['mb']} | {e['export_s']} | "
                     f"{', '.join(e['ort_providers']) or '-'} | {e['runs_on']} |")
    refs = sorted({p["reference"] for p in r["parity"] if p.get("check") in ("source pixels", "source files", "pytorch")})
    lines += ["", "## Parity (fp32 thresholds for fp32 exports, looser for fp16/int8)", "",
              "References: " + "; ".join(refs) + ". *Identical pixels*: the source's own preprocessed pixels fed to "
              "both sides (the model alone). *From image files*: each side's own preprocessing (front end included). "
              "*Alone vs packed*: each image in a pack of its own against the runtime's packing.", "",
              "| lowering | checked with | check | images | max abs Δ " + _what(r) + " | max abs Δ logit | min cosine | "
              "top-1 agreement | result |", "|---|---|---|---|---|---|---|---|---|"]
    for p in r["parity"]:
        dlogit = _num(p["max_abs_logit_max"], ".2e") if p.get("has_logits", True) else "-"
        lines.append(f"| {p['lowering']} | {p['mode']} | {CHECKS.get(p.get('check', 'pytorch'), p.get('check'))} | "
                     f"{p['images']} | {p['max_abs_embedding_max']:.2e} | {dlogit} | {p['cosine_min']:.7f} | "
                     f"{_agreement(p)} | {'pass' if p['passed'] else 'FAIL'} |")
    refkern = [p["lowering"] for p in r["parity"] if p.get("mode") == "reference kernels (CPU)"]
    if refkern:
        names = ", ".join(dict.fromkeys(refkern))
        lines += ["", f"*Reference kernels (CPU)*: {names} express attention as a custom node that no ONNX Runtime "
                      "CPU kernel runs (TensorRT's plugin or TRT_Attention, ONNX Runtime's CUDA "
                      "PackedMultiHeadAttention). Here those nodes run numpy reference kernels "
                      "(`navit_deploy/runtime/reference_ops.py`: one per operator, each the same attention within "
                      "each image, in float64), and the "
                      "rest of each graph is the same ONNX Runtime CPU ops as the dense export. So these rows agree "
                      "with each other exactly and with the dense row to float rounding: they prove each graph's "
                      "wiring (shapes, cumulative lengths, token offsets), not the GPU kernels' arithmetic."]
    notes = sorted({p["note"] for p in r["parity"] if p.get("note")})
    lines += ["", *[f"Note: {n}." for n in notes]] if notes else []
    if any(p.get("near_tie_flips") for p in r["parity"]):
        lines += ["", f"*Near-tie*: the reference's top-1 logit led the runner-up by less than "
                      f"{THRESHOLDS['int8'].tie_margin} (INT8's logit noise is a few hundredths); a flip there is "
                      "reported but not counted against the agreement threshold."]
    if r.get("quantization"):
        labelled = all(q.get("has_labels", True) for q in r["quantization"])
        n_eval = r.get("quantization_images") or r["quantization"][0].get("images")
        if labelled:
            lines += ["", f"## Quantization ({n_eval} held-out images, against the FP32 export)", "",
                      f"Top-1 on the first {n_eval} images of the held-out split (one image is "
                      f"{100 / max(1, n_eval):.1f} points; the sampling error of a top-1 near 0.5 is about "
                      f"±{100 * (0.25 / max(1, n_eval)) ** 0.5:.0f} points). The README's headline top-1 is on all "
                      "1,000 held-out images (`navit eval`; `navit quantize --eval-size 1000` for the quantized "
                      "models). Quantized and FP32 run on the same images, so their difference and the agreement "
                      "are exact for these images.", "",
                      "| precision | file | MB | top-1 FP32 | top-1 quantized | Δ points | top-1 agreement | min cosine | "
                      "max abs Δ logit | time s |", "|---|---|---|---|---|---|---|---|---|---|"]
            for q in r["quantization"]:
                lines.append(f"| {q['precision']} | {q['file']} | {q['mb']} | {q['fp32_top1']:.3f} | {q['quant_top1']:.3f} | "
                             f"{q['top1_delta_points']:+.1f} | {q['top1_agreement']:.3f} | {q['cosine_min']:.5f} | "
                             f"{q['max_abs_logit_diff']:.3g} | {q['seconds']} |")
        else:
            kind = "VLM tower, visual tokens" if _what(r) != "embedding" else "embedding model"
            lines += ["", f"## Quantization ({kind}: cosine against the FP32 export on {r['quantization'][0]['images']} "
                          f"images; target mean >= {QUANT_MIN_MEAN_COSINE})", "",
                      f"| precision | file | MB | mean cosine | min cosine | max abs Δ {_what(r)} | time s | target |",
                      "|---|---|---|---|---|---|---|---|"]
            for q in r["quantization"]:
                lines.append(f"| {q['precision']} | {q['file']} | {q['mb']} | {q['cosine_mean']:.5f} | {q['cosine_min']:.5f} | "
                             f"{q['max_abs_embedding_diff']:.3g} | {q['seconds']} | {'pass' if q.get('passed', True) else 'MISS'} |")
        lines += ["", "*int8*: symmetric int8 activations, what TensorRT builds INT8 engines from; *int8-u8*: "
                  "uint8 activations, ONNX Runtime's faster integer GEMM on x86 CPUs (used for the benchmark's "
                  "INT8 rows). Both keep LayerNorm, softmax, GELU, the attention scores and the pooling head in FP32."]
    comp = r.get("compile") or {}
    lines += ["", "## TensorRT engines", ""]
    if comp.get("skipped"):
        lines.append(f"Not compiled: {comp['skipped']}")
    for e in comp.get("engines", []):
        lines.append(f"- {e['engine']}: " + (e["error"] if "error" in e else
                     f"{e['file']} ({e['mb']} MB, {e['precision']}, TensorRT {e['tensorrt']} on {e['gpu']}, {e['build_s']} s)"))
    lines += ["", "Reference kernels check the graph around custom nodes (wiring, shapes, cumulative lengths, "
              "token offsets); the real TensorRT plugin, TensorRT's TRT_Attention and ONNX Runtime's CUDA "
              "PackedMultiHeadAttention kernels need a GPU.", "",
              ]
    if r.get("bench"):
        from navit_deploy.bench.suite import summary_markdown

        lines += [summary_markdown(r["bench"])]
    if r.get("stage_seconds"):
        total = sum(r["stage_seconds"].values())
        lines += ["", f"## Time per stage ({total:.0f} s in all)", "", "| stage | s |", "|---|---|"]
        lines += [f"| {name} | {sec:g} |" for name, sec in r["stage_seconds"].items()]
    for section in r.get("extra_sections", []):
        lines += ["", section]
    return "\n".join(lines) + "\n"


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None
