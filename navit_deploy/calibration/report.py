"""Accuracy of a quantized model against its FP32 export: held-out top-1 and image-by-image agreement.

Both models run through the same pipeline (the artifact's front end and packer) on the held-out split
(``ProceduralDataset("test", N)``); top-1 comes from :func:`navit_deploy.evaluation.evaluate`, the
per-image outputs it produced are compared: top-1 agreement, embedding cosine (min/mean), max abs
logit and embedding differences, and the verdict of :mod:`navit_deploy.parity` for the precision.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from navit_deploy.runtime.results import ImageResult

DEFAULT_EVAL_SIZE = 200


@dataclass
class AccuracyReport:
    """FP32 vs quantized on the same held-out images."""

    precision: str
    images: int
    fp32_top1: float
    quant_top1: float
    top1_agreement: float
    cosine_min: float
    cosine_mean: float
    max_abs_logit_diff: float
    max_abs_embedding_diff: float
    failed: int
    data: str
    seconds: float
    parity_passed: bool = True
    parity_failures: list[str] = field(default_factory=list)
    fp32_model: str = ""
    quant_model: str = ""

    @property
    def top1_delta(self) -> float:
        """Quantized minus FP32 held-out top-1, in accuracy points (x100)."""
        return 100.0 * (self.quant_top1 - self.fp32_top1)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["top1_delta_points"] = round(self.top1_delta, 3)
        d["has_labels"] = self.has_labels
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = None if v != v else round(v, 7)  # NaN (no labels) is JSON null
        return d

    @property
    def has_labels(self) -> bool:
        return self.fp32_top1 == self.fp32_top1  # NaN for an embedding model

    def table(self) -> str:
        if not self.has_labels:
            rows = [f"{self.precision} vs FP32 on {self.images} images ({self.data})",
                    f"  {'embedding cosine min/mean':<26}{self.cosine_min:>10.6f} / {self.cosine_mean:.6f}",
                    f"  {'max |d embedding|':<26}{self.max_abs_embedding_diff:>10.4g}",
                    "  parity thresholds: " + ("passed" if self.parity_passed else "FAILED: " + "; ".join(self.parity_failures))]
            return "\n".join(rows)
        rows = [f"accuracy vs FP32 on {self.images} held-out images ({self.data})",
                f"  {'':<26}{'fp32':>10}{self.precision:>10}",
                (f"  {'held-out top-1':<26}{self.fp32_top1:>10.4f}{self.quant_top1:>10.4f}   "
                f"({self.top1_delta:+.2f} points)"),
                f"  {'top-1 agreement':<26}{'':>10}{self.top1_agreement:>10.4f}",
                f"  {'embedding cosine min/mean':<26}{'':>10}{self.cosine_min:>10.6f} / {self.cosine_mean:.6f}",
                f"  {'max |d logit|':<26}{'':>10}{self.max_abs_logit_diff:>10.4g}",
                f"  {'max |d embedding|':<26}{'':>10}{self.max_abs_embedding_diff:>10.4g}"]
        if self.failed:
            rows.append(f"  {self.failed} image(s) failed in a runner")
        rows.append("  parity thresholds: " + ("passed" if self.parity_passed else "FAILED: " + "; ".join(self.parity_failures)))
        return "\n".join(rows)


class _Recording:
    """A pipeline stand-in for :func:`evaluate` that keeps every result it returns."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline
        self.results: list[ImageResult] = []

    def run(self, sources):
        out = self.pipeline.run(sources)
        self.results.extend(out)
        return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na and nb else float(na == nb)


def _runnable(path: Path, tmp: Path) -> Path:
    """``path``, or an FP32-cast validation copy when custom nodes take FP16 (reference kernels are FP32)."""
    import onnx

    from navit_deploy.calibration.fp16 import reference_validation_copy
    from navit_deploy.calibration.graph import STANDARD_DOMAINS

    model = onnx.load(str(path))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
    if not any(n.domain not in STANDARD_DOMAINS and any(types.get(i) == onnx.TensorProto.FLOAT16 for i in n.input)
               for n in model.graph.node):
        return path
    out = tmp / f"validate.{path.name}"
    from navit_deploy.runtime.external_data import save_onnx

    save_onnx(reference_validation_copy(model), out)
    return out


def _artifact(path: str | Path):
    import onnx

    from navit_deploy.runtime.artifact import read_artifact

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return read_artifact(path, meta)


def compare_results(ref: Sequence[ImageResult], cand: Sequence[ImageResult]) -> dict[str, float]:
    """Agreement, cosine, max abs differences over images both runners processed."""
    pairs = [(r, c) for r, c in zip(ref, cand, strict=True) if r.ok and c.ok]
    if not pairs:
        return {"compared": 0, "top1_agreement": 0.0, "cosine_min": float("nan"), "cosine_mean": float("nan"),
                "max_abs_logit_diff": float("nan"), "max_abs_embedding_diff": float("nan")}
    cos = np.array([_cos(r.vector.astype(np.float64), c.vector.astype(np.float64)) for r, c in pairs])
    if pairs[0][0].logits is None:
        agree, dlogit = float("nan"), float("nan")
    else:
        agree = float(np.mean([r.top1 == c.top1 for r, c in pairs]))
        dlogit = max(float(np.abs(r.logits - c.logits).max()) for r, c in pairs)
    return {"compared": len(pairs), "top1_agreement": agree,
            "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "max_abs_logit_diff": dlogit,
            "max_abs_embedding_diff": max(float(np.abs(r.vector - c.vector).max()) for r, c in pairs)}


def accuracy_report(fp32_onnx: str | Path, quant_onnx: str | Path, *, eval_size: int = DEFAULT_EVAL_SIZE, data=None,
                    provider: str = "cpu", reference_ops: bool | None = None, progress: bool = False,
                    threads: int | None = None, chunk: int = 32) -> AccuracyReport:
    """Held-out accuracy of ``quant_onnx`` against ``fp32_onnx`` (same images, same pipeline).

    ``data``: a sequence of ``(image, label)``; default ``ProceduralDataset("test", eval_size)``.
    ``reference_ops``: run custom-node lowerings with the numpy reference kernels (default: when the
    lowering has no native kernel on ``provider``).
    """
    from navit_deploy.errors import ConfigError
    from navit_deploy.evaluation import evaluate
    from navit_deploy.parity import compare
    from navit_deploy.runtime.onnx_runner import OnnxRunner, native_providers
    from navit_deploy.runtime.open import pipeline_for

    start = time.perf_counter()
    if data is None:
        if eval_size < 1:
            raise ConfigError(f"eval_size must be >= 1, got {eval_size}")
        from navit_deploy.data.procedural import ProceduralDataset

        data = ProceduralDataset("test", eval_size)
        what = f"procedural test split, {eval_size} images"
    else:
        what = f"{len(data)} given images"
    with tempfile.TemporaryDirectory(prefix="navit-acc-") as td:
        if reference_ops is None:
            reference_ops = provider not in native_providers(_artifact(fp32_onnx).lowering)
        fp32 = OnnxRunner(fp32_onnx, provider=provider, threads=threads, reference_ops=reference_ops)
        cand_path = _runnable(Path(quant_onnx), Path(td)) if reference_ops else Path(quant_onnx)
        cand = OnnxRunner(cand_path, provider=provider, threads=threads, reference_ops=reference_ops)
        artifact = fp32.artifact
        results = {}
        for name, runner in (("fp32", fp32), ("quant", cand)):
            rec = _Recording(pipeline_for(runner, artifact))
            with runner:
                if artifact.has_logits:
                    ev = evaluate(rec, data, chunk=chunk, progress=progress)  # type: ignore[arg-type]
                else:  # an embedding model: no labels to score, only its outputs to compare
                    for start_i in range(0, len(data), chunk):
                        rec.run([data[i][0] for i in range(start_i, min(start_i + chunk, len(data)))])
                    ev = None
            results[name] = (ev, rec.results)
        if not artifact.has_logits:
            what += "; embedding model: cosine and max abs difference against FP32, no labels"
    (ev32, res32), (evq, resq) = results["fp32"], results["quant"]
    stats = compare_results(res32, resq)
    precision = cand.precision
    try:
        par = compare(res32, resq, precision)
        passed, failures = par.passed, par.failures
    except ConfigError as exc:
        passed, failures = False, [str(exc)]
    failed = sum(1 for r, c in zip(res32, resq) if not (r.ok and c.ok))
    nan = float("nan")
    top32, topq = (ev32.top1, evq.top1) if ev32 is not None and evq is not None else (nan, nan)
    return AccuracyReport(precision, len(res32), top32, topq, stats["top1_agreement"], stats["cosine_min"],
                          stats["cosine_mean"], stats["max_abs_logit_diff"], stats["max_abs_embedding_diff"], failed,
                          what, time.perf_counter() - start, passed, failures, str(fp32_onnx), str(quant_onnx))
