"""A deterministic procedural classification dataset of camera frames and document scans. Torch-free.

Each sample is a real-looking background (a crop of a photograph shipped inside scikit-image, or a
generated page, receipt, phone screenshot, chart or scanned text, or a studio backdrop) with one shape
drawn on it several times: the primary instance at ``SampleInfo.shape_box`` plus up to ``COPIES[1]``
non-overlapping copies of it (same size, fill and colours), like a sheet of stickers. The label is
``shape x fill``:

* shape in {circle, ellipse, square, rectangle}: ellipses and rectangles have an axis ratio in
  [1.5, 2.0] and circles/squares exactly 1, so a square resize of a non-square image (which turns
  circles into ellipses) confuses them, while a native-aspect model (NaViT) does not;
* fill in {solid, striped}: stripes with a period of ``STRIPE_PERIOD`` "units" alternate a dark ink
  tone and a light tone of one colour and run perpendicular to the image's long axis; the solid fill
  is the dark ink tone alone, so a striped fill is lighter on average (a first-order cue that survives
  any resize). The stripe detail itself is what a resize that squashes the long axis pushes below its
  Nyquist limit and mostly blurs away (a square resize to the same budget does so at aspect ratios of
  about 3:1 and more; at 16:9 it keeps much of the detail).

A *unit* is one pixel at the resolution a NaViT with a ``BUDGET_PATCHES``-patch budget (64) of ``PATCH`` px
(16 px) patches sees the image (see :func:`unit_size`), so the detail stays visible to that model at any
image size.

Sample ``i`` of a split is generated from ``np.random.default_rng([seed, split_id, i])``; the same
``(seed, split, i)`` gives identical pixels with the same numpy/Pillow/scikit-image versions. No file
is downloaded: only the images bundled in the scikit-image wheel are used.
"""

from __future__ import annotations

import math
import operator
import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from navit_deploy.errors import ConfigError

SHAPES: tuple[str, ...] = ("circle", "ellipse", "square", "rectangle")
FILLS: tuple[str, ...] = ("solid", "striped")
CLASSES: tuple[str, ...] = tuple(f"{s}_{f}" for s in SHAPES for f in FILLS)  # label = 2*shape + fill
THEMES: tuple[str, ...] = ("camera", "document")
KINDS: dict[str, tuple[str, ...]] = {
    "camera": ("photo", "studio"), "document": ("page", "receipt", "screenshot", "chart", "scan")}
SPLIT_IDS: dict[str, int] = {"train": 0x7A17, "test": 0x7E57}
DEFAULT_TEST_SIZE = 1000  # the held-out split's customary size: ProceduralDataset("test", DEFAULT_TEST_SIZE)

MIN_SIDE, MAX_SIDE, MAX_ASPECT = 32, 2048, 4.0
RATIO_RANGE = (1.5, 2.0)  # axis ratio of ellipses and rectangles
SIZE_RANGE = (0.22, 0.4)  # shape box short side / image short side
STRIPE_PERIOD = (2.5, 3.5)  # in units; just above the 2-unit Nyquist limit of the NaViT view
PATCH, BUDGET_PATCHES = 16, 64
TINY_FRACTION = 0.05  # samples whose long side is 32..96 px

_ASPECTS: dict[str, tuple[float, ...]] = {  # realistic width/height ratios per background kind
    "photo": (16 / 9, 16 / 9, 4 / 3, 4 / 3, 3 / 4, 3 / 4, 9 / 16, 3 / 2, 2 / 3, 1.0),
    "studio": (16 / 9, 4 / 3, 3 / 4, 9 / 16, 3 / 2, 2 / 3, 1.0),
    "page": (8.5 / 11, 8.5 / 11, 1 / math.sqrt(2), 1 / math.sqrt(2), 11 / 8.5, math.sqrt(2)),
    "receipt": (1 / 3, 1 / 3, 1 / 3.5, 1 / 2.5),
    "screenshot": (9 / 19.5, 9 / 19.5, 9 / 19.5, 19.5 / 9, 9 / 16),
    "chart": (16 / 9, 16 / 9, 4 / 3, 1.0),
    "scan": (8.5 / 11, 1 / math.sqrt(2), 4 / 3, 16 / 9),
}
_KIND_CDF = np.cumsum([0.3, 0.2, 0.2, 0.15])  # page, receipt, screenshot, chart; scan 0.15
COPIES = (2, 7)  # copies get 6 * integers(*COPIES) placement tries; at most COPIES[1] are kept (<= 8 instances)
STUDIO_FRACTION = 0.5  # of camera samples: product shots on a plain gradient backdrop
_REALISTIC_P = 0.65  # else the aspect ratio is log-uniform in [1/4, 4]


@dataclass(frozen=True)
class SampleInfo:
    """What was drawn. ``shape_box`` is the primary instance's ``(left, top, right, bottom)`` in pixels, right/bottom
    exclusive; the copies have the same size (their positions are not recorded)."""

    label: int
    theme: str
    width: int
    height: int
    shape_box: tuple[int, int, int, int]
    kind: str = ""

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]

    @property
    def unit(self) -> float:
        return unit_size(self.width, self.height)


def unit_size(width: int, height: int) -> float:
    """Pixels per NaViT-view pixel: ``max(1, long / budget_long)``, budget_long = PATCH*sqrt(BUDGET_PATCHES*aspect).

    With 16 px patches and a 64-patch budget, budget_long is 128 px for a square image and 256 px at 4:1. The
    front end rounds each side to whole patches, so its actual view is 0.9x to 1.08x of this along the long side.
    """
    long, short = max(width, height), min(width, height)
    return max(1.0, long / (PATCH * math.sqrt(BUDGET_PATCHES * long / short)))


_SOURCES: dict[str, list[Image.Image]] | None = None
_LOCK = threading.Lock()
_PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "moon", "hubble_deep_field", "retina",
                "stereo_motorcycle", "immunohistochemistry", "coins", "clock", "grass", "gravel", "brick")


def _sources() -> dict[str, list[Image.Image]]:
    """Photographs (also rotated by 90 degrees) and scanned text from ``skimage.data``, loaded once.

    Only images bundled in the scikit-image wheel are used; none needs ``pooch`` or a download.
    """
    global _SOURCES
    with _LOCK:
        if _SOURCES is None:
            try:
                from skimage import data as skd
            except ImportError as exc:  # pragma: no cover - scikit-image is a dependency
                raise ImportError("the procedural dataset needs scikit-image (pip install scikit-image)") from exc
            photos = []
            for name in _PHOTO_NAMES:
                arr = getattr(skd, name)()
                arr = arr[0] if isinstance(arr, tuple) else arr  # stereo_motorcycle: (left, right, disparity)
                photos.append(Image.fromarray(np.ascontiguousarray(arr)).convert("RGB"))
            rotated = [p.transpose(Image.Transpose.ROTATE_90) for p in photos]
            scans = [Image.fromarray(skd.page()), Image.fromarray(skd.text())]
            _SOURCES = {"photo": photos, "rotated": rotated, "scan": scans}
        return _SOURCES


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(math.log(lo) + float(rng.random()) * (math.log(hi) - math.log(lo)))


def _sample_size(rng: np.random.Generator, kind: str) -> tuple[int, int]:
    u_real, u_pick, u_tiny, u_long, u_aspect = (float(x) for x in rng.random(5))
    options = _ASPECTS[kind]
    aspect = options[int(u_pick * len(options))] if u_real < _REALISTIC_P else MAX_ASPECT ** (2 * u_aspect - 1)
    ratio = max(aspect, 1 / aspect)
    lo, hi = (MIN_SIDE, 96) if u_tiny < TINY_FRACTION else (96, MAX_SIDE)
    long = round(math.exp(math.log(lo) + u_long * (math.log(hi) - math.log(lo))))
    if lo >= 96:
        long = min(MAX_SIDE, max(long, math.ceil(MIN_SIDE * ratio)))
    short = min(long, max(MIN_SIDE, math.ceil(long / MAX_ASPECT), round(long / ratio)))
    return (long, short) if aspect >= 1 else (short, long)


def _plan(rng: np.random.Generator, label: int | None, size: tuple[int, int] | None, theme: str | None,
          kind: str | None = None) -> SampleInfo:
    """Draw the layout (cheap). Overrides replace drawn values without shifting the random stream."""
    drawn_label, drawn_theme, u_kind = int(rng.integers(len(CLASSES))), int(rng.integers(2)), float(rng.random())
    if label is None:
        label = drawn_label
    elif not (0 <= operator.index(label) < len(CLASSES)):
        raise ConfigError(f"label must be in [0, {len(CLASSES)}), got {label}")
    if kind is not None:
        found = [t for t, kinds in KINDS.items() if kind in kinds]
        if not found or theme not in (None, found[0]):
            raise ConfigError(f"kind {kind!r} is not one of {KINDS} (or does not belong to theme {theme!r})")
        theme = found[0]
    if theme is None:
        theme = THEMES[drawn_theme]
    elif theme not in THEMES:
        raise ConfigError(f"theme must be one of {THEMES}, got {theme!r}")
    if kind is None:
        doc_kind = KINDS["document"][int(np.searchsorted(_KIND_CDF, u_kind, side="right"))]
        camera_kind = "studio" if u_kind < STUDIO_FRACTION else "photo"
        kind = camera_kind if theme == "camera" else doc_kind
    w, h = _sample_size(rng, kind)
    if size is not None:
        w, h = (int(v) for v in size)
        if min(w, h) < 16:
            raise ConfigError(f"size must be at least 16x16, got {w}x{h}")
    r, horizontal = _log_uniform(rng, *RATIO_RANGE), rng.random() < 0.5
    frac, u, v = float(rng.uniform(*SIZE_RANGE)), float(rng.random()), float(rng.random())
    if SHAPES[label // 2] in ("circle", "square"):
        r = 1.0
    major_dim = w if horizontal else h
    s = max(4, min(round(frac * min(w, h)), math.floor(0.96 * major_dim / r)))  # keep the long side inside
    long = s if r == 1.0 else min(major_dim, max(round(s * r), math.ceil(RATIO_RANGE[0] * s)))
    bw, bh = (long, s) if horizontal else (s, long)
    x0, y0 = int(u * (w - bw + 1)), int(v * (h - bh + 1))
    return SampleInfo(label=int(label), theme=theme, width=w, height=h, shape_box=(x0, y0, x0 + bw, y0 + bh), kind=kind)


def _rgb(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, ...]:
    return tuple(int(x) for x in rng.integers(lo, hi, 3))


def _jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness/contrast/white-balance jitter through one lookup table."""
    c, b = rng.uniform(0.75, 1.2), rng.uniform(-25, 25)
    gains = rng.uniform(0.88, 1.12, 3)
    x = np.arange(256.0)
    lut = np.concatenate([np.clip(((x - 128) * c + 128 + b) * g, 0, 255) for g in gains])
    return img.point(np.round(lut).astype(np.uint8).tolist())


def _studio(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A product-shot backdrop: a smooth linear gradient between two random colours."""
    a, b = np.asarray(_rgb(rng), dtype=np.float32), np.asarray(_rgb(rng), dtype=np.float32)
    t = np.linspace(0.0, 1.0, h if rng.random() < 0.5 else w, dtype=np.float32)
    ramp = a + (b - a) * t[:, None]
    grid = np.broadcast_to(ramp[:, None, :], (h, w, 3)) if len(t) == h else np.broadcast_to(ramp[None, :, :], (h, w, 3))
    return Image.fromarray(np.ascontiguousarray(grid).round().astype(np.uint8), "RGB")


def _photo(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """An aspect-preserving random crop of a bundled photograph, resized to ``w x h``."""
    index, (rotate, flip, blur, u, v), f = int(rng.integers(len(_PHOTO_NAMES))), rng.random(5), rng.uniform(0.3, 1.0)
    src = _sources()["rotated" if rotate < 0.25 else "photo"][index]  # rotated: portrait crops of landscape photos
    sw, sh = src.size
    rw, rh = (sh * w / h, sh) if sw / sh > w / h else (sw, sw * h / w)
    rw, rh = rw * f, rh * f
    x0, y0 = u * (sw - rw), v * (sh - rh)
    box = (x0, y0, x0 + rw, y0 + rh)
    if blur < 0.2 and rw * rh < w * h:  # defocus, applied to the smaller of the crop and the output
        crop = src.crop(tuple(round(t) for t in box))
        out = crop.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0)))).resize((w, h), Image.BILINEAR)
    else:
        out = src.resize((w, h), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0)))) if blur < 0.2 else out
    if flip < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _jitter(out, rng)


def _rect(d: ImageDraw.ImageDraw, x0: float, y0: float, x1: float, y1: float, fill: tuple[int, ...]) -> None:
    """Filled rectangle covering [x0, x1) x [y0, y1), at least one pixel."""
    ix0, iy0 = round(x0), round(y0)
    d.rectangle((ix0, iy0, max(ix0, round(x1) - 1), max(iy0, round(y1) - 1)), fill=fill)


def _text(d: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[float, float, float, float], pitch: float,
          ink: tuple[int, ...], ragged: float = 0.25) -> None:
    """Text-like lines: word-sized bars of thickness ~pitch/2, ragged line ends, paragraph gaps."""
    x0, y0, x1, y1 = box
    pitch = max(2.0, pitch)
    thick = max(1, round(pitch * rng.uniform(0.35, 0.6)))
    n_words = max(1, int((x1 - x0) / pitch) + 1)
    y = y0
    while y + thick <= y1:
        if rng.random() < 0.1:  # paragraph break
            y += pitch
            continue
        end = x1 - (x1 - x0) * rng.uniform(0.0, 0.6) * (rng.random() < ragged)
        lengths = pitch * rng.uniform(0.8, 5.0, n_words)
        starts = x0 + np.concatenate([[0.0], np.cumsum(lengths + pitch * 0.6)[:-1]])
        for xs, ln in zip(starts.tolist(), lengths.tolist()):
            if xs + 1 > end:
                break
            _rect(d, xs, y, min(xs + ln, end), y + thick, ink)
        y += pitch


def _document(rng: np.random.Generator, kind: str, w: int, h: int) -> Image.Image:
    dark = kind in ("screenshot", "chart") and rng.random() < 0.3
    paper = _rgb(rng, 15, 45) if dark else _rgb(rng, 225, 256)
    ink = _rgb(rng, 200, 245) if dark else _rgb(rng, 10, 90)
    img = Image.new("RGB", (w, h), paper)
    d = ImageDraw.Draw(img)
    if kind == "page":
        m, pitch = min(w, h) * rng.uniform(0.04, 0.12), h * rng.uniform(0.008, 0.03)
        y = m
        if rng.random() < 0.6:  # title
            _text(d, rng, (m, m, w * rng.uniform(0.4, 0.9), m + 2.5 * pitch), 2.5 * pitch, ink, 0.0)
            y += 3.5 * pitch
        if rng.random() < 0.3:  # figure
            fh = round(h * rng.uniform(0.15, 0.35))
            if fh >= 8 and w - 2 * m >= 8:
                img.paste(_photo(rng, round(w - 2 * m), fh), (round(m), round(y)))
                y += fh + pitch
        cols = 2 if rng.random() < 0.3 and w > 4 * m else 1
        cw = (w - 2 * m - (cols - 1) * 2 * pitch) / cols  # columns separated by a 2-pitch gutter
        for c in range(cols):
            _text(d, rng, (m + c * (cw + 2 * pitch), y, m + c * (cw + 2 * pitch) + cw, h - m), pitch, ink)
    elif kind == "receipt":
        m, pitch = min(w, h) * rng.uniform(0.05, 0.1), min(w, h) * rng.uniform(0.03, 0.06)
        y, end, code = m, h - m - 0.12 * min(w, h), 0.1 * min(w, h)
        while y + pitch < end:  # item lines: name on the left, price on the right, dashed separators
            if rng.random() < 0.12:
                for xs in np.arange(m, w - m, pitch).tolist():
                    _rect(d, xs, y + pitch / 3, xs + pitch / 2, y + pitch / 3 + max(1, pitch / 8), ink)
            else:
                _text(d, rng, (m, y, w * rng.uniform(0.3, 0.65), y + pitch), pitch, ink, 0.0)
                _text(d, rng, (w - m - pitch * rng.uniform(2, 4), y, w - m, y + pitch), pitch, ink, 0.0)
            y += pitch * 1.3
        x = m
        while x < w - m:  # barcode
            bw = max(1.0, pitch * rng.uniform(0.1, 0.4))
            _rect(d, x, h - m - code, x + bw, h - m, ink)
            x += bw + max(1.0, pitch * rng.uniform(0.1, 0.4))
    elif kind == "screenshot":
        accent = _rgb(rng, 30, 230)
        bar, app = h * rng.uniform(0.02, 0.04), h * rng.uniform(0.05, 0.09)
        _rect(d, 0, 0, w, bar, ink if rng.random() < 0.3 else paper)
        _rect(d, 0, bar, w, bar + app, accent)
        _text(d, rng, (w * 0.05, bar + app * 0.3, w * 0.6, bar + app * 0.7), app * 0.4, paper, 0.0)
        row, pad, y = min(w, h) * rng.uniform(0.12, 0.22), min(w, h) * 0.04, bar + app
        while y + row < h:
            thumb = (pad, y + pad, pad + row - 2 * pad, y + row - pad)
            if rng.random() < 0.5 and row - 2 * pad >= 8:
                img.paste(_photo(rng, round(row - 2 * pad), round(row - 2 * pad)), (round(pad), round(y + pad)))
            else:
                d.rounded_rectangle(thumb, radius=(row - 2 * pad) * 0.2, fill=_rgb(rng, 40, 220))
            _text(d, rng, (row, y + pad, w - pad, y + row - pad), (row - 2 * pad) / 2.5, ink, 0.8)
            d.line((row, y + row - 1, w, y + row - 1), fill=tuple((p + i) // 2 for p, i in zip(paper, ink)))
            y += row
    elif kind == "chart":
        m = min(w, h) * 0.12
        _text(d, rng, (m, m * 0.3, w * rng.uniform(0.3, 0.7), m * 0.7), m * 0.4, ink, 0.0)
        grid = tuple((2 * p + i) // 3 for p, i in zip(paper, ink))
        for gy in np.linspace(m, h - m, int(rng.integers(3, 8))).tolist():
            d.line((m, gy, w - m, gy), fill=grid)
        d.line((m, m, m, h - m), fill=ink, width=2)
        d.line((m, h - m, w - m, h - m), fill=ink, width=2)
        n = int(rng.integers(3, 13))
        if rng.random() < 0.5:  # bar chart
            colour, xs = _rgb(rng, 30, 230), np.linspace(m, w - m, n + 1)
            for i, frac in enumerate(rng.uniform(0.1, 0.95, n).tolist()):
                gap = (xs[1] - xs[0]) * 0.2
                _rect(d, xs[i] + gap, h - m - frac * (h - 2 * m), xs[i + 1] - gap, h - m, colour)
        else:  # line series
            for _ in range(int(rng.integers(1, 4))):
                ys = np.clip(0.5 + np.cumsum(rng.normal(0, 0.12, 4 * n)), 0.05, 0.95)
                pts = list(zip(np.linspace(m, w - m, 4 * n).tolist(), (h - m - ys * (h - 2 * m)).tolist()))
                d.line(pts, fill=_rgb(rng, 30, 230), width=max(1, round(min(w, h) / 150)))
    else:  # "scan": tiled crops of scikit-image's scanned page/text
        src = _sources()["scan"][int(rng.integers(2))]
        zoom = max(w, h) / 384 * rng.uniform(0.25, 1.0)
        tw, th = max(8, round(src.width * zoom)), max(8, round(src.height * zoom))
        tile = src.resize((tw, th), Image.Resampling.BILINEAR).convert("RGB")
        for ty in range(-int(rng.integers(th)), h, th):
            for tx in range(-int(rng.integers(tw)), w, tw):
                img.paste(tile, (tx, ty))
        img = ImageChops.multiply(img, Image.new("RGB", (w, h), _rgb(rng, 200, 256)))
    return img


def _colours(rng: np.random.Generator, bg_mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, half-difference) of the two stripe colours: ink-like, nearly neutral, high luminance contrast.

    Stamps and printed markers: a dark and a light tone (``mean -+ |delta|``) of one faint tint; stripes
    alternate the two and a solid fill is the dark ink tone alone (see :func:`_draw_shape`). The tint carries no
    class information. ``bg_mean`` (the background under the primary box) is not used: the fill may be close to
    the background in tone.
    """
    tint = rng.integers(-20, 21, 3)
    mean = np.clip(rng.integers(105, 151) + tint, 0, 255)
    delta = np.full(3, int(rng.integers(80, 101))) * (1 if rng.random() < 0.5 else -1)
    delta = np.minimum(np.abs(delta), np.minimum(mean, 255 - mean)) * np.sign(delta)
    return mean, delta.astype(np.int64)


def _stripes(info: SampleInfo, period: float, phase: float, ca: np.ndarray, cb: np.ndarray) -> Image.Image:
    """Box-filtered square wave along the image's long axis (exact pixel coverage of colour ``ca``)."""
    x0, y0, x1, y1 = info.shape_box
    along_x = info.width >= info.height
    n = x1 - x0 if along_x else y1 - y0
    half = period / 2
    t = np.arange(n + 1, dtype=np.float64) + phase
    cum = np.floor(t / period) * half + np.minimum(np.mod(t, period), half)  # length of "a" in [0, t]
    cover = np.diff(cum)[:, None]
    line = np.round(cb + cover * (ca - cb)).astype(np.uint8)
    strip = Image.fromarray(line[None] if along_x else line[:, None])
    return strip.resize((x1 - x0, y1 - y0), Image.Resampling.NEAREST)


def _draw_shape(img: Image.Image, rng: np.random.Generator, info: SampleInfo) -> None:
    x0, y0, x1, y1 = info.shape_box
    bw, bh = x1 - x0, y1 - y0
    period, phase = rng.uniform(*STRIPE_PERIOD) * info.unit, rng.uniform(0, 100)
    outline, outline_w, light = rng.random() < 0.5, max(1, round(info.unit * rng.uniform(0.7, 1.5))), rng.random() < 0.5
    step = max(1, min(bw, bh) // 16)
    bg_mean = np.asarray(img.crop(info.shape_box))[::step, ::step].reshape(-1, 3).mean(0)
    mean, delta = _colours(rng, bg_mean)
    shape, fill = info.class_name.split("_")
    if fill == "solid":
        # Solid stamps are printed in the dark ink tone; striped ones alternate dark ink and the light tone.
        patch = Image.new("RGB", (bw, bh), tuple(int(c) for c in np.clip(mean - np.abs(delta), 0, 255)))
    else:
        patch = _stripes(info, period, phase, mean + delta, mean - delta)
    mask = None
    if shape in ("circle", "ellipse"):
        ss = 4 if max(bw, bh) < 128 else 2 if max(bw, bh) < 512 else 1
        mask = Image.new("L", (bw * ss, bh * ss), 0)
        ImageDraw.Draw(mask).ellipse((0, 0, bw * ss - 1, bh * ss - 1), fill=255)
        mask = mask.resize((bw, bh), Image.Resampling.BOX) if ss > 1 else mask
    colour = _rgb(rng, 210, 256) if light else _rgb(rng, 0, 45)
    # The primary instance (info.shape_box) plus COPIES more of the same class, like a sheet of stickers or
    # stamps: the class evidence then covers much of the image instead of one region.
    boxes = [(x0, y0)]
    gap = max(2, round(2 * info.unit))
    for _ in range(int(rng.integers(*COPIES)) * 6):  # a few tries per copy; copies never overlap
        if len(boxes) > COPIES[1]:
            break
        bx = int(rng.integers(0, max(1, info.width - bw + 1)))
        by = int(rng.integers(0, max(1, info.height - bh + 1)))
        if all(bx + bw + gap <= ox or ox + bw + gap <= bx or by + bh + gap <= oy or oy + bh + gap <= by for ox, oy in boxes):
            boxes.append((bx, by))
    for bx, by in reversed(boxes):  # the primary instance is drawn last, on top
        img.paste(patch, (bx, by), mask)
        if outline:
            (ImageDraw.Draw(img).ellipse if shape in ("circle", "ellipse") else ImageDraw.Draw(img).rectangle)(
                (bx, by, bx + bw - 1, by + bh - 1), outline=colour, width=outline_w)


def _noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Mild sensor noise; only on images small enough (<= 0.6 MP) for it to survive the front end's resize."""
    if img.width * img.height > 600_000 or rng.random() >= 0.35:
        return img
    amp = int(rng.integers(3, 10))
    noise = Image.fromarray(rng.integers(0, 2 * amp + 1, (img.height, img.width, 3), dtype=np.uint8))
    return ImageChops.add(img, noise, 1.0, -amp)


def render_sample(rng: np.random.Generator, *, label: int | None = None, size: tuple[int, int] | None = None,
                  theme: str | None = None, kind: str | None = None) -> tuple[Image.Image, SampleInfo]:
    """Render one sample (RGB image, info) from ``rng``; the keyword arguments override the drawn values.

    ``theme`` is "camera" or "document"; ``kind`` a background kind of :data:`KINDS` ("photo", "studio",
    "page", "receipt", "screenshot", "chart", "scan"), which implies the theme.

    ``size`` is ``(width, height)``. Overrides do not shift the random stream: the same rng state with
    another fill (``label ^ 1``) gives the same image except inside the instances' fills (a counterfactual
    pair); with another shape the background is the same and the primary box differs only by its ratio (the
    copies land elsewhere).
    """
    info = _plan(rng, label, size, theme, kind)
    w, h = info.width, info.height
    if info.kind == "photo":
        img = _photo(rng, w, h)
    elif info.kind == "studio":
        img = _studio(rng, w, h)
    else:
        img = _document(rng, info.kind, w, h)
    _draw_shape(img, rng, info)
    return _noise(img, rng), info


class ProceduralDataset:
    """``split`` "train" or "test" (disjoint random streams) of ``size`` samples; sample ``i`` is a pure
    function of ``(seed, split, i)``, so any number of workers can generate it in any order."""

    def __init__(self, split: Literal["train", "test"], size: int, seed: int = 0) -> None:
        if split not in SPLIT_IDS:
            raise ConfigError(f"split must be one of {tuple(SPLIT_IDS)}, got {split!r}")
        for name, value in (("size", size), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        self.split, self.size, self.seed = split, int(size), int(seed)
        self.classes = CLASSES

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"ProceduralDataset(split={self.split!r}, size={self.size}, seed={self.seed})"

    def _rng(self, i: int) -> np.random.Generator:
        i = operator.index(i)
        if i < 0:
            i += self.size
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for {self!r}")
        return np.random.default_rng([self.seed, SPLIT_IDS[self.split], i])

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        img, info = render_sample(self._rng(i))
        return img, info.label

    def info(self, i: int) -> SampleInfo:
        """The sample's label, theme, size and shape box, without rendering it (cheap)."""
        return _plan(self._rng(i), None, None, None)
