"""Optimization profiles of VLM towers (Qwen2.5-VL windows, Qwen2-VL merge blocks) against the packs the packer
really makes: every pack of a mix of images runs on a default profile, the window bound is tight (so a smaller
one refuses real packs), and the mistakes a port makes (no window input, a window bound from full windows or
from one window per image) are refused. Pure Python: no TensorRT, no torch."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from navit_deploy.compile.profiles import (PackProfile, check_profile_inputs, check_profiles, choose_profile,
                                           default_profiles, fit_to_model, parse_profile, window_bound)
from navit_deploy.errors import ConfigError, InputValidationError
from navit_deploy.frontend import PreparedImage, grid_coords
from navit_deploy.packing import Packer
from navit_deploy.packing.windows import WindowSpec
from tests.compile.fake_trt import FakeContext, FakeEngine

PATCH_DIM = 1176  # 3 x 2 x 14 x 14
UNIT, WINDOW = 4, 4  # 2x2 merge blocks; windows of 4x4 merged tokens (112 px)
SPEC = WindowSpec(2, WINDOW)
QWEN_GRAPH = {"patches": ("tokens", PATCH_DIM), "coords": ("tokens", 2), "segment_ids": ("tokens",),
              "cu_seqlens": ("images_plus_1",), "window_segment_ids": ("tokens",),
              "window_cu_seqlens": ("windows_plus_1",)}  # what the export declares (tests/compile/test_tokens_trt.py)

# Image mixes (patch grids) that give few or many windows per token: one merge block per image (W = B = T/unit
# when 64 of them fill 256 tokens), edge windows cut (5x9 merged -> 6 windows), full windows, thin strips.
MIXES = {
    "one-block images": [(2, 2)] * 70,
    "cut edge windows": [(10, 18)] * 6 + [(2, 2)] * 5,
    "full windows": [(8, 8)] * 12,
    "thin strips": [(2, 40), (40, 2), (2, 6)] * 4,
    "random": "random",
}


def _images(mix: str, rng: np.random.Generator) -> list[PreparedImage]:
    grids = MIXES[mix]
    if grids == "random":
        grids = [(2 * int(rng.integers(1, 16)), 2 * int(rng.integers(1, 16))) for _ in range(40)]
    return [PreparedImage(rng.standard_normal((h * w, PATCH_DIM)).astype(np.float32), grid_coords(h, w, 2), (h, w),
                          (w * 14, h * 14), (w * 14, h * 14)) for h, w in grids]


def _packs(mix: str, pack_len: int, rng: np.random.Generator, max_images: int = 64):
    items = _images(mix, rng)
    fitting = [it for it in items if it.num_tokens <= pack_len]
    return Packer(pack_len, max_images, windows=SPEC).pack(fitting)


def _counts(pack) -> tuple[int, int, int]:
    feed = pack.model_inputs()
    return feed["patches"].shape[0], feed["cu_seqlens"].shape[0] - 1, feed["window_cu_seqlens"].shape[0] - 1


def test_window_bound_is_one_window_per_merge_block():
    assert window_bound(256, 4) == 64 and window_bound(1024, 4) == 256 and window_bound(100, 1) == 100


def test_default_tokens_profiles():
    profiles = default_profiles(1024, 64, 640, unit=UNIT, windowed=True, window=WINDOW)
    assert [p.tokens for p in profiles] == [(4, 256, 256), (4, 512, 512), (4, 1024, 1024)]
    assert [p.images for p in profiles] == [(1, 1, 64), (1, 1, 64), (1, 2, 64)]
    assert [p.windows for p in profiles] == [(1, 4, 64), (1, 8, 128), (1, 16, 256)]  # opt: full 64-token windows
    shapes = profiles[0].shapes(PATCH_DIM)
    assert shapes["window_cu_seqlens"] == ((2,), (5,), (65,))
    assert shapes["window_segment_ids"] == shapes["segment_ids"] == ((4,), (256,), (256,))
    assert shapes["patches"] == ((4, PATCH_DIM), (256, PATCH_DIM), (256, PATCH_DIM))
    check_profile_inputs(profiles, PATCH_DIM, QWEN_GRAPH)
    # Qwen2-VL: merge blocks, no windows; images capped by blocks, not tokens.
    (p,) = default_profiles(64, 64, unit=UNIT)
    assert p.tokens == (4, 64, 64) and p.images == (1, 1, 16) and not p.windowed
    assert set(p.shapes(PATCH_DIM)) == {"patches", "coords", "segment_ids", "cu_seqlens"}


@pytest.mark.parametrize("pack_len", [256, 512, 1024])
@pytest.mark.parametrize("mix", list(MIXES))
def test_default_profiles_cover_every_pack_the_packer_makes(pack_len, mix, rng):
    profiles = check_profiles(default_profiles(pack_len, 64, 640, unit=UNIT, windowed=True, window=WINDOW))
    engine = FakeEngine(profiles, patch_dim=PATCH_DIM, inputs=list(QWEN_GRAPH))
    packs = _packs(mix, pack_len, rng)
    assert packs
    for pack in packs:
        tokens, images, windows = _counts(pack)
        assert images <= windows <= window_bound(tokens, UNIT)
        index = choose_profile(profiles, tokens, images, windows)
        ctx = FakeContext(engine)
        ctx.set_optimization_profile_async(index, 0)
        for name, value in pack.model_inputs().items():
            assert ctx.set_input_shape(name, value.shape), (name, value.shape, profiles[index].describe())
        assert ctx.infer_shapes() == []


def test_the_window_bound_is_reached_by_real_packs(rng):
    """64 one-block images fill a 256-token pack with 64 windows: W = T / unit, so no smaller bound is safe."""
    (pack,) = _packs("one-block images", 256, rng)[:1]
    tokens, images, windows = _counts(pack)
    assert (tokens, images, windows) == (256, 64, 64) == (256, 64, window_bound(256, UNIT))


def _full_window_bound(p: PackProfile) -> PackProfile:
    w = math.ceil(p.max_tokens / (UNIT * WINDOW * WINDOW))  # assumes every window is full: wrong, edges are cut
    return replace(p, opt_windows=min(p.opt_windows, w), max_windows=w)


def _one_window_per_image(p: PackProfile) -> PackProfile:
    return replace(p, opt_windows=min(p.opt_windows, p.max_images), max_windows=p.max_images)  # wrong: W >= B


@pytest.mark.parametrize("mistake, mix, pack_len", [
    (_full_window_bound, "one-block images", 256), (_full_window_bound, "cut edge windows", 1024),
    (_one_window_per_image, "cut edge windows", 1024), (_one_window_per_image, "thin strips", 256),
])
def test_mistake_a_wrong_window_bound_refuses_real_packs(mistake, mix, pack_len, rng):
    max_images = 8 if mistake is _one_window_per_image else 64
    good = default_profiles(pack_len, max_images, 640, unit=UNIT, windowed=True, window=WINDOW)
    wrong = [mistake(p) for p in good]
    packs = _packs(mix, pack_len, rng, max_images=max_images)
    for pack in packs:
        choose_profile(good, *_counts(pack))
    with pytest.raises(InputValidationError, match="windows"):
        for pack in packs:
            choose_profile(wrong, *_counts(pack))


def test_mistake_a_profile_without_the_window_input(rng):
    good = default_profiles(256, 64, 640, unit=UNIT, windowed=True, window=WINDOW)
    no_windows = [replace(p, min_windows=0, opt_windows=0, max_windows=0) for p in good]
    with pytest.raises(ConfigError, match=r"no shapes for \['window_segment_ids', 'window_cu_seqlens'\].*"
                                          r"window_cu_seqlens:MIN,OPT,MAX"):
        check_profile_inputs(no_windows, PATCH_DIM, QWEN_GRAPH)
    pack = _packs("full windows", 256, rng)[0]
    with pytest.raises(InputValidationError, match="has window inputs, but this engine's profiles have none"):
        choose_profile(no_windows, *_counts(pack))
    with pytest.raises(ConfigError, match="which the model does not take"):  # windows for a model without
        check_profile_inputs(good, PATCH_DIM, {k: v for k, v in QWEN_GRAPH.items() if "window" not in k})


def test_profile_inputs_follow_the_graph():
    (p,) = default_profiles(256, 64, unit=UNIT, windowed=True, window=WINDOW)
    with pytest.raises(ConfigError, match="axis 1 of 'patches' is 588"):
        check_profile_inputs([p], PATCH_DIM, {**QWEN_GRAPH, "patches": ("tokens", 588)})
    with pytest.raises(ConfigError, match="rank 2"):
        check_profile_inputs([p], PATCH_DIM, {**QWEN_GRAPH, "segment_ids": ("tokens", 1)})
    with pytest.raises(ConfigError, match="share the dimension 'tokens'"):  # one dim name, two ranges
        check_profile_inputs([p], PATCH_DIM, {**QWEN_GRAPH, "window_cu_seqlens": ("tokens",)})


def test_pack_outside_every_profile_is_a_typed_error():
    profiles = default_profiles(512, 64, unit=UNIT, windowed=True, window=WINDOW)
    assert choose_profile(profiles, 256, 3, 64) == 0 and choose_profile(profiles, 256, 3, 65) == 1
    with pytest.raises(InputValidationError, match=r"516 tokens and 1 images in 2 windows.*tokens 4\.\.512"):
        choose_profile(profiles, 516, 1, 2)
    with pytest.raises(InputValidationError, match="in 129 windows.*windows 1..128"):
        choose_profile(profiles, 512, 1, 129)
    with pytest.raises(InputValidationError, match="has no window inputs"):
        choose_profile(profiles, 256, 1, None)


@pytest.mark.parametrize("kw, match", [
    (dict(min_windows=0, opt_windows=1, max_windows=2), "1 <= min <= opt <= max"),
    (dict(min_windows=2, opt_windows=1, max_windows=4), "1 <= min <= opt <= max"),
    (dict(min_windows=0, opt_windows=0, max_windows=0, unit=0), "positive integer"),
    (dict(min_windows=1, opt_windows=1, max_windows=0), "all 0"),
    (dict(min_tokens=6), "multiples of 4"),
    (dict(min_windows=65, opt_windows=65, max_windows=65), "every window holds at least one merge block"),
    (dict(min_images=5, opt_images=5, max_windows=4, opt_windows=4), "every image has at least one window"),
    (dict(min_images=65, opt_images=65, max_images=65), "every image has at least one merge block"),
])
def test_window_profile_validation(kw, match):
    base = dict(min_tokens=4, opt_tokens=256, max_tokens=256, min_images=1, opt_images=4, max_images=64,
                min_windows=1, opt_windows=4, max_windows=64, unit=4)
    PackProfile(**base)
    with pytest.raises(ConfigError, match=match):
        PackProfile(**{**base, **kw})


def test_round_trips_keep_windows_and_unit():
    p = PackProfile(4, 256, 512, 1, 4, 64, 1, 8, 128, unit=4)
    assert PackProfile.from_dict(p.to_dict()) == p and p.to_dict()["windows"] == [1, 8, 128]
    assert PackProfile.from_shapes(p.shapes(PATCH_DIM), PATCH_DIM, unit=4) == p
    old = PackProfile(1, 256, 256, 1, 4, 64)  # a pooled engine's sidecar stays as it was
    assert old.to_dict() == {"tokens": [1, 256, 256], "images": [1, 4, 64]}
    assert "windows" in p.describe() and "windows" not in old.describe()


def test_parse_profile_with_windows_then_fit_to_the_model():
    p = parse_profile(["patches:4,256,512 cu_seqlens:2,5,65 window_cu_seqlens:2,9,129"], PATCH_DIM)
    assert p.windows == (1, 8, 128) and p.unit == 1
    assert fit_to_model(p, 4) == PackProfile(4, 256, 512, 1, 4, 64, 1, 8, 128, unit=4)
    with pytest.raises(ConfigError, match="multiples of 4"):
        fit_to_model(parse_profile(["patches:1,256,512 cu_seqlens:2,5,65 window_cu_seqlens:2,9,129"], PATCH_DIM), 4)
    with pytest.raises(ConfigError, match="without 'window_cu_seqlens'"):
        parse_profile(["patches:4,256,512 cu_seqlens:2,5,65 window_segment_ids:4,256,512"], PATCH_DIM)
    with pytest.raises(ConfigError, match="does not follow 'patches'"):
        parse_profile(["patches:4,256,512 cu_seqlens:2,5,65 window_segment_ids:4,256,256 "
                       "window_cu_seqlens:2,9,129"], PATCH_DIM)


def test_pack_lens_must_be_whole_merge_blocks():
    with pytest.raises(ConfigError, match=r"\[1001\] are not whole merge blocks of 4 tokens.*1004"):
        default_profiles(1024, 64, pack_lens=[512, 1001], unit=4, windowed=True, window=4)
