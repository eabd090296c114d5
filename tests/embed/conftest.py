"""Fixtures for the embed tests: a folder of small images (and broken ones), the tiny dense export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pyarrow", reason="navit embed needs pyarrow (pip install -e '.[scale]')")


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` random JPEGs of 20-300 px per side, and two broken files, in ``folder`` (sorted names)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(20, 300)), int(rng.integers(20, 300))
        p = folder / f"img{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p, quality=85)
        paths.append(p)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("corpus"), 36)


@pytest.fixture(scope="module")
def model(exported) -> Path:
    return exported("dense")
