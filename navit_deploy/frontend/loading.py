"""Decode images from files, bytes, PIL images or numpy frames into RGB PIL images. Torch-free.

Every failure is an :class:`~navit_deploy.errors.ImageError` subclass naming the input, so a
pipeline can report it for that image alone.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Callable, Literal, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from navit_deploy.errors import ImageDecodeError, ImageTooLargeError, UnsupportedInputError

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]
ChannelOrder = Literal["RGB", "BGR"]

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

# Pillow's decompression-bomb limit is a module global. Opening an image lifts it for a moment (our own
# limit applies instead); the lock keeps the pipeline's front-end threads from interleaving the
# lift and the restore, which would leave Pillow's guard off for the whole process.
_PIL_LIMIT_LOCK = threading.Lock()


def describe_source(src: object) -> str:
    """Short human-readable name of an image source for error messages."""
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray)):
        return f"<{len(src)} bytes>"
    if isinstance(src, memoryview):
        return f"<{src.nbytes} bytes>"
    if isinstance(src, np.ndarray):
        return f"<array {src.shape} {src.dtype}>"
    if isinstance(src, Image.Image):
        return f"<PIL {src.mode} {src.size[0]}x{src.size[1]}>"
    return f"<{type(src).__name__}>"


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        # High-bit-depth scans: map the full range of the data type to 8 bits, not the data's own range,
        # so that a dark image stays dark.
        if mode.startswith("I;16"):
            top = 65535.0
        elif mode == "F" and 0.0 <= lo and hi <= 1.0:
            top = 1.0
        else:
            top = max(hi, 1.0)
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        # Composite transparent regions on white: documents and UI screenshots have white paper.
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(f"{name}: cannot convert image mode {mode!r} to RGB ({exc})") from exc


def _convert(img: Image.Image, name: str) -> Image.Image:
    """``PIL.Image.convert("RGB")``, as ``transformers.image_utils.load_image`` does (alpha is dropped), then what
    the processors' ``convert_to_rgb`` does to that: an image that still carries a ``transparency`` key (a
    palette or grey PNG with a tRNS chunk keeps it through ``convert``) has the key colour composited on white."""
    try:
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        if rgb.info.get("transparency") is None:
            return rgb
        background = Image.new("RGBA", rgb.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgb.convert("RGBA")).convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(f"{name}: cannot convert image mode {img.mode!r} to RGB ({exc})") from exc


ToRGB = Literal["composite", "convert"]


def _rgb(img: Image.Image, name: str, to_rgb: ToRGB) -> Image.Image:
    return _to_rgb(img, name) if to_rgb == "composite" else _convert(img, name)


def _from_array(arr: np.ndarray, channel_order: ChannelOrder, name: str, to_rgb: ToRGB = "composite") -> Image.Image:
    """A numpy frame as an RGB image: HxW and HxWx1 grey, HxWx3 in ``channel_order``, HxWx4 with alpha in
    ``channel_order`` + A, turned into RGB by the same rule as an RGBA PIL image (``to_rgb``)."""
    if arr.dtype != np.uint8:
        raise ImageDecodeError(f"{name}: numpy frames must be uint8 (HWC or HW), got dtype {arr.dtype}")
    if arr.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(arr), mode="L").convert("RGB")
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageDecodeError(f"{name}: numpy frames must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageDecodeError(f"{name}: empty frame of shape {arr.shape}")
    if arr.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(arr[:, :, 0]), mode="L").convert("RGB")
    if channel_order == "BGR":
        arr = arr[:, :, [2, 1, 0, 3]] if arr.shape[2] == 4 else arr[:, :, ::-1]
    if arr.shape[2] == 4:
        return _rgb(Image.fromarray(np.ascontiguousarray(arr), mode="RGBA"), name, to_rgb)
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def load_image(
    src: ImageSource,
    *,
    channel_order: ChannelOrder = "RGB",
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    draft_to: Callable[[int, int], tuple[int, int]] | None = None,
    to_rgb: ToRGB = "composite",
) -> Image.Image:
    """Decode ``src`` into an RGB PIL image with EXIF orientation applied.

    ``src`` may be a path, encoded bytes (``bytes``, ``bytearray`` or ``memoryview``), a PIL image or a numpy
    frame (HxWx3 uint8 in ``channel_order``, OpenCV hands frames as ``"BGR"``; HxWx4 with alpha, composited
    on white like an RGBA PIL image; HxW grey). Raises :class:`ImageDecodeError` for missing, empty,
    corrupt, truncated or non-image inputs, :class:`UnsupportedInputError` for anything else (None, a
    number, a list), and :class:`ImageTooLargeError` past ``max_image_pixels`` (decompression-bomb guard,
    checked from the header before any pixel is decoded).

    ``draft_to(width, height) -> (tw, th)`` gives the size the caller will resize to (in display
    orientation). JPEGs are then decoded directly at the smallest DCT scale (1/2, 1/4, 1/8) that still
    leaves at least twice that size, which cuts decoding time for large photos and scans several-fold.

    ``to_rgb``: ``"composite"`` (alpha on white, 16-bit by its type's range) or ``"convert"`` (plain
    ``convert("RGB")``, as transformers' ``load_image``); both for files and numpy frames.
    """
    name = describe_source(src)
    if isinstance(src, (bytearray, memoryview)):
        src = bytes(src)
    if not isinstance(src, (str, os.PathLike, bytes, Image.Image, np.ndarray)):
        raise UnsupportedInputError(f"{name}: not an image input; pass a file path, encoded image bytes, a PIL "
                                    "image or a numpy uint8 frame (HxW, HxWx3 or HxWx4)")
    if isinstance(src, np.ndarray):
        img = _from_array(src, channel_order, name, to_rgb)
        _check_pixels(img.size, max_image_pixels, name)
        return img
    if isinstance(src, Image.Image):
        img = src
    else:
        img = _open(src, name, max_image_pixels)
    _check_pixels(img.size, max_image_pixels, name)
    stored = img.size  # before a reduced-scale draft, in the file's own orientation
    if draft_to is not None and img.format == "JPEG":
        _draft(img, draft_to)
    try:
        # No warnings.catch_warnings() here: it swaps the process-wide filter list and is not thread-safe
        # (the front end runs in threads). The size was checked from the header above; a frame that
        # Pillow still finds too large while decoding raises DecompressionBombError.
        img.load()
        # exif_transpose copies the whole image even when there is nothing to rotate: skip that case.
        orientation = img.getexif().get(0x0112, 1)
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name}: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"{name}: corrupt or truncated image data ({exc})") from exc
    if img.size[0] == 0 or img.size[1] == 0:
        raise ImageDecodeError(f"{name}: image has zero size {img.size}")
    out = _rgb(img, name, to_rgb)
    if out is not src:  # never write into the caller's own PIL image
        out.info[SOURCE_SIZE_KEY] = (stored[1], stored[0]) if orientation in _SWAPS_AXES else stored
    return out


SOURCE_SIZE_KEY = "navit_source_size"
_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def source_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of the file ``img`` was decoded from, in display orientation (EXIF applied), before
    any reduced-scale JPEG decode (see ``draft_to`` in :func:`load_image`); ``img.size`` for images that
    did not come from a file or bytes."""
    size = img.info.get(SOURCE_SIZE_KEY)
    return (int(size[0]), int(size[1])) if size else img.size


def _open(src: Union[str, os.PathLike, bytes], name: str, max_image_pixels: int) -> Image.Image:
    if isinstance(src, bytes):
        if not src:
            raise ImageDecodeError(f"{name}: empty buffer")
        fp: object = io.BytesIO(src)
    else:
        path = Path(src)
        if not path.exists():
            raise ImageDecodeError(f"{name}: no such file")
        if path.is_dir():
            raise ImageDecodeError(f"{name}: is a directory, not an image file")
        if path.stat().st_size == 0:
            raise ImageDecodeError(f"{name}: empty file")
        fp = io.BytesIO(path.read_bytes())
    with _PIL_LIMIT_LOCK:
        old_limit = Image.MAX_IMAGE_PIXELS
        try:
            # Our own limit is checked after the header is read; Pillow's is lifted so that its error
            # does not pre-empt ours.
            Image.MAX_IMAGE_PIXELS = None
            return Image.open(fp)  # lazy: reads the header only
        except UnidentifiedImageError as exc:
            raise ImageDecodeError(f"{name}: not a recognised image format") from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageDecodeError(f"{name}: cannot read image header ({exc})") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit


def _draft(img: Image.Image, draft_to: Callable[[int, int], tuple[int, int]]) -> None:
    w, h = img.size
    rotated = img.getexif().get(0x0112, 1) in _SWAPS_AXES
    tw, th = draft_to(h, w) if rotated else draft_to(w, h)
    request = (2 * th, 2 * tw) if rotated else (2 * tw, 2 * th)
    if request[0] < w and request[1] < h:
        img.draft(img.mode, request)


def _check_pixels(size: tuple[int, int], limit: int, name: str) -> None:
    w, h = size
    if w * h > limit:
        raise ImageTooLargeError(
            f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {limit} (decompression-bomb guard); "
            "downscale it first or raise the limit (FrontendConfig.max_image_pixels; navit infer/pack "
            "--max-image-pixels)"
        )
