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
    CLASSES,
    SIZE_RANGE,
    KINDS,
    SPLIT_IDS,
    ProceduralDataset,
    SampleInfo,
    render_sample,
    unit_size,
)
from navit_deploy.errors import ConfigError


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
    assert short.min() >= 32 and long.max() <= 2048
    assert aspect.min() >= 0.25 and aspect.max() <= 4.0
    # the extremes are reached
    assert short.min() <= 34 and long.max() >= 2000
    assert aspect.max() >= 3.8 and aspect.min() <= 1 / 3.8
    assert 0.02 <= np.mean(long < 96) <= 0.09  # ~5% tiny images
    assert np.median(long) > 250
    for realistic in (16 / 9, 4 / 3, 3 / 4, 8.5 / 11, 1 / math.sqrt(2), 1 / 3, 9 / 19.5):
        assert np.sum(np.abs(aspect / realistic - 1) < 0.01) >= 20, realistic
    assert np.sum(long >= 3.6 * short) > 20  # random aspect ratios reach 1:4 and 4:1, not only rarely


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
            assert 1.5 <= max(bw, bh) / min(bw, bh) <= 2.0 + 1 / min(bw, bh), info
            orientations[bw > bh] += 1
    assert orientations[True] > 300 and orientations[False] > 300


def _counterfactual(seed: int, label: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, SampleInfo]:
    """Luminance of the striped and solid versions (same rng, so same background, colours, box)."""
    striped, info = render_sample(np.random.default_rng([seed, 99]), label=label | 1, size=size)
    solid, info_solid = render_sample(np.random.default_rng([seed, 99]), label=label & ~1, size=size)
    assert info_solid.shape_box == info.shape_box
    return np.asarray(striped.convert("L"), np.float64), np.asarray(solid.convert("L"), np.float64), info


@pytest.mark.parametrize("size", [(1600, 900), (700, 2100), (1200, 400), (300, 300), (96, 160)])
def test_stripes_survive_native_and_navit_view_but_vanish_when_squashed(size: tuple[int, int]) -> None:
    for seed in range(4):
        a, b, info = _counterfactual(seed, [1, 3, 5, 7][seed], size)
        x0, y0, x1, y1 = info.shape_box
        dx, dy = int(0.3 * (x1 - x0)), int(0.3 * (y1 - y0))  # central region: inside every shape
        ra, rb = a[y0 + dy : y1 - dy, x0 + dx : x1 - dx], b[y0 + dy : y1 - dy, x0 + dx : x1 - dx]
        assert np.all(a[:y0] == b[:y0]) and np.all(a[y1:] == b[y1:])  # only the fill differs
        native = np.abs(ra - rb).mean()
        assert native > 15, native  # striped and solid differ at native resolution
        assert abs(ra.mean() - rb.mean()) < 3  # ... and have the same mean colour

        def shrink(arr: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
            img = Image.fromarray(np.round(arr).astype(np.uint8))
            return np.asarray(img.resize((shape_hw[1], shape_hw[0]), Image.Resampling.BOX), np.float64)

        along_x = info.width >= info.height
        n_long = ra.shape[1] if along_x else ra.shape[0]
        k = max(1, int(n_long // (8 * P.STRIPE_PERIOD[1] * info.unit)))  # >= 8 periods per output pixel
        squash = (ra.shape[0], k) if along_x else (k, ra.shape[1])
        squashed = np.abs(shrink(ra, squash) - shrink(rb, squash)).mean()
        assert squashed < min(6.0, native / 4), (squashed, native)
        across = (1, ra.shape[1]) if along_x else (ra.shape[0], 1)  # averaging along the stripes keeps them
        assert np.abs(shrink(ra, across) - shrink(rb, across)).mean() > 15

        # at the resolution a 256-patch NaViT sees the whole image, the stripes are still there
        view = (max(1, round(info.width / info.unit)), max(1, round(info.height / info.unit)))
        sx, sy = view[0] / info.width, view[1] / info.height
        va = np.asarray(Image.fromarray(a.astype(np.uint8)).resize(view, Image.Resampling.BILINEAR), np.float64)
        vb = np.asarray(Image.fromarray(b.astype(np.uint8)).resize(view, Image.Resampling.BILINEAR), np.float64)
        box = (round((x0 + dx) * sx), round((y0 + dy) * sy), round((x1 - dx) * sx), round((y1 - dy) * sy))
        seen = np.abs(va[box[1] : box[3], box[0] : box[2]] - vb[box[1] : box[3], box[0] : box[2]]).mean()
        assert seen > 10, seen


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
    assert unit_size(256, 256) == 1.0 and unit_size(100, 40) == 1.0
    assert unit_size(512, 512) == pytest.approx(2.0)
    assert unit_size(2048, 512) == pytest.approx(4.0)  # 4:1 budget is 512x128
    assert unit_size(512, 2048) == pytest.approx(4.0)
    assert unit_size(1920, 1080) == pytest.approx(1920 / (16 * math.sqrt(256 * 1920 / 1080)))


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
