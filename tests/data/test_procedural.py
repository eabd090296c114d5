"""The procedural camera/document dataset: determinism, splits, labels, sizes, geometry, copies, colours, stripes."""

from __future__ import annotations

import hashlib
import math
import socket
from collections import Counter
from unittest import mock

import numpy as np
import pytest
from PIL import Image
from skimage.measure import label as label_components
from skimage.measure import regionprops

import navit_deploy.data.procedural as P
from navit_deploy.data.procedural import (
    BUDGET_PATCHES,
    CLASSES,
    COPIES,
    KINDS,
    MAX_ASPECT,
    MAX_SIDE,
    MIN_SIDE,
    PATCH,
    RATIO_RANGE,
    SIZE_RANGE,
    SPLIT_IDS,
    STRIPE_PERIOD,
    STUDIO_FRACTION,
    ProceduralDataset,
    SampleInfo,
    render_sample,
    unit_size,
)
from navit_deploy.errors import ConfigError
from navit_deploy.frontend import FrontendConfig, target_size
from navit_deploy.frontend.patchify import resize_to


def digest(img: Image.Image) -> str:
    return f"{img.mode}{img.size}" + hashlib.sha256(img.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def train_infos() -> list[SampleInfo]:
    ds = ProceduralDataset("train", 4000, seed=0)
    return [ds.info(i) for i in range(len(ds))]


def test_classes_are_shape_times_fill() -> None:
    assert len(CLASSES) == 8 == len(set(CLASSES))
    assert set(CLASSES) == {
        f"{s}_{f}" for s in ("circle", "ellipse", "square", "rectangle") for f in ("solid", "striped")
    }
    assert [CLASSES[k].endswith("_striped") for k in range(8)] == [False, True] * 4


def test_same_index_gives_identical_pixels() -> None:
    a, b = ProceduralDataset("train", 60, seed=3), ProceduralDataset("train", 60, seed=3)
    for i in (59, 0, 17):  # out of order on purpose
        img_a, label_a = a[i]
        img_b, label_b = b[i]
        assert digest(img_a) == digest(img_b) and label_a == label_b
        assert digest(a[i][0]) == digest(img_a)  # repeated access
    assert digest(a[-1][0]) == digest(a[59][0])


def test_different_indices_seeds_and_splits_differ() -> None:
    n = 12
    train = [digest(ProceduralDataset("train", n)[i][0]) for i in range(n)]
    test = [digest(ProceduralDataset("test", n)[i][0]) for i in range(n)]
    other_seed = [digest(ProceduralDataset("train", n, seed=1)[i][0]) for i in range(n)]
    assert len(set(train)) == n and len(set(test)) == n
    assert not set(train) & set(test) and not set(train) & set(other_seed) and not set(test) & set(other_seed)


def test_sample_is_a_function_of_seed_split_index() -> None:
    ds = ProceduralDataset("test", 30, seed=5)
    for i in (0, 29):
        img, label = ds[i]
        ref, info = render_sample(np.random.default_rng([5, SPLIT_IDS["test"], i]))
        assert digest(img) == digest(ref) and label == info.label
        assert ds.info(i) == info  # info() plans without rendering, and agrees with the render


def test_info_matches_rendered_image() -> None:
    ds = ProceduralDataset("train", 40, seed=0)
    for i in range(0, 40, 3):
        img, label = ds[i]
        info = ds.info(i)
        assert img.mode == "RGB" and img.size == (info.width, info.height)
        assert label == info.label and info.theme in KINDS and info.kind in KINDS[info.theme]
        assert info.class_name == CLASSES[label]


def test_bad_arguments() -> None:
    ds = ProceduralDataset("train", 5)
    for i in (5, -6, 10**9):
        with pytest.raises(IndexError):
            ds[i]
        with pytest.raises(IndexError):
            ds.info(i)
    with pytest.raises(TypeError):
        ds[1.5]  # type: ignore[index]
    for kwargs in (
        {"split": "val", "size": 5},
        {"split": "train", "size": -1},
        {"split": "train", "size": 5, "seed": -1},
    ):
        with pytest.raises(ConfigError):
            ProceduralDataset(**kwargs)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    for kwargs in (
        {"label": 8},
        {"label": -1},
        {"theme": "outdoor"},
        {"kind": "poster"},
        {"theme": "camera", "kind": "receipt"},
        {"size": (8, 100)},
    ):
        with pytest.raises(ConfigError):
            render_sample(rng, **kwargs)  # type: ignore[arg-type]
    assert len(ProceduralDataset("train", 0)) == 0


def test_overrides_are_respected() -> None:
    for k, kind in enumerate(("photo", "page", "receipt", "screenshot", "chart", "scan")):
        img, info = render_sample(np.random.default_rng(k), label=k, size=(300, 200), kind=kind)
        assert (info.label, info.kind, img.size) == (k, kind, (300, 200))
        assert info.theme == ("camera" if kind == "photo" else "document")
    _, info = render_sample(np.random.default_rng(1), theme="document")
    assert info.theme == "document"


def test_labels_balanced_and_themes_mixed(train_infos: list[SampleInfo]) -> None:
    counts = Counter(info.label for info in train_infos[:400])
    assert set(counts) == set(range(8))
    assert all(25 <= c <= 75 for c in counts.values()), counts  # expected 50 each, +-3.8 sigma
    kinds = Counter(info.kind for info in train_infos[:400])
    assert set(kinds) == {"photo", "studio", "page", "receipt", "screenshot", "chart", "scan"}
    camera = kinds["photo"] + kinds["studio"]
    assert 0.35 <= camera / 400 <= 0.65
    assert abs(kinds["studio"] / camera - STUDIO_FRACTION) < 0.15


def test_size_and_aspect_ranges(train_infos: list[SampleInfo]) -> None:
    w = np.array([i.width for i in train_infos])
    h = np.array([i.height for i in train_infos])
    short, long, aspect = np.minimum(w, h), np.maximum(w, h), w / h
    assert short.min() >= MIN_SIDE and long.max() <= MAX_SIDE
    assert aspect.min() >= 1 / MAX_ASPECT and aspect.max() <= MAX_ASPECT
    # the extremes are reached
    assert short.min() <= MIN_SIDE + 2 and long.max() >= 0.975 * MAX_SIDE
    assert aspect.max() >= 0.95 * MAX_ASPECT and aspect.min() <= 1 / (0.95 * MAX_ASPECT)
    assert 0.02 <= np.mean(long < 96) <= 0.09  # ~5% tiny images
    assert np.median(long) > 250
    for realistic in (16 / 9, 4 / 3, 3 / 4, 8.5 / 11, 1 / math.sqrt(2), 1 / 3, 9 / 19.5):
        assert np.sum(np.abs(aspect / realistic - 1) < 0.01) >= 20, realistic
    assert np.sum(long >= 0.9 * MAX_ASPECT * short) > 20  # random aspect ratios reach 1:4 and 4:1, not only rarely


def test_shape_box_geometry(train_infos: list[SampleInfo]) -> None:
    orientations = Counter()
    for info in train_infos:
        x0, y0, x1, y1 = info.shape_box
        bw, bh = x1 - x0, y1 - y0
        assert 0 <= x0 < x1 <= info.width and 0 <= y0 < y1 <= info.height, info
        short = min(info.width, info.height)
        assert SIZE_RANGE[0] * short - 1 <= min(bw, bh) <= SIZE_RANGE[1] * short + 1, info
        if info.class_name.split("_")[0] in ("circle", "square"):
            assert bw == bh, info
        else:
            assert RATIO_RANGE[0] <= max(bw, bh) / min(bw, bh) <= RATIO_RANGE[1] + 1 / min(bw, bh), info
            orientations[bw > bh] += 1
    assert orientations[True] > 300 and orientations[False] > 300


def _render_pair(seed: int, label: int, size: tuple[int, int]) -> tuple[Image.Image, Image.Image, SampleInfo]:
    """The striped and solid versions of one sample (same rng, so same background, colours, box)."""
    striped, info = render_sample(np.random.default_rng([seed, 99]), label=label | 1, size=size)
    solid, info_solid = render_sample(np.random.default_rng([seed, 99]), label=label & ~1, size=size)
    assert info_solid.shape_box == info.shape_box
    return striped, solid, info


def _render_marked(seed: int, label: int, size: tuple[int, int]) -> Image.Image:
    """The striped version with every stripe in the light tone: a flat light fill, unlike any render the dataset makes.

    ``_stripes`` draws no random numbers, so this is the striped render (same background, colours, boxes, outlines,
    noise) with each fill flat in its light tone, which differs from the solid fill's dark tone by >= 80 in every
    channel at every fill pixel: comparing it with the solid render marks each fill whole, stripes or not.
    """

    def flat(info: SampleInfo, period: float, phase: float, ca: np.ndarray, cb: np.ndarray) -> Image.Image:
        x0, y0, x1, y1 = info.shape_box
        return Image.new("RGB", (x1 - x0, y1 - y0), tuple(int(c) for c in np.maximum(ca, cb)))

    with mock.patch.object(P, "_stripes", flat):
        marked, _ = render_sample(np.random.default_rng([seed, 99]), label=label | 1, size=size)
    return marked


def _lum(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), np.float64)


def _differs(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.any(np.asarray(a) != np.asarray(b), axis=2)


def _centre(info: SampleInfo) -> tuple[slice, slice]:
    """The primary instance's central 40% x 40%: inside every shape and clear of its outline."""
    x0, y0, x1, y1 = info.shape_box
    dx, dy = int(0.3 * (x1 - x0)), int(0.3 * (y1 - y0))
    return slice(y0 + dy, y1 - dy), slice(x0 + dx, x1 - dx)


Box = tuple[int, int, int, int]


def _instances(marked: Image.Image, solid: Image.Image, info: SampleInfo) -> tuple[np.ndarray, list[Box], list[float]]:
    """Find every drawn instance by comparing the marked render (flat light fills) with the solid one (dark fills).

    Returns the mask of fill pixels (where the two differ), the instance boxes (``info.shape_box``'s size, centred
    on each fill's bounding box; the primary instance first) and each fill's area / bounding-box area (~pi/4 for
    ellipses). A fill is a connected component of the mask at least half the box's size on both axes; the rest are
    slivers (e.g. the anti-aliased rim of an ellipse outside its outline).
    """
    fills = _differs(marked, solid)
    x0, y0, x1, y1 = info.shape_box
    bw, bh = x1 - x0, y1 - y0
    boxes: list[Box] = []
    fill_ratios: list[float] = []
    for region in regionprops(label_components(fills, connectivity=2)):
        r0, c0, r1, c1 = region.bbox
        if c1 - c0 >= bw / 2 and r1 - r0 >= bh / 2:
            assert c1 - c0 <= bw and r1 - r0 <= bh, (region.bbox, info)  # no fill is larger than the primary's box
            bx, by = round((c0 + c1 - bw) / 2), round((r0 + r1 - bh) / 2)
            boxes.append((bx, by, bx + bw, by + bh))
            fill_ratios.append(region.area / ((c1 - c0) * (r1 - r0)))
    offsets = [max(abs(p - q) for p, q in zip(box, info.shape_box)) for box in boxes]
    assert offsets and min(offsets) <= 1, (boxes, info)  # the primary instance is where info.shape_box says
    first = int(np.argmin(offsets))
    order = [first] + [k for k in range(len(boxes)) if k != first]
    return fills, [boxes[k] for k in order], [fill_ratios[k] for k in order]


def _outside(diff: np.ndarray, boxes: list[Box], margin: int = 1) -> int:
    """How many differing pixels lie outside every box (grown by ``margin`` px for the centring's rounding)."""
    inside = np.zeros_like(diff)
    for x0, y0, x1, y1 in boxes:
        inside[max(0, y0 - margin) : y1 + margin, max(0, x0 - margin) : x1 + margin] = True
    return int((diff & ~inside).sum())


def _gap(p: Box, q: Box) -> int:
    """Pixels between two boxes along the axis that separates them most (negative if they overlap)."""
    return max(q[0] - p[2], p[0] - q[2], q[1] - p[3], p[1] - q[3])


def _check_fill_tones(striped: Image.Image, solid: Image.Image, marked: Image.Image, fills: np.ndarray) -> None:
    """Striped and solid differ only inside the fills, and per channel the striped fill lies between the solid
    (dark ink) tone and the light tone: dark ink <= striped <= light everywhere (the blends are monotone)."""
    a, b, m = (np.asarray(img, np.int64) for img in (striped, solid, marked))
    assert not np.any(_differs(striped, solid) & ~fills)
    assert np.all(b <= a) and np.all(a <= m)


# What the models see: the builtin NaViT's native-aspect front end at the budget the unit is defined for, and
# the ViT baseline's square resize to the same number of patches (8x8 patches = 128x128 px at 64 patches).
NAVIT_VIEW = FrontendConfig(patch_size=PATCH, max_patches=BUDGET_PATCHES)
SQUARE_VIEW = FrontendConfig(patch_size=PATCH, max_patches=BUDGET_PATCHES, square_grid=math.isqrt(BUDGET_PATCHES))


def _view_contrast(
    striped: Image.Image, solid: Image.Image, info: SampleInfo, region: tuple[int, int, int, int], cfg: FrontendConfig
) -> float:
    """Stripe contrast inside ``region`` after the front end's own budgeted resize: the standard deviation of the
    striped - solid luminance there. The solid fill is flat, so the difference is the stripes alone (background,
    outline and noise cancel); the standard deviation drops its mean (the striped fill is lighter on average,
    which any resize keeps) and measures only the alternation, ~half the tones' difference while it is resolved.
    """
    tw, th = target_size(info.width, info.height, cfg)
    va, vb = _lum(resize_to(striped, (tw, th), cfg)), _lum(resize_to(solid, (tw, th), cfg))
    sx, sy = tw / info.width, th / info.height
    x0, y0, x1, y1 = round(region[0] * sx), round(region[1] * sy), round(region[2] * sx), round(region[3] * sy)
    return float((va[y0:y1, x0:x1] - vb[y0:y1, x0:x1]).std())


@pytest.mark.parametrize(
    "size",
    [
        (1600, 900),
        (700, 2100),
        (1200, 400),
        (300, 300),
        (96, 160),
        (648, 1800),  # the NaViT view's worst patch rounding: 64x192 px, 0.9 px per unit along the long axis
        (2048, 512),  # MAX_ASPECT at MAX_SIDE
    ],
)
def test_stripes_survive_native_and_navit_view_but_vanish_when_squashed(size: tuple[int, int]) -> None:
    for seed in range(4):
        label = [1, 3, 5, 7][seed]
        striped, solid, info = _render_pair(seed, label, size)
        marked = _render_marked(seed, label, size)
        fills, boxes, _ = _instances(marked, solid, info)  # the primary instance and its copies
        assert _outside(fills, boxes) == 0
        _check_fill_tones(striped, solid, marked, fills)  # only the fills differ; solid = the dark stripe tone
        ys, xs = _centre(info)
        region = (xs.start, ys.start, xs.stop, ys.stop)
        d = (_lum(striped) - _lum(solid))[ys, xs]  # the stripes above the dark tone: 0 (dark) .. tones (light)
        tones = float(np.median((_lum(marked) - _lum(solid))[ys, xs]))  # light - dark tone (both flat)
        assert tones >= 150, tones  # ink: the tones are >= 160 apart in luminance (-1 rounding, -clipped noise)

        # at native resolution the striped fill reaches both tones: its darkest pixels are (nearly) the solid
        # fill's tone, its lightest (nearly) the light tone; at 1 px per unit the box-filtered stripes need not
        # cover a whole pixel in the small central region, hence the margins
        assert d.min() <= 0.2 * tones and d.max() >= 0.8 * tones, (d.min(), d.max(), tones)

        # ... and is lighter on average by half the tones' difference. The region holds a non-integer number of
        # periods, which moves the striped mean by at most (period / 4) * tones / (region length); +1 for rounding.
        along_x = info.width >= info.height
        profile = d.mean(axis=0) if along_x else d.mean(axis=1)  # across the stripes (averaging along keeps them)
        tolerance = STRIPE_PERIOD[1] * info.unit / 4 * tones / len(profile) + 1
        assert abs(d.mean() - tones / 2) <= tolerance, (d.mean(), tones, tolerance)
        assert profile.std() > 40, profile.std()  # the alternation itself: ~tones / 2 (measured >= 52)

        # at the resolution the NaViT front end with a BUDGET_PATCHES budget gives the whole image, the stripes
        # are still there (periods of STRIPE_PERIOD units are >= 2.25 view pixels even after patch rounding)
        seen = _view_contrast(striped, solid, info, region, NAVIT_VIEW)
        assert seen > 25, seen  # measured >= 42 on these sizes over 100 seeds

        # the ViT baseline's square resize to the same budget squashes the long axis of an elongated image by
        # about sqrt(aspect) more than the NaViT view, which pushes the stripes (at most STRIPE_PERIOD[1] / sqrt(3)
        # = 2.02 px at 3:1, 1.75 px at 4:1) to or below its Nyquist limit, where the front end's bicubic filter
        # blurs most of them away (the fill's mean, lighter than a solid fill, stays). Measured retention (square /
        # NaViT-view stripe contrast, primary instance's centre) at these seeds: 3:1 sizes 0.08-0.66, 4:1
        # 0.11-0.25. It is not a hard zero: at 3:1 a period near STRIPE_PERIOD[1] sits right at the Nyquist limit
        # and keeps >= 0.5 in ~22% of 100 seeds (up to 0.79), at 3.5:1 in ~2% (up to 0.53) and at 4:1 in none
        # (up to 0.44), so the check starts at 3.5:1 (of these sizes, only 4:1); below 3:1 (16:9: 0.09-0.96,
        # 2.8:1: 0.05-0.86 over 100 seeds) the square view keeps much of the detail.
        square = _view_contrast(striped, solid, info, region, SQUARE_VIEW)
        if max(info.width, info.height) >= 3.5 * min(info.width, info.height):
            assert square < 0.5 * seen, (square, seen)
        elif info.width == info.height:
            assert square == seen  # a square image is not distorted: both front ends see the same pixels


def test_copies_are_nonoverlapping_instances_of_the_same_class() -> None:
    """The primary instance plus up to COPIES[1] copies: same size, shape, fill and colours, never overlapping."""
    counts, centres = [], []
    for seed in range(60):
        label = seed % 8
        striped, solid, info = _render_pair(seed, label, None)  # dataset-like random size and background
        marked = _render_marked(seed, label, None)
        fills, boxes, fill_ratios = _instances(marked, solid, info)
        assert _outside(fills, boxes) == 0, info  # the fills (and any rim slivers) lie inside the boxes
        _check_fill_tones(striped, solid, marked, fills)  # striped and solid differ only inside the fills
        assert 1 <= len(boxes) <= 1 + COPIES[1], (len(boxes), info)
        counts.append(len(boxes))
        gap = max(2, round(2 * info.unit))  # the spacing the renderer keeps between instances
        diff = _differs(striped, solid)
        for i, p in enumerate(boxes):
            assert -1 <= p[0] and -1 <= p[1] and p[2] <= info.width + 1 and p[3] <= info.height + 1, (p, info)
            for q in boxes[:i]:
                assert _gap(p, q) >= gap - 1, (p, q, gap, info)  # -1: the boxes are centred to +-0.5 px
            # every instance is striped: its light stripes (and partly covered pixels) differ from the solid fill,
            # its dark stripes do not (measured 0.52-0.93 of the fill differs; the most at 1 px per unit, where
            # most pixels are partly covered)
            box = np.s_[max(0, p[1]) : p[3], max(0, p[0]) : p[2]]
            lit = diff[box][fills[box]].mean()
            assert 0.4 <= lit <= 0.96, (lit, info)
        # same shape: an ellipse fills ~pi/4 of its bounding box, a rectangle all of it
        if info.class_name.startswith(("circle", "ellipse")):
            assert all(r < 0.95 for r in fill_ratios), (fill_ratios, info)
        else:
            assert all(r >= 0.99 for r in fill_ratios), (fill_ratios, info)
        # same fill and colours: each copy's centre matches the primary's pixel for pixel (the stripes too) up to
        # the sensor noise (mean |difference| of two independent draws ~6.3 at its largest amplitude)
        a = np.asarray(striped, np.float64)
        x0, y0, x1, y1 = boxes[0]
        dx, dy = int(0.3 * (x1 - x0)), int(0.3 * (y1 - y0))
        ref = a[y0 + dy : y1 - dy, x0 + dx : x1 - dx]
        for p0, q0, p1, q1 in boxes[1:]:
            centres.append(((p0 + p1) / 2 / info.width, (q0 + q1) / 2 / info.height))
            tops = [(q0 + dy + oy, p0 + dx + ox) for oy in (-1, 0, 1) for ox in (-1, 0, 1)]  # boxes are +-0.5 px
            crops = [a[t : t + ref.shape[0], u : u + ref.shape[1]] for t, u in tops if t >= 0 and u >= 0]
            best = min(np.abs(crop - ref).mean() for crop in crops if crop.shape == ref.shape)
            assert best < 8, (best, info)
    # most images hold several instances (measured on these seeds: mean 4.5, 92% with >= 3, up to 8), spread over
    # the whole image rather than clustered around the primary one
    counts_arr = np.array(counts)
    assert counts_arr.max() == 1 + COPIES[1] and counts_arr.mean() >= 3.5 and np.mean(counts_arr >= 3) >= 0.7, counts
    xy = np.array(centres)
    assert np.all(np.abs(xy.mean(0) - 0.5) < 0.1) and np.all(xy.std(0) > 0.18), (xy.mean(0), xy.std(0))


def test_fill_colours_are_ink_like() -> None:
    """Nearly neutral ink: stripes of a dark and a light tone of one faint tint; a solid fill is the dark tone."""
    lum = np.array([0.299, 0.587, 0.114])
    rng = np.random.default_rng(0)
    for _ in range(2000):
        mean, delta = P._colours(rng, rng.uniform(0, 255, 3))
        dark, light = sorted((mean - delta, mean + delta), key=lambda c: float(lum @ c))
        assert np.all(dark >= 0) and np.all(light <= 255), (mean, delta)
        assert 85 <= mean.min() and mean.max() <= 170 and np.ptp(mean) <= 40, mean  # tone 105..150, tint +-20
        assert np.all(np.sign(delta) == np.sign(delta[0])) and np.all(np.abs(delta) >= 80), delta  # one dark, one light
        assert np.all(np.abs(delta) <= 100) and float(lum @ (light - dark)) >= 160, delta
        assert np.all(dark <= 90) and np.all(light >= 165) and np.ptp(dark) <= 60, (dark, light)
    # ... as rendered: the primary instance's centre (inside every shape, no outline) in both renders
    for seed in range(12):
        striped, solid, info = _render_pair(seed, seed % 8, None)
        ys, xs = _centre(info)
        flat = np.median(np.asarray(solid, np.float64)[ys, xs].reshape(-1, 3), axis=0)
        assert np.ptp(flat) <= 62 and float(lum @ flat) <= 91, (flat, info)  # the dark tone; +1: median of noisy pixels
        stripes = _lum(striped)[ys, xs]
        contrast = np.percentile(stripes, 98) - np.percentile(stripes, 2)
        assert contrast >= 150, (contrast, info)  # the two tones are >= 160 apart in luminance
        # the solid fill is the stripes' dark tone: the darkest striped pixels equal it (same noise in both renders)
        # and the striped fill is lighter on average, by about half the contrast
        d = stripes - _lum(solid)[ys, xs]
        assert np.percentile(d, 2) <= 0.1 * contrast and 0.35 * contrast <= d.mean() <= 0.65 * contrast, (d, info)


@pytest.mark.parametrize("label", range(0, 8, 2))
def test_drawn_shape_matches_box(label: int) -> None:
    """Near the box corners an ellipse leaves the background untouched; a rectangle covers it."""
    for seed in range(3):
        striped, solid, info = _render_pair(seed, label, (1200, 800))
        fills = _differs(_render_marked(seed, label, (1200, 800)), solid)
        x0, y0, x1, y1 = info.shape_box
        bw, bh = x1 - x0, y1 - y0
        ys, xs = slice(y0 + int(0.05 * bh), y0 + int(0.11 * bh)), slice(x0 + int(0.05 * bw), x0 + int(0.11 * bw))
        a, b = _lum(striped), _lum(solid)
        centre = np.abs(
            a[y0 + bh // 3 : y1 - bh // 3, x0 + bw // 3 : x1 - bw // 3]
            - b[y0 + bh // 3 : y1 - bh // 3, x0 + bw // 3 : x1 - bw // 3]
        ).mean()
        assert centre > 15  # the stripes
        if CLASSES[label].startswith(("circle", "ellipse")):
            assert not fills[ys, xs].any() and np.array_equal(a[ys, xs], b[ys, xs])
        else:
            assert fills[ys, xs].mean() > 0.5  # the fill, except where the outline (up to 1.5 units) covers it


def test_unit_size() -> None:
    side = PATCH * math.isqrt(BUDGET_PATCHES)  # the square image that exactly fills the budget (128 px at 64)
    assert unit_size(side, side) == 1.0 and unit_size(side // 2, side // 4) == 1.0  # never below one pixel
    assert unit_size(2 * side, 2 * side) == pytest.approx(2.0)
    # at MAX_ASPECT the budget is a (2 side) x (side / 2) image, e.g. 256x64 at 64 patches
    assert unit_size(16 * side, 4 * side) == pytest.approx(8.0) == unit_size(4 * side, 16 * side)
    assert unit_size(1920, 1080) == pytest.approx(1920 / (PATCH * math.sqrt(BUDGET_PATCHES * 1920 / 1080)))
    # a unit is one pixel of what the NaViT front end at BUDGET_PATCHES produces: exactly where the budget is a
    # whole patch grid; otherwise the front end rounds each side to whole patches, which at 64 patches scales the
    # long side by 0.9..1.08 (e.g. 648x1800 -> 64x192 px vs 213 units), so the finest stripes (STRIPE_PERIOD[0]
    # units) stay above the view's 2-pixel Nyquist limit
    navit = FrontendConfig(patch_size=PATCH, max_patches=BUDGET_PATCHES)
    for w, h in ((side, side), (8 * side, 8 * side), (16 * side, 4 * side), (4 * side, 16 * side)):
        assert max(target_size(w, h, navit)) * unit_size(w, h) == pytest.approx(max(w, h)), (w, h)
    for w, h in ((1920, 1080), (1600, 900), (700, 2100), (1200, 400), (648, 1800), (1512, 2016), (2000, 720)):
        px_per_unit = max(target_size(w, h, navit)) * unit_size(w, h) / max(w, h)
        assert 0.85 <= px_per_unit <= 1.15 and STRIPE_PERIOD[0] * px_per_unit > 2, (w, h, px_per_unit)


def test_sources_load_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the procedural dataset tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(P, "_SOURCES", None)  # force a fresh load; restored afterwards
    sources = P._sources()
    assert len(sources["photo"]) == len(sources["rotated"]) >= 10 and len(sources["scan"]) == 2
    assert all(img.mode == "RGB" for img in sources["photo"])
    for kind in ("photo", "scan"):
        img, _ = render_sample(np.random.default_rng(0), kind=kind)
        assert img.mode == "RGB"
