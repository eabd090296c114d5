"""Token budgets: native-aspect target sizes for NaFlex-style ``max_patches`` and Qwen2-VL-style pixels."""

from __future__ import annotations

import math

from navit_deploy.errors import BudgetError
from navit_deploy.frontend.config import FrontendConfig


def _grid_for_scale(width: int, height: int, scale: float, patch: int) -> tuple[int, int]:
    gw = max(1, round(width * scale / patch))
    gh = max(1, round(height * scale / patch))
    return gw, gh


def max_patches_grid(width: int, height: int, cfg: FrontendConfig) -> tuple[int, int]:
    """Largest (grid_w, grid_h) at the native aspect ratio with ``grid_w*grid_h <= max_patches``.

    Each side is rounded to whole patches, so the aspect ratio moves by at most one patch of rounding.
    Both sides are also capped at ``cfg.max_grid`` (the positional-embedding table size).
    """
    p = cfg.patch_size
    lo, hi = 0.0, math.sqrt(cfg.max_patches * p * p / (width * height)) * 2.0 + 1.0
    if not cfg.upscale:
        hi = min(hi, 1.0 + 1e-9)
    # Binary search for the largest scale whose rounded grid fits both limits.
    for _ in range(60):
        mid = (lo + hi) / 2
        gw, gh = _grid_for_scale(width, height, mid, p)
        if gw * gh <= cfg.max_patches and gw <= cfg.max_grid and gh <= cfg.max_grid:
            lo = mid
        else:
            hi = mid
    scale = lo  # the grid at `lo` always fits: a 1x1 grid fits any valid config
    gw, gh = _grid_for_scale(width, height, scale, p)
    _check_aspect(width, height, gw, gh, p, scale, cfg)
    return gw, gh


def _check_aspect(width: int, height: int, gw: int, gh: int, p: int, scale: float, cfg: FrontendConfig) -> None:
    # The clamp to one patch would distort the image by more than one patch of rounding when the
    # short side would be less than half a patch at the chosen scale.
    if min(width, height) * scale / p < 0.5 - 1e-9:
        ratio = max(width, height) / min(width, height)
        raise BudgetError(
            f"image {width}x{height} (aspect {ratio:.1f}:1) cannot fit the budget "
            f"(max_patches={cfg.max_patches}, max_grid={cfg.max_grid}) without distorting its aspect ratio; "
            "crop or tile it, or raise the budget"
        )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Target ``(height, width)`` by Qwen2-VL's ``smart_resize`` (``transformers.models.qwen2_vl``), with the
    same arithmetic, so sizes match ``Qwen2VLImageProcessor`` exactly: sides rounded to multiples of
    ``factor`` (patch x merge); above ``max_pixels`` scaled down and floored, below ``min_pixels`` scaled
    up and ceiled. As in the processor, a side never goes below ``factor``, so a thin image may stay
    above ``max_pixels`` (e.g. 28x6000 at ``max_pixels=28*28*160``). Aspect ratios over 200:1 are
    refused (:class:`BudgetError`; the processor raises ValueError)."""
    ratio = max(height, width) / min(height, width)
    if ratio > 200:
        raise BudgetError(f"image {width}x{height} has aspect ratio {ratio:.0f}:1 > 200:1 (Qwen-VL's limit); "
                          "crop or tile it")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def smart_resize_max_pixels(factor: int, min_pixels: int, max_pixels: int) -> int:
    """An upper bound on ``h * w`` from :func:`smart_resize` over every accepted image (aspect <= 200:1).

    Above ``max_pixels`` only through the one-``factor`` floor of a thin image (short side ``factor``,
    long side at most ``sqrt(200 * max_pixels)``) or the ceilings of the ``min_pixels`` branch (each side
    at most one ``factor`` above its exact value)."""
    thin = factor * math.sqrt(200 * max_pixels)
    s = math.sqrt(min_pixels)
    small = (s * math.sqrt(200) + factor) * (s / math.sqrt(200) + factor)
    return int(max(max_pixels, thin, small))


def _patch_pixel_size(width: int, height: int, cfg: FrontendConfig) -> tuple[int, int]:
    """The project's own pixel budget (``merge_size == 1``): ``smart_resize`` at factor = patch size with a
    one-patch floor on the first rounding too, and a refusal where the floor would break ``max_pixels``."""
    p = cfg.patch_size
    ratio = max(width, height) / min(width, height)
    if ratio > 200:
        raise BudgetError(f"image {width}x{height} has aspect ratio {ratio:.0f}:1 > 200:1; crop or tile it")
    h_bar = max(p, round(height / p) * p)
    w_bar = max(p, round(width / p) * p)
    if h_bar * w_bar > cfg.max_pixels:
        beta = math.sqrt(height * width / cfg.max_pixels)
        h_bar = max(p, math.floor(height / beta / p) * p)
        w_bar = max(p, math.floor(width / beta / p) * p)
    elif h_bar * w_bar < cfg.min_pixels:
        beta = math.sqrt(cfg.min_pixels / (height * width))
        h_bar = math.ceil(height * beta / p) * p
        w_bar = math.ceil(width * beta / p) * p
    if h_bar * w_bar > cfg.max_pixels:
        raise BudgetError(
            f"image {width}x{height} cannot fit max_pixels={cfg.max_pixels} at patch size {p} "
            "with at least one patch per side; crop it or raise max_pixels"
        )
    return h_bar, w_bar


def pixel_range_size(width: int, height: int, cfg: FrontendConfig) -> tuple[int, int]:
    """Qwen2-VL-style pixel budget: pixels in [min_pixels, max_pixels], sides multiples of the patch size.
    Returns the target (width, height) in pixels.

    With ``merge_size > 1`` (Qwen2-VL / Qwen2.5-VL towers) this is the processor's :func:`smart_resize`
    exactly, at factor ``patch_size * merge_size``, including its one-block floor that keeps thin images
    above ``max_pixels``: the imported model must see its reference's pixels. With ``merge_size == 1`` (the
    project's own pixel budget) the factor is the patch size and an image that cannot fit ``max_pixels``
    with one patch per side is refused (:class:`BudgetError`) rather than sent over budget.
    Either way a grid side over ``max_grid`` is refused.
    """
    p = cfg.patch_size
    if cfg.merge_size > 1:
        h_bar, w_bar = smart_resize(height, width, p * cfg.merge_size, cfg.min_pixels, cfg.max_pixels)
    else:
        h_bar, w_bar = _patch_pixel_size(width, height, cfg)
    if w_bar // p > cfg.max_grid or h_bar // p > cfg.max_grid:
        raise BudgetError(
            f"image {width}x{height} needs a {w_bar // p}x{h_bar // p} patch grid, larger than the model's "
            f"max_grid={cfg.max_grid}; lower max_pixels or crop the image"
        )
    return w_bar, h_bar


def naflex_size(width: int, height: int, cfg: FrontendConfig, eps: float = 1e-5) -> tuple[int, int]:
    """Target (width, height) by ``Siglip2ImageProcessor``'s ``get_image_size_for_max_num_patches``, with the
    same arithmetic (so sizes match it exactly): the largest scale in ``[eps/10, 100]`` found by bisection
    to ``eps`` whose sides, each rounded up to whole patches (at least one), give at most ``max_patches``
    patches. ``upscale=False`` keeps images at most their native size (rounded up to whole patches)."""
    p = cfg.patch_size

    def side(scale: float, size: int) -> int:
        return int(max(p, math.ceil(size * scale / p) * p))

    def fits(scale: float) -> bool:
        return (side(scale, height) / p) * (side(scale, width) / p) <= cfg.max_patches

    if not cfg.upscale and fits(1.0):
        return side(1.0, width), side(1.0, height)
    lo, hi = eps / 10, (100.0 if cfg.upscale else 1.0)
    while (hi - lo) >= eps:
        mid = (lo + hi) / 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return side(lo, width), side(lo, height)


def target_size(width: int, height: int, cfg: FrontendConfig) -> tuple[int, int]:
    """Target (width, height) in pixels, multiples of the patch size, for an image of the given size."""
    if width <= 0 or height <= 0:
        raise BudgetError(f"image has an empty side: {width}x{height}")
    if cfg.square_grid:
        side = cfg.square_grid * cfg.patch_size
        return side, side
    if cfg.budget == "pixels":
        return pixel_range_size(width, height, cfg)
    if cfg.budget == "naflex":
        return naflex_size(width, height, cfg)
    gw, gh = max_patches_grid(width, height, cfg)
    return gw * cfg.patch_size, gh * cfg.patch_size
