"""The calibration reader: ONNX Runtime's CalibrationDataReader protocol, same front end and packer as
inference, deterministic order, image cap, and typed errors for unusable data."""

from __future__ import annotations

import numpy as np
import pytest

from navit_deploy.calibration.errors import CalibrationDataError, CalibrationImagesUnreadableError
from navit_deploy.calibration.reader import CalibrationReader, default_images, folder_images
from navit_deploy.errors import ArtifactMismatchError, ConfigError, ImageError
from navit_deploy.frontend import prepare_image
from navit_deploy.packing import Packer
from navit_deploy.runtime.artifact import read_artifact
from navit_deploy.runtime.runner import INPUT_DTYPES, INPUT_NAMES
from tests.calibration.conftest import CALIB_IMAGES, write_corrupt, write_images


@pytest.fixture(scope="module")
def artifact(exported):
    return read_artifact(exported("dense"))


def _reader(artifact, folder, **kw):
    kw.setdefault("progress", False)
    return CalibrationReader.for_artifact(artifact, folder, **kw)


def test_protocol_feeds_then_none_and_rewind(artifact, calib_dir):
    from onnxruntime.quantization import CalibrationDataReader

    r = _reader(artifact, calib_dir)
    assert isinstance(r, CalibrationDataReader)
    feeds = []
    while (f := r.get_next()) is not None:
        feeds.append(f)
    assert len(feeds) == len(r) >= 1
    assert r.get_next() is None  # stays exhausted
    for f in feeds:
        assert list(f) == list(INPUT_NAMES)
        for name, dtype in INPUT_DTYPES.items():
            assert f[name].dtype == dtype
        assert f["patches"].shape == (artifact.pack_len, artifact.frontend.patch_dim)
        assert len(f["cu_seqlens"]) - 1 <= artifact.max_images
    r.rewind()
    again = r.get_next()
    assert all(np.array_equal(again[k], feeds[0][k]) for k in INPUT_NAMES)
    assert r.usable == CALIB_IMAGES and not r.failures


def test_same_front_end_and_packer_as_inference(artifact, calib_dir):
    """The feeds are exactly what the runtime's Packer makes from the runtime's front end."""
    r = _reader(artifact, calib_dir)
    paths = sorted(calib_dir.iterdir())
    expected = Packer(artifact.pack_len, artifact.max_images).pack([prepare_image(str(p), artifact.frontend)
                                                                     for p in paths])
    got = list(r)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        for k, v in e.model_inputs().items():
            np.testing.assert_array_equal(g[k], v)


def test_deterministic_across_readers_and_fingerprint(artifact, calib_dir):
    a, b = _reader(artifact, calib_dir), _reader(artifact, calib_dir)
    assert a.fingerprint() == b.fingerprint()
    for fa, fb in zip(a, b, strict=True):
        for k in INPUT_NAMES:
            np.testing.assert_array_equal(fa[k], fb[k])


@pytest.mark.parametrize("cap", [1, 5, CALIB_IMAGES, 100])
def test_folder_cap_is_evenly_spaced(calib_dir, cap):
    imgs = folder_images(calib_dir, cap)
    names = [i.name for i in imgs]
    assert len(imgs) == min(cap, CALIB_IMAGES)
    assert names == sorted(names)
    if 1 < cap < CALIB_IMAGES:  # spans the folder: first and last file included
        assert names[0].endswith("img_000.png") and names[-1].endswith(f"img_{CALIB_IMAGES - 1:03d}.png")


@pytest.mark.parametrize("cap", [3, 20])
def test_default_set_builtin_then_train_split(cap):
    imgs = default_images(cap)
    assert len(imgs) == cap
    assert imgs[0].key.startswith("builtin:")
    assert not any("test" in i.key for i in imgs)
    if cap > 15:
        assert imgs[-1].key.startswith("procedural-train:")
    assert [i.key for i in imgs] == [i.key for i in default_images(cap)]


def test_reader_cap_limits_images_and_packs(artifact, calib_dir):
    r = _reader(artifact, calib_dir, max_images=9)
    r.prepare()
    assert len(r.images) == 9 and r.usable == 9
    assert sum(int(f["cu_seqlens"].shape[0]) - 1 for f in r) == 9


def test_set_range(artifact, calib_dir):
    """ONNX Runtime's strided calibration restricts a pass to a range of packs."""
    r = CalibrationReader.for_artifact(artifact.with_(pack_len=128), calib_dir, progress=False)  # several packs
    assert len(r) >= 2
    second = r.packs[1].model_inputs()
    r.set_range(1, 2)
    got = r.get_next()
    assert np.array_equal(got["patches"], second["patches"]) and r.get_next() is None


def test_skips_bad_images_and_lists_them(artifact, tmp_path):
    write_images(tmp_path, 9)
    write_corrupt(tmp_path, 2)
    r = _reader(artifact, tmp_path)
    r.prepare()
    assert r.usable == 9 and len(r.failures) == 2
    assert all("bad_" in name for name, _ in r.failures)


@pytest.mark.parametrize("good,bad", [(7, 0), (3, 6), (1, 20)])
def test_too_few_usable_images(artifact, tmp_path, good, bad):
    write_images(tmp_path, good)
    write_corrupt(tmp_path, bad)
    with pytest.raises(CalibrationDataError, match=f"only {good} usable"):
        _reader(artifact, tmp_path).prepare()


def test_all_images_fail(artifact, tmp_path):
    write_corrupt(tmp_path, 10)
    with pytest.raises(CalibrationImagesUnreadableError, match="all 10 calibration images failed") as e:
        _reader(artifact, tmp_path).prepare()
    assert isinstance(e.value, ImageError) and isinstance(e.value, CalibrationDataError)


def test_empty_or_missing_folder(artifact, tmp_path):
    with pytest.raises(CalibrationImagesUnreadableError, match="no calibration images"):
        _reader(artifact, tmp_path).prepare()
    with pytest.raises(ConfigError, match="does not exist"):
        _reader(artifact, tmp_path / "nope")


@pytest.mark.parametrize("change", [{"max_patches": 32}, {"patch_size": 8}, {"mean": [0.0, 0.0, 0.0]}])
def test_front_end_mismatch(artifact, calib_dir, change):
    r = CalibrationReader(folder_images(calib_dir), artifact.frontend.replace(**change), artifact.pack_len,
                          artifact.max_images, progress=False)
    with pytest.raises(ArtifactMismatchError, match="front end differs"):
        r.check_matches(artifact)


@pytest.mark.parametrize("pack_len,max_images,what", [(256, 64, "pack length"), (512, 8, "images per pack")])
def test_packing_mismatch(artifact, calib_dir, pack_len, max_images, what):
    r = CalibrationReader(folder_images(calib_dir), artifact.frontend, pack_len, max_images, progress=False)
    with pytest.raises(ArtifactMismatchError, match=what):
        r.check_matches(artifact)
