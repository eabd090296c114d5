import io

import numpy as np
import pytest
from PIL import Image

from navit_deploy.errors import ImageDecodeError, ImageTooLargeError
from navit_deploy.frontend import FrontendConfig, load_image, patchify, prepare_image


def _png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "RGB"])
def test_any_mode_becomes_rgb(mode):
    base = Image.new("RGB", (40, 30), (200, 100, 50))
    img = base.convert(mode) if mode not in ("I;16", "I", "F") else Image.new(mode, (40, 30), 1000 if mode != "F" else 0.5)
    out = load_image(img)
    assert out.mode == "RGB" and out.size == (40, 30)


def test_i16_scan_maps_full_range():
    img = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert np.asarray(load_image(img))[0, 0, 0] == 255


def test_transparency_composited_on_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(load_image(img))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (60, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (20, 60)


def test_bgr_frames_are_swapped():
    frame = np.zeros((4, 5, 3), dtype=np.uint8)
    frame[..., 0] = 255  # blue in OpenCV's BGR order
    rgb = np.asarray(load_image(frame, channel_order="BGR"))
    assert rgb[0, 0].tolist() == [0, 0, 255]
    assert np.asarray(load_image(frame))[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("frame", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8),
                                   np.zeros((0, 4, 3), np.uint8)])
def test_bad_frames(frame):
    with pytest.raises(ImageDecodeError):
        load_image(frame)


def test_bad_files(tmp_path):
    good = _png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    cases = {
        "empty.png": b"",
        "text.png": b"this is not an image at all",
        "truncated.png": good[: len(good) // 2],
        "corrupt.jpg": _png_bytes(Image.new("RGB", (64, 64)), "JPEG")[:200] + b"\x00" * 50,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageDecodeError):
            load_image(tmp_path / name)
    with pytest.raises(ImageDecodeError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageDecodeError, match="directory"):
        load_image(tmp_path)


def test_decompression_bomb_rejected_before_decoding():
    bomb = _png_bytes(Image.new("L", (5000, 5000)))
    with pytest.raises(ImageTooLargeError, match="decompression"):
        load_image(bomb, max_image_pixels=1_000_000)


def test_concurrent_loads_leave_pillow_globals_alone(monkeypatch):
    """The pipeline decodes in threads: loading must not corrupt Pillow's bomb limit or the warning filters.

    Image.open and ImageFile.load are slowed down so that the threads overlap inside them every time.
    """
    import threading
    import time
    import warnings

    from PIL import ImageFile

    slow_open, slow_load = Image.open, ImageFile.ImageFile.load

    def open_(*a, **kw):
        time.sleep(0.005)
        return slow_open(*a, **kw)

    def load_(self):
        time.sleep(0.005)
        return slow_load(self)

    monkeypatch.setattr(Image, "open", open_)
    monkeypatch.setattr(ImageFile.ImageFile, "load", load_)
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    data = _png_bytes(Image.new("RGB", (40, 30), (10, 20, 30)), "JPEG")
    errors: list[BaseException] = []

    def work():
        try:
            for _ in range(5):
                assert load_image(data).size == (40, 30)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert Image.MAX_IMAGE_PIXELS == limit
    assert warnings.filters == filters


def test_patchify_layout():
    pixels = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
    p = patchify(pixels, 2)
    assert p.shape == (6, 12)
    # second patch = rows 0-1, cols 2-3, channel-major inside the patch
    np.testing.assert_array_equal(p[1].reshape(3, 2, 2), pixels[0:2, 2:4].transpose(2, 0, 1))


def test_prepare_image_normalizes_and_counts_tokens():
    cfg = FrontendConfig(max_patches=256)
    prepared = prepare_image(Image.new("RGB", (1920, 1080), (255, 255, 255)), cfg)
    assert prepared.grid == (12, 21) and prepared.num_tokens == 252
    assert prepared.patches.shape == (252, 768)
    np.testing.assert_allclose(prepared.patches, 1.0, atol=1e-6)
    assert prepared.coords[-1].tolist() == [11, 20]


@pytest.mark.parametrize("orientation", [1, 6])
def test_large_jpegs_decode_at_reduced_scale_with_same_result(tmp_path, orientation):
    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 255, (30, 45, 3)), np.ones((100, 100, 1))).astype(np.uint8)  # 3000x4500
    path = tmp_path / "big.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(base).save(path, quality=95, exif=exif)
    cfg = FrontendConfig(max_patches=64)
    from navit_deploy.frontend import target_size

    drafted = load_image(path, draft_to=lambda w, h: target_size(w, h, cfg))
    full = load_image(path)
    assert full.size == ((3000, 4500) if orientation == 6 else (4500, 3000))
    tw, th = target_size(*full.size, cfg)
    assert 2 * tw <= drafted.size[0] < full.size[0] and 2 * th <= drafted.size[1] < full.size[1]
    a = prepare_image(path, cfg)  # uses the draft
    b = prepare_image(full, cfg)  # full decode, same budgeted size
    assert a.grid == b.grid
    assert float(np.abs(a.patches - b.patches).mean()) < 0.02  # normalized units ([-1, 1])


@pytest.mark.parametrize("channels,patch", [(3, 16), (3, 14), (1, 16), (1, 8)])
def test_patch_normalization_matches_image_normalization(channels, patch):
    """Normalizing uint8 patches equals the textbook ``(x / 255 - mean) / std`` on the image, then patchify."""
    from navit_deploy.frontend.patchify import normalize_patches, to_pixels

    rng = np.random.default_rng(channels * 100 + patch)
    img = Image.fromarray(rng.integers(0, 256, (3 * patch, 5 * patch, 3), dtype=np.uint8))
    mean, std = (0.48, 0.46, 0.41)[:channels], (0.27, 0.26, 0.28)[:channels]
    cfg = FrontendConfig(patch_size=patch, channels=channels, mean=mean, std=std)
    rgb = np.asarray(img, dtype=np.float64)
    x = rgb.mean(axis=2, keepdims=True) if channels == 1 else rgb
    reference = patchify((x / 255.0 - np.asarray(mean)) / np.asarray(std), patch)
    got = normalize_patches(patchify(to_pixels(img, cfg), patch), cfg)
    assert got.dtype == np.float32 and got.shape == (15, channels * patch * patch)
    np.testing.assert_allclose(got, reference, atol=2e-6)
