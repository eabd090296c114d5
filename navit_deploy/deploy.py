"""``navit deploy``: export every lowering, prove parity, profile latency, and write a readable report."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from navit_deploy.export.lowerings import LOWERINGS
from navit_deploy.runtime.onnx_runner import native_providers


def _profile(images: list, model: str, onnx_path: Path, repeats: int) -> list[dict[str, Any]]:
    """Images/s end to end (front end + packing + model) for PyTorch eager and ONNX Runtime CPU, side by side."""
    from navit_deploy.runtime.open import open_runner, pipeline_for
    from navit_deploy.runtime.torch_runner import TorchRunner

    onnx_runner, artifact = open_runner(onnx_path, provider="cpu")
    rows = []
    for name, runner in (("pytorch-eager (dense)", TorchRunner(model, attention="dense")),
                         ("pytorch-eager (segment loop)", TorchRunner(model, attention="segment")),
                         ("onnxruntime-cpu (dense)", onnx_runner)):
        with runner:
            pipe = pipeline_for(runner, artifact)
            pipe.run(images[:8])  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                pipe.run(images)
            wall = time.perf_counter() - start
        rows.append({"backend": name, "images_per_s": round(len(images) * repeats / wall, 2),
                     "ms_per_image": round(1000 * wall / (len(images) * repeats), 3),
                     "padding_fraction": round(pipe.stats.padding_fraction, 4)})
    return rows


def deploy(model: str, out: Path, images: str | None = None, quick: bool = False) -> dict[str, Any]:
    """Run the whole job and write ``out/report.md`` and ``out/report.json``. Returns the JSON report."""
    from navit_deploy.bench.workloads import make_workload, render_workload
    from navit_deploy.commands.deploy_cmds import parity_images, run_parity
    from navit_deploy.export.onnx_export import export_onnx
    from navit_deploy.model.weights import WEIGHTS_FILE, load_model, resolve_model_dir, weights_hash

    out.mkdir(parents=True, exist_ok=True)
    net = load_model(model)
    digest = weights_hash(resolve_model_dir(model) / WEIGHTS_FILE)
    report: dict[str, Any] = {"model": str(model), "weights_sha256": digest, "machine": platform.platform(),
                              "processor": platform.processor() or platform.machine(), "exports": [], "parity": []}
    parity_set = parity_images(images)
    for name, low in LOWERINGS.items():
        res = export_onnx(net, out / f"navit.{name}.onnx", lowering=name, weights_sha256=digest)
        report["exports"].append({"lowering": name, "file": res.path.name, "mb": round(res.path.stat().st_size / 1e6, 2),
                                  "export_s": round(res.seconds, 1), "runs_on": low.tensorrt,
                                  "ort_providers": list(native_providers(name))})
        native = "cpu" in native_providers(name)
        par = run_parity(model, str(res.path), parity_set, reference_ops=not native)
        report["parity"].append({"lowering": name, "mode": "onnxruntime-cpu" if native else "reference kernels (CPU)",
                                 "passed": par.passed, **{k: par.summary[k] for k in (
                                     "images", "max_abs_embedding_max", "max_abs_logit_max", "cosine_min",
                                     "top1_agreement")}})
    wl = make_workload("mixed", 24 if quick else 64)
    bench_images = list(render_workload(wl))
    report["latency"] = {"workload": f"mixed ({len(bench_images)} images)",
                         "rows": _profile(bench_images, model, out / "navit.dense.onnx", 1 if quick else 3)}
    report["passed"] = all(p["passed"] for p in report["parity"])
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render_markdown(report))
    return report


def render_markdown(r: dict[str, Any]) -> str:
    """The human-readable deploy report."""
    lines = [f"# navit deploy report: {r['model']}", "",
             f"Weights sha256 `{r['weights_sha256'][:16]}…`; machine: {r['machine']} ({r['processor']}).", "",
             f"**Overall: {'PASSED' if r['passed'] else 'FAILED'}**", "", "## Exports", "",
             "| lowering | file | MB | export s | ONNX Runtime providers | TensorRT |", "|---|---|---|---|---|---|"]
    for e in r["exports"]:
        lines.append(f"| {e['lowering']} | {e['file']} | {e['mb']} | {e['export_s']} | "
                     f"{', '.join(e['ort_providers']) or '-'} | {e['runs_on']} |")
    lines += ["", "## Parity against PyTorch (fp32)", "",
              "| lowering | checked with | images | max abs Δ embedding | max abs Δ logit | min cosine | top-1 agreement | result |",
              "|---|---|---|---|---|---|---|---|"]
    for p in r["parity"]:
        lines.append(f"| {p['lowering']} | {p['mode']} | {p['images']} | {p['max_abs_embedding_max']:.2e} | "
                     f"{p['max_abs_logit_max']:.2e} | {p['cosine_min']:.7f} | {p['top1_agreement']:.3f} | "
                     f"{'pass' if p['passed'] else 'FAIL'} |")
    lines += ["", "Reference kernels check the graph around custom nodes (wiring, shapes, cumulative lengths, "
              "token offsets); the real TensorRT plugin, TensorRT's TRT_Attention and ONNX Runtime's CUDA "
              "PackedMultiHeadAttention kernels need a GPU.", "",
              f"## Latency profile: {r['latency']['workload']}, end to end (decode, resize, pack, run)", "",
              "| backend | images/s | ms/image | padding |", "|---|---|---|---|"]
    for row in r["latency"]["rows"]:
        lines.append(f"| {row['backend']} | {row['images_per_s']} | {row['ms_per_image']} | {row['padding_fraction']:.1%} |")
    for section in r.get("extra_sections", []):
        lines += ["", section]
    return "\n".join(lines) + "\n"
