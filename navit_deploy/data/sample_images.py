"""The builtin demo/parity image set: real photographs and scans at their native sizes plus generated
frames at the sizes and aspect ratios users have. Torch-free; nothing is downloaded.

The real images come from ``skimage.data`` (bundled in the scikit-image wheel) and keep their mode
(``camera``, ``page`` and ``text`` are grayscale, mode "L": converting them is the front end's job).
The generated ones are :func:`~navit_deploy.data.procedural.render_sample` outputs with fixed seeds,
so the set is identical on every call.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from navit_deploy.data.procedural import render_sample

# name -> skimage.data function; all are bundled in the wheel (no pooch download)
_REAL = (
    ("astronaut", "astronaut"),  # 512x512 RGB
    ("coffee", "coffee"),  # 600x400 RGB
    ("chelsea", "chelsea"),  # 451x300 RGB
    ("rocket", "rocket"),  # 640x427 RGB
    ("camera", "camera"),  # 512x512 L
    ("page", "page"),  # 384x191 L, scanned page with uneven lighting
    ("text", "text"),  # 448x172 L
)

# name, kind, (width, height)
_GENERATED = (
    ("camera_1280x720", "photo", (1280, 720)),
    ("camera_1920x1080", "photo", (1920, 1080)),
    ("phone_1512x2016", "photo", (1512, 2016)),
    ("letter_1275x1650", "page", (1275, 1650)),
    ("receipt_400x1200", "receipt", (400, 1200)),
    ("screenshot_540x1170", "screenshot", (540, 1170)),
    ("chart_1600x900", "chart", (1600, 900)),
    ("thumbnail_96x64", "photo", (96, 64)),
)
_SEED = 8  # picked so the four generated photos use four different source photographs
PHOTO_NAMES = frozenset(
    {
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "camera",
        "camera_1280x720",
        "camera_1920x1080",
        "phone_1512x2016",
        "thumbnail_96x64",
    }
)


def builtin_sample_images() -> list[tuple[str, Image.Image]]:
    """About fifteen named images: 7 real ones at native size and mode, 8 generated ones (RGB).

    Generated image ``k`` shows class ``k % 8``, so every class appears once. Fresh images are
    returned on every call (callers may modify them).
    """
    try:
        from skimage import data as skd
    except ImportError as exc:  # pragma: no cover - scikit-image is in the "torch" extra
        raise ImportError("the builtin sample images need scikit-image (pip install scikit-image)") from exc

    out: list[tuple[str, Image.Image]] = []
    for name, func in _REAL:
        out.append((name, Image.fromarray(np.ascontiguousarray(getattr(skd, func)()))))
    for k, (name, kind, size) in enumerate(_GENERATED):
        img, _ = render_sample(np.random.default_rng([_SEED, k]), label=k % 8, size=size, kind=kind)
        out.append((name, img))
    return out


def write_builtin_samples(out_dir: str | Path) -> list[Path]:
    """Write :func:`builtin_sample_images` to ``out_dir`` (created if needed): photographs as JPEG
    (quality 92), documents, screenshots and charts as PNG. Returns the paths, in the same order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for name, img in builtin_sample_images():
        if name in PHOTO_NAMES:
            path = out / f"{name}.jpg"
            img.save(path, format="JPEG", quality=92)
        else:
            path = out / f"{name}.png"
            img.save(path, format="PNG")
        paths.append(path)
    return paths
