"""Optimization profiles: bucketing, --profile parsing, per-pack selection, limits (pure Python, runs anywhere)."""

from __future__ import annotations

import pytest

from navit_deploy.compile.profiles import (PackProfile, bucket_lengths, check_profiles, choose_profile,
                                           default_profiles, largest_profile, limits_for, parse_pack_lens,
                                           parse_profile)
from navit_deploy.errors import ConfigError, InputValidationError
from navit_deploy.runtime.runner import PackLimits


@pytest.mark.parametrize("pack_len, expected", [
    (1024, [256, 512, 1024]), (2048, [256, 512, 1024, 2048]), (1000, [256, 512, 1000]), (256, [256]),
    (100, [100]), (300, [256, 300]),
])
def test_bucket_lengths(pack_len, expected):
    assert bucket_lengths(pack_len) == expected


def test_bucket_lengths_rejects_nonpositive():
    with pytest.raises(ConfigError):
        bucket_lengths(0)


def test_default_profiles_one_per_bucket():
    profiles = default_profiles(pack_len=512, max_images=64, max_patches_per_image=64)
    assert profiles == [PackProfile(1, 256, 256, 1, 4, 64), PackProfile(1, 512, 512, 1, 8, 64)]


def test_default_profiles_cap_images_at_tokens_and_use_given_buckets():
    (p,) = default_profiles(pack_len=100, max_images=200, max_patches_per_image=256)
    assert p == PackProfile(1, 100, 100, 1, 1, 100)  # at most one image per token
    profiles = default_profiles(pack_len=512, max_images=8, max_patches_per_image=64, pack_lens=[1024, 128, 128])
    assert [p.max_tokens for p in profiles] == [128, 1024]
    assert all(p.max_images == 8 for p in profiles)


def test_profile_shapes_follow_tokens_and_images():
    p = PackProfile(1, 512, 1024, 1, 16, 64)
    assert p.shapes(768) == {
        "patches": ((1, 768), (512, 768), (1024, 768)),
        "coords": ((1, 2), (512, 2), (1024, 2)),
        "segment_ids": ((1,), (512,), (1024,)),
        "cu_seqlens": ((2,), (17,), (65,)),
    }
    assert PackProfile.from_shapes(p.shapes(768), 768) == p
    assert PackProfile.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("args", [(2, 1, 4, 1, 1, 1), (0, 1, 4, 1, 1, 1), (1, 1, 4, 1, 3, 2), (1, 1, 4, 5, 5, 5)])
def test_profile_validation(args):
    with pytest.raises(ConfigError):
        PackProfile(*args)


def test_parse_profile_brief_example():
    p = parse_profile(["patches:1x768,512x768,1024x768", "cu_seqlens:2,17,65"], patch_dim=768)
    assert p == PackProfile(1, 512, 1024, 1, 16, 64)


def test_parse_profile_one_string_token_counts_and_consistent_coords():
    p = parse_profile(["patches:1,256,256 cu_seqlens:2,5,33 coords:1x2,256x2,256x2 segment_ids:1,256,256"], 768)
    assert p == PackProfile(1, 256, 256, 1, 4, 32)


@pytest.mark.parametrize("entries, match", [
    (["patches:1x768,512x768,1024x768"], "cu_seqlens"),
    (["cu_seqlens:2,17,65"], "patches"),
    (["patches:1x512,512x512,1024x512", "cu_seqlens:2,17,65"], r"\[T, 768\]"),
    (["patches:1,512", "cu_seqlens:2,17,65"], "three shapes"),
    (["patches:1,1024,512", "cu_seqlens:2,17,65"], "MIN <= OPT <= MAX"),
    (["pixels:1,2,3", "cu_seqlens:2,17,65"], "unknown input"),
    (["patches=1,2,3"], "NAME:MIN,OPT,MAX"),
    (["patches:1,a,3", "cu_seqlens:2,17,65"], "not a shape"),
    (["patches:1,512,1024", "cu_seqlens:1,17,65"], "at least 2"),
    (["patches:1,512,1024", "coords:1x2,256x2,1024x2", "cu_seqlens:2,17,65"], "follow 'patches'"),
    (["patches:1,512,1024", "patches:1,512,1024", "cu_seqlens:2,17,65"], "twice"),
    (["patches:1,512x768,1024", "cu_seqlens:2,17,65"], "same number of dimensions"),
])
def test_parse_profile_errors(entries, match):
    with pytest.raises(ConfigError, match=match):
        parse_profile(entries, patch_dim=768)


def test_parse_pack_lens():
    assert parse_pack_lens("1024, 256,512,256") == [256, 512, 1024]
    for bad in ("", "a,b", "0,256"):
        with pytest.raises(ConfigError):
            parse_pack_lens(bad)


def test_check_profiles_sorts_and_rejects_duplicates():
    a, b = PackProfile(1, 512, 512, 1, 8, 64), PackProfile(1, 256, 256, 1, 4, 64)
    assert check_profiles([a, b]) == [b, a]
    with pytest.raises(ConfigError):
        check_profiles([a, a])
    with pytest.raises(ConfigError):
        check_profiles([])


PROFILES = [PackProfile(1, 256, 256, 1, 4, 64), PackProfile(1, 512, 512, 1, 8, 64),
            PackProfile(1, 1024, 1024, 1, 16, 64)]


@pytest.mark.parametrize("tokens, images, expected", [
    (1, 1, 0), (256, 64, 0), (257, 1, 1), (512, 3, 1), (513, 2, 2), (1024, 64, 2),
])
def test_choose_profile_smallest_that_covers(tokens, images, expected):
    assert choose_profile(PROFILES, tokens, images) == expected


def test_choose_profile_uses_images_too():
    profiles = [PackProfile(1, 512, 512, 1, 2, 4), PackProfile(1, 512, 512, 1, 16, 64)]
    assert choose_profile(profiles, 512, 4) == 0
    assert choose_profile(profiles, 512, 5) == 1


def test_choose_profile_names_the_largest_when_none_fits():
    with pytest.raises(InputValidationError, match=r"largest profile takes tokens 1\.\.1024 \(opt 1024\), images 1\.\.64"):
        choose_profile(PROFILES, 2048, 3)
    with pytest.raises(InputValidationError, match="65 images"):
        choose_profile(PROFILES, 512, 65)


def test_limits_from_largest_profile():
    assert limits_for(PROFILES) == PackLimits(max_pack_len=1024, max_images=64, min_pack_len=1)
    assert largest_profile(PROFILES) == PROFILES[-1]
