"""``original_size`` is the file's size (display orientation), not the size of a reduced-scale JPEG decode."""

import numpy as np
import pytest
from PIL import Image

from navit_deploy.frontend import FrontendConfig, load_image, prepare_image
from navit_deploy.frontend.loading import source_size


def _jpeg(path, w, h, orientation=1):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=90, exif=exif)
    return str(path)


@pytest.mark.parametrize("w,h,orientation,expected", [(1411, 1411, 1, (1411, 1411)), (1400, 700, 1, (1400, 700)),
                                                      (1400, 700, 6, (700, 1400))])
def test_original_size_is_the_files(tmp_path, w, h, orientation, expected):
    path = _jpeg(tmp_path / "big.jpg", w, h, orientation)
    fe = FrontendConfig(patch_size=16, max_patches=64, jpeg_draft=True)
    decoded = load_image(path, draft_to=lambda a, b: (128, 128))
    assert decoded.size[0] < expected[0]  # decoded at a reduced DCT scale
    assert source_size(decoded) == expected
    assert prepare_image(path, fe).original_size == expected
    assert prepare_image(path, fe.replace(jpeg_draft=False)).original_size == expected


def test_pil_input_keeps_its_size_and_is_not_written_into():
    img = Image.new("RGB", (300, 200))
    assert prepare_image(img, FrontendConfig()).original_size == (300, 200)
    assert "navit_source_size" not in img.info
