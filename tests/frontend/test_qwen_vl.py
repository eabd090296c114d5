"""The Qwen2-VL / Qwen2.5-VL front end against transformers' own ``Qwen2VLImageProcessorPil`` and ``smart_resize``:
sizes exactly, pixel values to float rounding, and a failing comparison for each mistake a port commonly makes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from navit_deploy.errors import BudgetError
from navit_deploy.frontend import FrontendConfig, grid_coords, patchify, prepare_image, prepare_pil, target_size
from navit_deploy.frontend.budget import smart_resize
from navit_deploy.frontend.patchify import normalize_patches, resize_to, to_pixels

pytest.importorskip("transformers", reason="the Qwen-VL reference is transformers' processor (test extra)")
qwen_pil = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 1280  # Qwen2.5-VL's preprocessor defaults
PIXEL_ATOL = 1e-6  # measured worst: 4.8e-7 (float32 rounding of the rescale and normalize order)

SIZES = [(1, 1), (5, 3), (27, 29), (57, 29), (28, 2000), (2000, 28), (10, 2000), (123, 777), (640, 480),
         (1001, 999), (1920, 1080), (4000, 3000), (3024, 4032)]


def qwen_frontend(min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> FrontendConfig:
    """What the Qwen preset reads from a Qwen2.5-VL preprocessor_config.json."""
    return FrontendConfig(patch_size=14, budget="pixels", merge_size=2, temporal_patch_size=2, min_pixels=min_pixels,
                          max_pixels=max_pixels, max_grid=1 << 14, mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic",
                          reducing_gap=None, jpeg_draft=False, to_rgb="convert", rescale=1 / 255)


def processor(min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
    return qwen_pil.Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


def reference(img: Image.Image, **budget: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    out = processor(**budget)(images=[img], return_tensors="np")
    return out["pixel_values"], tuple(int(x) for x in out["image_grid_thw"][0])


def random_image(w: int, h: int, seed: int = 0) -> Image.Image:
    # Smooth plus noise: bicubic over-/undershoot and clipping both occur.
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (127 + 100 * np.sin(xx / 7.0 + yy / 11.0))[..., None] * np.ones(3)
    return Image.fromarray(np.clip(base + rng.normal(0, 60, (h, w, 3)), 0, 255).astype(np.uint8))


def matches(ours_patches: np.ndarray, ours_thw: tuple[int, int, int], img: Image.Image, **budget: int) -> bool:
    pv, thw = reference(img, **budget)
    return ours_thw == thw and ours_patches.shape == pv.shape and float(np.abs(ours_patches - pv).max()) <= PIXEL_ATOL


# ------------------------------------------------------------------------------------------------ sizes

def _transformers_smart_resize(h: int, w: int, factor: int, lo: int, hi: int):
    try:
        return qwen_pil.smart_resize(h, w, factor=factor, min_pixels=lo, max_pixels=hi)
    except ValueError:
        return "refused"


@pytest.mark.parametrize("budget", [(MIN_PIXELS, MAX_PIXELS), (4 * 28 * 28, 16384 * 28 * 28), (3136, 3136 * 4),
                                    (28 * 28, 28 * 28 * 160)])
def test_smart_resize_matches_transformers(budget):
    lo, hi = budget
    rng = np.random.default_rng(1)
    sizes = [(int(a), int(b)) for a, b in rng.integers(1, 6000, (400, 2))] + \
            [(int(a), int(b)) for a, b in rng.integers(1, 120, (300, 2))] + \
            [(1, 200), (1, 201), (28, 5600), (14, 2800), (29, 5800), (6000, 30), (27, 27), (42, 42), (70, 14)]
    for h, w in sizes:
        theirs = _transformers_smart_resize(h, w, 28, lo, hi)
        if theirs == "refused":
            with pytest.raises(BudgetError, match="200:1"):
                smart_resize(h, w, 28, lo, hi)
        else:
            assert smart_resize(h, w, 28, lo, hi) == theirs, (h, w)


@pytest.mark.parametrize("size", SIZES)
def test_target_size_is_the_processors(size):
    w, h = size
    cfg = qwen_frontend()
    th, tw = _transformers_smart_resize(h, w, 28, MIN_PIXELS, MAX_PIXELS)
    assert target_size(w, h, cfg) == (tw, th)


def test_thin_images_are_kept_over_budget_like_the_processor_only_with_merge():
    cfg = qwen_frontend(max_pixels=28 * 28 * 160)
    w, h = target_size(28, 5600, cfg)  # 200:1, the short side floored at one 2x2 block
    assert (h, w) == _transformers_smart_resize(5600, 28, 28, cfg.min_pixels, cfg.max_pixels)
    assert w == 28 and w * h > cfg.max_pixels
    assert w * h // 14 ** 2 <= cfg.max_tokens_per_image
    # The project's own pixel budget (merge_size 1) refuses such an image rather than going over.
    with pytest.raises(BudgetError, match="max_pixels"):
        target_size(16, 16 * 200, FrontendConfig(budget="pixels", max_pixels=16 * 16 * 64, max_grid=1024))


def test_aspect_over_200_is_a_budget_error():
    with pytest.raises(BudgetError, match="200:1"):
        target_size(10, 2010, qwen_frontend())
    th, tw = _transformers_smart_resize(2000, 10, 28, MIN_PIXELS, MAX_PIXELS)  # exactly 200:1 is taken
    assert target_size(10, 2000, qwen_frontend()) == (tw, th) == (28, 812)


def test_grid_over_max_grid_is_refused():
    with pytest.raises(BudgetError, match="max_grid"):
        target_size(3000, 2000, qwen_frontend().replace(max_grid=64))


@pytest.mark.parametrize("budget", [(MIN_PIXELS, MAX_PIXELS), (3136, 3136), (3136, 6272), (28 * 28, 28 * 28 * 16)])
def test_max_tokens_per_image_bounds_every_size(budget):
    cfg = qwen_frontend(*budget)
    rng = np.random.default_rng(2)
    sizes = [(int(a), int(b)) for a, b in rng.integers(1, 3000, (500, 2))] + \
            [(1, n) for n in range(1, 201)] + [(n, 200 * n) for n in range(1, 40)]
    worst = 0
    for w, h in sizes:
        try:
            tw, th = target_size(w, h, cfg)
        except BudgetError:
            continue
        worst = max(worst, tw * th // 14 ** 2)
    assert worst <= cfg.max_tokens_per_image
    assert cfg.max_tokens_per_image <= 2 * max(worst, cfg.max_pixels // 14 ** 2)  # a bound, not a wild one


# ------------------------------------------------------------------------------------------------ pixels

@pytest.mark.parametrize("size", SIZES)
def test_pixels_and_grid_match_the_processor(size):
    img = random_image(*size)
    ours = prepare_pil(img, qwen_frontend())
    pv, thw = reference(img)
    assert (1, *ours.grid) == thw
    assert ours.patches.shape == pv.shape and ours.patches.dtype == np.float32
    assert float(np.abs(ours.patches - pv).max()) <= PIXEL_ATOL
    np.testing.assert_array_equal(ours.coords, grid_coords(*ours.grid, 2))


@pytest.mark.parametrize("budget", [(3136, 3136 * 4), (28 * 28 * 256, 28 * 28 * 1024), (56 * 56, 28 * 28 * 160)])
def test_pixels_match_at_other_budgets(budget):
    lo, hi = budget
    for size in [(640, 480), (28, 2000), (77, 3001)]:
        img = random_image(*size, seed=5)
        ours = prepare_pil(img, qwen_frontend(lo, hi))
        assert matches(ours.patches, (1, *ours.grid), img, min_pixels=lo, max_pixels=hi), size


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return str(path)


def _file_inputs(tmp_path):
    rng = np.random.default_rng(7)
    rgb = np.asarray(random_image(211, 137, seed=3))
    a = rng.integers(0, 256, (137, 211), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    p_transp = Image.fromarray(rgb).convert("P")
    p_transp.info["transparency"] = 0
    return {
        "rgb-png": _save(Image.fromarray(rgb), tmp_path / "rgb.png"),
        "jpeg": _save(Image.fromarray(rgb), tmp_path / "rgb.jpg", quality=90),
        "rgba": _save(Image.fromarray(np.dstack([rgb, a]), "RGBA"), tmp_path / "rgba.png"),
        "la": _save(Image.fromarray(np.dstack([rgb[..., 0], a]), "LA"), tmp_path / "la.png"),
        "grey": _save(Image.fromarray(rgb[..., 1]), tmp_path / "l.png"),
        "palette": _save(Image.fromarray(rgb).convert("P"), tmp_path / "p.png"),
        "palette-transparency": _save(p_transp, tmp_path / "pt.png", transparency=0),
        "grey-transparency": _save(Image.fromarray(rgb[..., 1]), tmp_path / "lt.png", transparency=int(rgb[0, 0, 1])),
        "cmyk": _save(Image.fromarray(rgb).convert("CMYK"), tmp_path / "cmyk.jpg"),
        "16-bit": _save(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), tmp_path / "i16.png"),
        "exif-rotated": _save(Image.fromarray(rgb), tmp_path / "rot.jpg", exif=exif),
    }


@pytest.mark.parametrize("kind", ["rgb-png", "jpeg", "rgba", "la", "grey", "palette", "palette-transparency",
                                  "grey-transparency", "cmyk", "16-bit", "exif-rotated"])
def test_files_match_load_image_then_processor(tmp_path, kind):
    """From files as users have them: transformers' ``load_image`` (EXIF transpose, ``convert("RGB")``) then the
    processor, against the project's ``prepare_image`` with the Qwen preset's settings. The processor composites
    a ``transparency`` key that survives ``convert("RGB")`` (palette and grey PNGs with tRNS) on white."""
    from transformers.image_utils import load_image

    path = _file_inputs(tmp_path)[kind]
    ours = prepare_image(path, qwen_frontend())
    img = load_image(path)
    if kind == "exif-rotated":
        assert img.size == (137, 211)
    assert matches(ours.patches, (1, *ours.grid), img)


def test_normalize_matches_textbook_with_temporal_patch():
    cfg = qwen_frontend()
    img = random_image(56, 84)
    x = np.asarray(img, dtype=np.float64)
    reference_pixels = (x / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    expected = patchify(reference_pixels, 14, 2, 2)
    got = normalize_patches(patchify(to_pixels(img, cfg), 14, 2, 2), cfg)
    assert float(np.abs(got - expected).max()) < 1e-6


def test_patchify_layout_by_hand():
    """(c, t, py, px) inside a patch, merge blocks contiguous: checked element by element on a tiny array."""
    p, t, m = 2, 2, 2
    pix = np.arange(4 * 6 * 3).reshape(4, 6, 3)  # H=4, W=6 -> grid 2x3 patches; merge 2 needs a 2x4 grid
    with pytest.raises(ValueError, match="merge"):
        patchify(pix, p, t, m)
    pix = np.arange(4 * 8 * 3).reshape(4, 8, 3)
    out = patchify(pix, p, t, m)
    coords = grid_coords(2, 4, m)
    assert out.shape == (8, 3 * t * p * p)
    for i, (r, c) in enumerate(coords):
        vec = out[i].reshape(3, t, p, p)
        for ch in range(3):
            for tt in range(t):
                np.testing.assert_array_equal(vec[ch, tt], pix[r * p:(r + 1) * p, c * p:(c + 1) * p, ch])
    assert coords[:4].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


# -------------------------------------------------------------------------------------- mistakes fail

def _resized_pixels(img: Image.Image, cfg: FrontendConfig, size: tuple[int, int] | None = None) -> np.ndarray:
    tw, th = size or target_size(*img.size, cfg)
    return to_pixels(resize_to(img, (tw, th), cfg), cfg)


def _floor_size(w: int, h: int) -> tuple[int, int]:
    return max(28, math.floor(w / 28) * 28), max(28, math.floor(h / 28) * 28)


def _with_mistake(img: Image.Image, mistake: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The front end with one typical porting mistake; ``"none"`` is the project's own path."""
    cfg = qwen_frontend()
    if mistake == "factor-14":
        cfg14 = cfg.replace(merge_size=1)  # sides multiples of the patch, not of patch x merge
        tw, th = target_size(*img.size, cfg14)
        pix = _resized_pixels(img, cfg, (tw, th))
        gh, gw = th // 14, tw // 14
        if gh % 2 or gw % 2:
            pix = pix[: gh // 2 * 28, : gw // 2 * 28]
        return normalize_patches(patchify(pix, 14, 2, 2), cfg), (1, pix.shape[0] // 14, pix.shape[1] // 14)
    size = _floor_size(*img.size) if mistake == "floor" else None
    pix = _resized_pixels(img, cfg, size)
    gh, gw = pix.shape[0] // 14, pix.shape[1] // 14
    if mistake in ("none", "floor"):
        patches = patchify(pix, 14, 2, 2)
    elif mistake == "raster-order":
        patches = patchify(pix, 14, 2, 1)
    elif mistake == "channels-last":  # (t, py, px, c) inside the patch, as a timm-style flatten does
        x = pix.reshape(gh // 2, 2, 14, gw // 2, 2, 14, 3).transpose(0, 3, 1, 4, 2, 5, 6).reshape(gh * gw, -1)
        patches = np.concatenate([x, x], axis=1)
    elif mistake == "no-temporal-repeat":  # one frame and zeros in the second slot
        one = patchify(pix, 14, 1, 2).reshape(gh * gw, 3, 1, 196)
        patches = np.concatenate([one, np.zeros_like(one)], axis=2).reshape(gh * gw, -1)
    elif mistake == "temporal-outside-channels":  # (t, c, py, px): the whole patch repeated
        patches = np.tile(patchify(pix, 14, 1, 2), (1, 2))
    else:
        raise ValueError(mistake)
    return normalize_patches(patches, cfg), (1, gh, gw)


MISTAKES = ["raster-order", "channels-last", "no-temporal-repeat", "temporal-outside-channels", "factor-14", "floor"]


@pytest.mark.parametrize("mistake", ["none", *MISTAKES])
def test_each_porting_mistake_is_caught(mistake):
    # 660x490: rounding and flooring to 28 differ on both sides, and both 14-grids are odd.
    sizes = [(660, 490), (123, 777), (301, 45)]
    results = [matches(*_with_mistake(random_image(w, h, seed=9), mistake), random_image(w, h, seed=9))
               for w, h in sizes]
    if mistake == "none":
        assert all(results)
    else:
        assert not any(results), mistake


@pytest.mark.parametrize("budget", [{}, {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 256}])
def test_the_imported_preset_is_this_front_end(tmp_path, budget):
    """The importer's preset, read from a preprocessor_config.json the processor wrote, gives its pixels."""
    import json

    from navit_deploy.importers.hf_qwen_vl import frontend_config

    proc = qwen_pil.Qwen2VLImageProcessorPil(**budget)
    proc.save_pretrained(tmp_path)
    pre = json.loads((tmp_path / "preprocessor_config.json").read_text())
    vision = {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
    fe = frontend_config(pre, vision)
    assert fe == qwen_frontend(budget.get("min_pixels", MIN_PIXELS), budget.get("max_pixels", MAX_PIXELS)).replace(
        max_grid=fe.max_grid)
    reloaded = qwen_pil.Qwen2VLImageProcessorPil.from_pretrained(tmp_path)
    for size in [(640, 480), (28, 2000), (3001, 77)]:
        img = random_image(*size, seed=4)
        out = reloaded(images=[img], return_tensors="np")
        ours = prepare_pil(img, fe)
        assert (1, *ours.grid) == tuple(out["image_grid_thw"][0])
        assert float(np.abs(ours.patches - out["pixel_values"]).max()) <= PIXEL_ATOL
