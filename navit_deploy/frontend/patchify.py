"""Resize at native aspect ratio, cut into patches (uint8) and normalize them. Torch-free (numpy + Pillow)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from navit_deploy.frontend.budget import target_size
from navit_deploy.frontend.config import FrontendConfig
from navit_deploy.frontend.loading import ImageSource, ChannelOrder, load_image, source_size

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class PreparedImage:
    """One image cut into patches, ready to pack.

    ``patches`` is ``[n, C*T*p*p]`` float32 (channel-major inside a patch: ``(c, t, py, px)``; T, the
    temporal patch, is 1 except for Qwen-VL), ``coords`` is ``[n, 2]`` int64 (row, col) on the patch grid,
    in :func:`grid_coords` order (row-major; merge blocks contiguous for ``merge_size > 1``). For Qwen-VL
    configs ``patches`` equals the processor's ``pixel_values`` and ``image_grid_thw`` is ``(1, *grid)``.
    """

    patches: np.ndarray
    coords: np.ndarray
    grid: tuple[int, int]  # (grid_h, grid_w)
    resized_size: tuple[int, int]  # (width, height) after the budgeted resize
    original_size: tuple[int, int]  # (width, height) of the file, EXIF orientation applied, before a reduced-scale decode

    @property
    def num_tokens(self) -> int:
        return int(self.patches.shape[0])

    def keep_tokens(self, keep: np.ndarray) -> "PreparedImage":
        """A copy keeping only the token indices in ``keep`` (used for token dropping in training)."""
        return PreparedImage(self.patches[keep], self.coords[keep], self.grid, self.resized_size, self.original_size)


def grid_coords(grid_h: int, grid_w: int, merge: int = 1) -> np.ndarray:
    """(row, col) coordinates of a ``grid_h x grid_w`` patch grid, int64 ``[gh*gw, 2]``, in row-major order,
    or with ``merge > 1`` in the order of ``Qwen2VLImageProcessor``: ``merge x merge`` blocks row-major over
    the block grid, each block contiguous and row-major inside (both sides must be multiples of ``merge``)."""
    if grid_h % merge or grid_w % merge:
        raise ValueError(f"grid {grid_h}x{grid_w} is not a multiple of merge={merge}")
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.int64), np.arange(grid_w, dtype=np.int64), indexing="ij")
    if merge > 1:
        shape = (grid_h // merge, merge, grid_w // merge, merge)
        rows = rows.reshape(shape).transpose(0, 2, 1, 3)
        cols = cols.reshape(shape).transpose(0, 2, 1, 3)
    return np.stack([rows.ravel(), cols.ravel()], axis=1)


def patchify(pixels: np.ndarray, patch: int, temporal: int = 1, merge: int = 1) -> np.ndarray:
    """``[H, W, C]`` -> ``[(H/p)*(W/p), C*T*p*p]``, ``(c, t, py, px)`` inside a patch (``T = temporal``: the
    still image repeated, as Qwen2-VL's temporal patch), patches in :func:`grid_coords` order for ``merge``
    (row-major for 1; ``merge x merge`` blocks contiguous otherwise, as ``Qwen2VLImageProcessor``)."""
    h, w, c = pixels.shape
    gh, gw = h // patch, w // patch
    if gh % merge or gw % merge:
        raise ValueError(f"grid {gh}x{gw} is not a multiple of merge={merge}")
    x = pixels[: gh * patch, : gw * patch].reshape(gh // merge, merge, patch, gw // merge, merge, patch, c)
    # -> (block row, block col, row in block, col in block, c, py, px); t is a broadcast (no copy until reshape)
    x = x.transpose(0, 3, 1, 4, 6, 2, 5)[:, :, :, :, :, None]
    x = np.broadcast_to(x, x.shape[:5] + (temporal,) + x.shape[6:])
    return np.ascontiguousarray(x.reshape(gh * gw, c * temporal * patch * patch))


def resize_to(img: Image.Image, size: tuple[int, int], cfg: FrontendConfig) -> Image.Image:
    """Resize with antialiasing; a no-op when the size already matches."""
    if img.size == size:
        return img
    # reducing_gap makes large downscales fast (a box reduction first) at no visible cost; None is the exact
    # filter, which imported models' processors use.
    return img.resize(size, _RESAMPLE[cfg.resample], reducing_gap=cfg.reducing_gap)


def to_pixels(img: Image.Image, cfg: FrontendConfig) -> np.ndarray:
    """RGB PIL image -> ``[H, W, C]`` with the config's channel count: uint8 RGB, or the float32 mean of
    R, G and B for one channel."""
    arr = np.asarray(img)
    if cfg.channels == 1:
        return arr.mean(axis=2, keepdims=True, dtype=np.float32)
    return arr


def normalize_patches(patches: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """uint8 patches ``[n, C*T*p*p]`` -> float32 times ``rescale`` (1/255: [0, 1]) then standardized with the
    config's mean/std.

    Done on the patch matrix (one cast and two in-place passes with per-column constants) rather than on
    the image: the same arithmetic as ``(x * rescale - mean) / std`` (within 1 ulp), without the float
    temporaries of the whole image.
    """
    pp = cfg.temporal_patch_size * cfg.patch_size * cfg.patch_size  # columns per channel: (c, t, py, px)
    scale = np.repeat(cfg.rescale / np.asarray(cfg.std, dtype=np.float64), pp).astype(np.float32)
    shift = np.repeat(np.asarray(cfg.mean, dtype=np.float32) / np.asarray(cfg.std, dtype=np.float32), pp)
    out = patches.astype(np.float32)
    out *= scale
    out -= shift.astype(np.float32)
    return out


def prepare_pil(img: Image.Image, cfg: FrontendConfig) -> PreparedImage:
    """Budgeted native-aspect (or, with ``cfg.square_grid``, square) resize, normalize and patchify an RGB PIL image."""
    width, height = img.size
    tw, th = target_size(width, height, cfg)
    resized = resize_to(img, (tw, th), cfg)
    gh, gw = th // cfg.patch_size, tw // cfg.patch_size
    patches = patchify(to_pixels(resized, cfg), cfg.patch_size, cfg.temporal_patch_size, cfg.merge_size)
    return PreparedImage(
        patches=normalize_patches(patches, cfg),
        coords=grid_coords(gh, gw, cfg.merge_size),
        grid=(gh, gw),
        resized_size=(tw, th),
        original_size=source_size(img),
    )


def prepare_image(src: ImageSource, cfg: FrontendConfig, *, channel_order: ChannelOrder = "RGB") -> PreparedImage:
    """Load (EXIF-aware, any mode to RGB), resize to the budget at native aspect, normalize, patchify."""
    img = load_image(src, channel_order=channel_order, max_image_pixels=cfg.max_image_pixels,
                     draft_to=(lambda w, h: target_size(w, h, cfg)) if cfg.jpeg_draft else None, to_rgb=cfg.to_rgb)
    return prepare_pil(img, cfg)
