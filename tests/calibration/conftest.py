"""Fixtures for the quantization tests: calibration folders and quantized versions of the tiny exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

CALIB_IMAGES = 12
EVAL_SIZE = 8


def write_images(folder: Path, n: int, start: int = 0, side: int = 160) -> list[Path]:
    """``n`` procedural *train* images, shrunk to at most ``side`` px, as PNG files in ``folder``."""
    from navit_deploy.data.procedural import ProceduralDataset

    folder.mkdir(parents=True, exist_ok=True)
    data = ProceduralDataset("train", start + n)
    paths = []
    for i in range(start, start + n):
        img, _ = data[i]
        img.thumbnail((side, side))
        p = folder / f"img_{i:03d}.png"
        img.save(p)
        paths.append(p)
    return paths


def write_corrupt(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        p = folder / f"bad_{i:03d}.png"
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(40)))  # a PNG signature, then garbage
        paths.append(p)
    return paths


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch ~/.cache: the default calibration cache goes to a per-session temp folder."""
    monkeypatch.setenv("NAVIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "navit_cache"))


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_images(tmp_path_factory.mktemp("calib"), CALIB_IMAGES)[0].parent


@pytest.fixture(scope="session")
def quantized(exported, calib_dir, tmp_path_factory: pytest.TempPathFactory):
    """``quantized(lowering, precision)`` -> QuantizeResult of the tiny export (cached per session)."""
    from navit_deploy.calibration.quantize import quantize_model

    done: dict = {}
    cache = tmp_path_factory.mktemp("qcache")

    def get(lowering: str, precision: str):
        key = (lowering, precision)
        if key not in done:
            out = tmp_path_factory.mktemp("quantized") / f"tiny.{lowering}.{precision}.onnx"
            done[key] = quantize_model(exported(lowering), out, precision, calib=calib_dir, max_images=CALIB_IMAGES,
                                       eval_size=EVAL_SIZE, cache_dir=cache, progress=False)
        return done[key]

    return get


def producers(model) -> dict[str, object]:
    """tensor name -> node producing it."""
    return {o: n for n in model.graph.node for o in n.output}


def consumers(model) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def cosines(a, b) -> np.ndarray:
    return np.array([float(x.embedding @ y.embedding / (np.linalg.norm(x.embedding) * np.linalg.norm(y.embedding)))
                     for x, y in zip(a, b)])


def confident_agreement(ref, cand) -> tuple[float, int]:
    """Top-1 agreement over the images whose FP32 top-2 logit margin exceeds twice the largest logit change.

    The tiny random model has near-tied logits on some images; a decision inside the noise band may
    flip without anything being wrong, one outside it may not. Returns (agreement, images counted).
    """
    dmax = max(float(np.abs(r.logits - c.logits).max()) for r, c in zip(ref, cand))
    sure = [(r, c) for r, c in zip(ref, cand) if np.diff(np.sort(r.logits)[-2:])[0] > 2 * dmax]
    return (float(np.mean([r.top1 == c.top1 for r, c in sure])) if sure else 1.0), len(sure)
