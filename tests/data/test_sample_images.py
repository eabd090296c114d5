"""The builtin demo/parity image set."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from navit_deploy.data.sample_images import builtin_sample_images, write_builtin_samples


def test_builtin_samples_cover_sizes_and_modes() -> None:
    samples = dict(builtin_sample_images())
    assert len(samples) >= 12
    assert samples["astronaut"].size == (512, 512) and samples["astronaut"].mode == "RGB"
    assert samples["camera"].mode == "L" and samples["page"].mode == "L"  # grayscale kept as is
    expected = {
        "camera_1280x720": (1280, 720),
        "camera_1920x1080": (1920, 1080),
        "phone_1512x2016": (1512, 2016),
        "letter_1275x1650": (1275, 1650),
        "receipt_400x1200": (400, 1200),
        "screenshot_540x1170": (540, 1170),
        "chart_1600x900": (1600, 900),
        "thumbnail_96x64": (96, 64),
    }
    for name, size in expected.items():
        assert samples[name].size == size and samples[name].mode == "RGB", name


def test_builtin_samples_are_deterministic() -> None:
    def digests() -> list[tuple[str, str]]:
        return [(n, hashlib.sha256(im.tobytes()).hexdigest()) for n, im in builtin_sample_images()]

    first = digests()
    assert first == digests() and len({d for _, d in first}) == len(first)


def test_write_builtin_samples(tmp_path: Path) -> None:
    paths = write_builtin_samples(tmp_path / "out")
    names = [n for n, _ in builtin_sample_images()]
    assert [p.stem for p in paths] == names
    suffix = {p.stem: p.suffix for p in paths}
    assert suffix["astronaut"] == suffix["camera_1920x1080"] == ".jpg"
    assert suffix["page"] == suffix["receipt_400x1200"] == suffix["screenshot_540x1170"] == ".png"
    for p in paths:
        with Image.open(p) as img:
            img.load()
            assert img.format == ("JPEG" if p.suffix == ".jpg" else "PNG")
