"""Workloads users have: camera frames, documents, thumbnails, crops, and a realistic mix. Torch-free.

A workload is a deterministic list of image sizes with a token budget chosen as users would set it.
Images themselves are rendered on demand (:func:`render_workload`) so sizes can be used without pixels.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

CAMERA = [(1280, 720), (1920, 1080), (1600, 1200), (1200, 1600), (3024, 4032), (4032, 3024)]
DOCUMENTS = [(1275, 1650), (2550, 3300), (1240, 1754), (2480, 3508), (400, 1200), (576, 1728), (540, 1170),
             (1080, 2340), (1600, 900), (1920, 1080)]
THUMBNAILS = [(96, 64), (128, 96), (160, 120), (64, 64), (120, 160), (150, 100)]


@dataclass(frozen=True)
class Workload:
    """Image sizes (width, height) and the budget they are run at."""

    name: str
    sizes: tuple[tuple[int, int], ...]
    max_patches: int
    upscale: bool = True
    description: str = ""
    paths: tuple[str, ...] = ()  # image files, for a user's folder (sizes read from the headers)
    max_pixels: int | None = None  # a pixel budget (Qwen-VL), exactly; ``max_patches`` is then its nominal size

    def __len__(self) -> int:
        return len(self.sizes)


def _pick(rng: np.random.Generator, choices: list[tuple[int, int]], n: int, jitter: float = 0.0) -> list[tuple[int, int]]:
    out = []
    for _ in range(n):
        w, h = choices[int(rng.integers(len(choices)))]
        if jitter:
            f = float(np.exp(rng.uniform(-jitter, jitter)))
            w, h = max(16, int(w * f)), max(16, int(h * f))
        out.append((w, h))
    return out


def _crops(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    sizes = []
    for _ in range(n):
        w = int(rng.integers(20, 301))
        aspect = float(np.exp(rng.uniform(np.log(0.25), np.log(4.0))))
        sizes.append((w, int(np.clip(round(w / aspect), 20, 300))))
    return sizes


def make_workload(name: str, n: int = 64, seed: int = 0) -> Workload:
    """``camera``, ``documents``, ``thumbnails``, ``crops`` or ``mixed``, ``n`` images, deterministic in ``seed``."""
    if name not in _ORDER:
        raise KeyError(f"unknown workload {name!r}; choose one of {list(_ORDER)}")
    rng = np.random.default_rng([seed, _ORDER.index(name)])
    if name == "camera":
        return Workload(name, tuple(_pick(rng, CAMERA, n)), 256, description="16:9, 4:3 and 3:4 camera frames and phone photos")
    if name == "documents":
        return Workload(name, tuple(_pick(rng, DOCUMENTS, n)), 1024,
                        description="letter/A4 pages, 1:3 receipts, 9:19.5 screenshots, 16:9 charts")
    if name == "thumbnails":
        return Workload(name, tuple(_pick(rng, THUMBNAILS, n, jitter=0.3)), 64, upscale=False,
                        description="small previews, never upscaled")
    if name == "crops":
        return Workload(name, tuple(_crops(rng, n)), 64, upscale=False,
                        description="detected objects / text lines, 20-300 px, never upscaled")
    if name == "mixed":
        kinds = rng.choice(4, size=n, p=[0.4, 0.3, 0.15, 0.15])
        sizes: list[tuple[int, int]] = []
        for k in kinds:
            if k == 0:
                sizes += _pick(rng, CAMERA, 1)
            elif k == 1:
                sizes += _pick(rng, DOCUMENTS, 1)
            elif k == 2:
                sizes += _pick(rng, THUMBNAILS, 1, jitter=0.3)
            else:
                sizes += _crops(rng, 1)
        return Workload(name, tuple(sizes), 256, upscale=False,
                        description="camera 40%, documents 30%, thumbnails 15%, crops 15%; native size is never exceeded")
    raise AssertionError(name)


_ORDER = ("camera", "documents", "thumbnails", "crops", "mixed")
WORKLOADS = _ORDER


def render_workload(workload: Workload, seed: int = 0) -> Iterator[Image.Image]:
    """Procedurally rendered RGB images of the workload's sizes (camera/document themed content)."""
    from navit_deploy.data.procedural import render_sample

    for i, size in enumerate(workload.sizes):
        img, _ = render_sample(np.random.default_rng([seed, 7, i]), size=size)
        yield img


InputFormat = Literal["jpeg", "png", "pil"]


def folder_workload(root: str | Path, max_patches: int = 256, upscale: bool = True, limit: int | None = None,
                    recursive: bool = True) -> Workload:
    """A user's image folder as a workload: its files (sorted), sizes read from the headers (no decode)."""
    from navit_deploy.data.image_folder import list_images

    paths, sizes = [], []
    for p in list_images(root, recursive=recursive):
        try:
            with Image.open(p) as im:
                sizes.append(im.size)
        except (OSError, ValueError, SyntaxError):
            sizes.append((0, 0))  # unreadable: the pipeline reports it as a per-image error
        paths.append(str(p))
        if limit is not None and len(paths) >= limit:
            break
    return Workload(f"folder:{Path(root).name}", tuple(sizes), max_patches, upscale,
                    description=f"{len(paths)} images from {root}", paths=tuple(paths))


def encode_image(img: Image.Image, fmt: InputFormat = "jpeg", quality: int = 90) -> bytes | Image.Image:
    """``img`` as the bytes a service would receive (JPEG or PNG), or the PIL image itself for ``"pil"``."""
    if fmt == "pil":
        return img
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, "JPEG", quality=quality)
    elif fmt == "png":
        img.save(buf, "PNG", compress_level=1)
    else:
        raise ValueError(f"input format must be jpeg, png or pil, got {fmt!r}")
    return buf.getvalue()


def workload_sources(workload: Workload, fmt: InputFormat = "jpeg", seed: int = 0) -> list:
    """What the benchmark feeds the pipeline: file paths for a folder workload, otherwise the rendered
    images encoded as ``fmt`` (so decoding is part of the measured host work, as in a service)."""
    if workload.paths:
        return list(workload.paths)
    return [encode_image(img, fmt) for img in render_workload(workload, seed)]


def camera_frames(n: int, size: tuple[int, int] = (1280, 720), distinct: int = 4, seed: int = 0) -> list[np.ndarray]:
    """``n`` decoded camera frames (HxWx3 uint8 RGB, as a capture API hands them), cycling ``distinct`` renders."""
    from navit_deploy.data.procedural import render_sample

    base = [np.asarray(render_sample(np.random.default_rng([seed, 11, i]), size=size, theme="camera")[0])
            for i in range(max(1, min(distinct, n)))]
    return [base[i % len(base)] for i in range(n)]
