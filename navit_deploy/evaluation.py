"""Held-out accuracy of any runner (torch checkpoint, ONNX model, TensorRT engine) through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from navit_deploy.runtime.pipeline import Pipeline
from navit_deploy.runtime.results import ImageResult

DEFAULT_TEST_SIZE = 1000


@dataclass(frozen=True)
class EvalReport:
    top1: float
    images: int
    failed: int
    predictions: np.ndarray  # top-1 class per image (-1 for failed)
    labels: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {"top1": round(self.top1, 6), "images": self.images, "failed": self.failed}


def evaluate(pipeline: Pipeline, data: Sequence[tuple[Image.Image, int]], chunk: int = 64,
             progress: bool = False) -> EvalReport:
    """Top-1 accuracy of ``pipeline`` on ``data`` (a sequence of (image, label)), in chunks of ``chunk`` images."""
    preds: list[int] = []
    labels: list[int] = []
    failed = 0
    bar = tqdm(total=len(data), disable=not progress, desc="eval", unit="img")
    for start in range(0, len(data), chunk):
        items = [data[i] for i in range(start, min(start + chunk, len(data)))]
        results: list[ImageResult] = pipeline.run([img for img, _ in items])
        for r, (_, label) in zip(results, items):
            preds.append(r.top1 if r.ok else -1)
            failed += 0 if r.ok else 1
            labels.append(label)
        bar.update(len(items))
    bar.close()
    p, y = np.asarray(preds), np.asarray(labels)
    return EvalReport(float((p == y).mean()) if len(y) else 0.0, len(y), failed, p, y)
