"""The procedural camera/document dataset: determinism, splits, labels, sizes, geometry, stripe detail."""

from __future__ import annotations

import hashlib
import math
import socket
from collections import Counter

import numpy as np
import pytest
from PIL import Image

import navit_deploy.data.procedural as P
from navit_deploy.data.procedural import (
    BUDGET_PATCHES,
    CLASSES,
    KINDS,
    MAX_ASPECT,
    MAX_SIDE,
    MIN_SIDE,
    PATCH,
    RATIO_RANGE,
    SIZE_RANGE,
    SPLIT_IDS,
    STRIPE_PERIOD,
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
    assert set(kinds) == {"photo", "page", "receipt", "screenshot", "chart", "scan"}
    assert 0.35 <= kinds["photo"] / 400 <= 0.65


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


def _lum(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), np.float64)


def _counterfactual(seed: int, label: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, SampleInfo]:
    """Luminance of the striped and solid versions (same rng, so same background, colours, box)."""
    striped, solid, info = _render_pair(seed, label, size)
    return _lum(striped), _lum(solid), info


# What the models see: the builtin NaViT's native-aspect front end at the budget the unit is defined for, and
# the ViT baseline's square resize to the same number of patches (8x8 patches = 128x128 px at 64 patches).
NAVIT_VIEW = FrontendConfig(patch_size=PATCH, max_patches=BUDGET_PATCHES)
SQUARE_VIEW = FrontendConfig(patch_size=PATCH, max_patches=BUDGET_PATCHES, square_grid=math.isqrt(BUDGET_PATCHES))


def _view_contrast(
    striped: Image.Image, solid: Image.Image, info: SampleInfo, region: tuple[int, int, int, int], cfg: FrontendConfig
) -> float:
    """Mean |striped - solid| luminance inside ``region`` after the front end's own budgeted resize."""
    tw, th = target_size(info.width, info.height, cfg)
    va, vb = _lum(resize_to(striped, (tw, th), cfg)), _lum(resize_to(solid, (tw, th), cfg))
    sx, sy = tw / info.width, th / info.height
    x0, y0, x1, y1 = round(region[0] * sx), round(region[1] * sy), round(region[2] * sx), round(region[3] * sy)
    return float(np.abs(va[y0:y1, x0:x1] - vb[y0:y1, x0:x1]).mean())


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
        striped, solid, info = _render_pair(seed, [1, 3, 5, 7][seed], size)
        a, b = _lum(striped), _lum(solid)
        x0, y0, x1, y1 = info.shape_box
        dx, dy = int(0.3 * (x1 - x0)), int(0.3 * (y1 - y0))  # central region: inside every shape
        region = (x0 + dx, y0 + dy, x1 - dx, y1 - dy)
        ra, rb = a[y0 + dy : y1 - dy, x0 + dx : x1 - dx], b[y0 + dy : y1 - dy, x0 + dx : x1 - dx]
        assert np.all(a[:y0] == b[:y0]) and np.all(a[y1:] == b[y1:])  # only the fill differs
        native = np.abs(ra - rb).mean()
        assert native > 15, native  # striped and solid differ at native resolution

        # ... and have the same mean colour. The region holds a non-integer number of periods, which moves the
        # striped mean by at most (period / 4) * (stripe contrast) / (region length); +1 for uint8 rounding.
        along_x = info.width >= info.height
        profile = ra.mean(axis=0) if along_x else ra.mean(axis=1)  # across the stripes
        max_period = STRIPE_PERIOD[1] * info.unit
        tolerance = max_period / 4 * (profile.max() - profile.min()) / len(profile) + 1
        assert abs(ra.mean() - rb.mean()) <= tolerance, (ra.mean(), rb.mean(), tolerance)

        def shrink(arr: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
            img = Image.fromarray(np.round(arr).astype(np.uint8))
            return np.asarray(img.resize((shape_hw[1], shape_hw[0]), Image.Resampling.BOX), np.float64)

        across = (1, ra.shape[1]) if along_x else (ra.shape[0], 1)  # averaging along the stripes keeps them
        assert np.abs(shrink(ra, across) - shrink(rb, across)).mean() > 15

        # at the resolution the NaViT front end with a BUDGET_PATCHES budget gives the whole image, the stripes
        # are still there (periods of STRIPE_PERIOD units are >= 2.25 view pixels even after patch rounding)
        seen = _view_contrast(striped, solid, info, region, NAVIT_VIEW)
        assert seen > 10, seen

        # the ViT baseline's square resize to the same budget squashes the long axis of an elongated image by
        # about sqrt(aspect) more than the NaViT view, which pushes the stripes (at most STRIPE_PERIOD[1] / sqrt(3)
        # = 2.02 px at 3:1, 1.75 px at 4:1) to or below its Nyquist limit, where the front end's bicubic filter
        # blurs most of them away. Measured retention (square / NaViT-view contrast) at these seeds: 3:1 sizes
        # 0.17-0.43, 4:1 0.06-0.24. It is not a hard zero: at 3:1 a period near STRIPE_PERIOD[1] sits right at
        # the Nyquist limit and can keep up to ~0.75 (other seeds); below 3:1 (16:9: 0.23-0.79, 2.8:1: 0.30-0.70)
        # the square view keeps much of the detail, so only elongated images are checked.
        square = _view_contrast(striped, solid, info, region, SQUARE_VIEW)
        if max(info.width, info.height) >= 3 * min(info.width, info.height):
            assert square < 0.5 * seen, (square, seen)
        elif info.width == info.height:
            assert square == seen  # a square image is not distorted: both front ends see the same pixels


@pytest.mark.parametrize("label", range(0, 8, 2))
def test_drawn_shape_matches_box(label: int) -> None:
    """Near the box corners an ellipse leaves the background untouched; a rectangle covers it."""
    for seed in range(3):
        a, b, info = _counterfactual(seed, label, (1200, 800))
        x0, y0, x1, y1 = info.shape_box
        bw, bh = x1 - x0, y1 - y0
        ys, xs = slice(y0 + int(0.05 * bh), y0 + int(0.11 * bh)), slice(x0 + int(0.05 * bw), x0 + int(0.11 * bw))
        corner = np.abs(a[ys, xs] - b[ys, xs]).mean()
        centre = np.abs(
            a[y0 + bh // 3 : y1 - bh // 3, x0 + bw // 3 : x1 - bw // 3]
            - b[y0 + bh // 3 : y1 - bh // 3, x0 + bw // 3 : x1 - bw // 3]
        ).mean()
        assert centre > 15
        if CLASSES[label].startswith(("circle", "ellipse")):
            assert corner == 0
        else:
            assert corner > 10


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
