"""TensorRT optimization profiles over packs: bucketing, ``--profile`` parsing and per-pack selection.

Pure Python (no TensorRT, no torch), so every rule here is unit-tested on any machine.

A NaViT pack has two dynamic sizes: the number of tokens ``T`` (``patches [T, patch_dim]``, ``coords [T, 2]``,
``segment_ids [T]``) and the number of images ``B`` (``cu_seqlens [B+1]``). One :class:`PackProfile` holds a
``(min, opt, max)`` range for each and becomes one TensorRT optimization profile with the four input shapes
derived from it, so ``coords`` and ``segment_ids`` always follow the token dimension of ``patches``.

By default there is one profile per pack-length bucket (256, 512, 1024, ... up to the artifact's pack length):
``tokens = (1, bucket, bucket)`` and ``images = (1, opt, min(max_images, bucket))``. At run time the runner
picks, for each pack, the smallest profile whose maxima cover the pack (:func:`choose_profile`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from navit_deploy.errors import ConfigError, InputValidationError
from navit_deploy.runtime.runner import INPUT_NAMES, PackLimits

MIN_BUCKET = 256
"""Smallest default pack-length bucket (smaller packs run on the 256 profile)."""

Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]


@dataclass(frozen=True)
class PackProfile:
    """One optimization profile: token and image ranges ``(min, opt, max)``."""

    min_tokens: int
    opt_tokens: int
    max_tokens: int
    min_images: int
    opt_images: int
    max_images: int

    def __post_init__(self) -> None:
        for what, lo, mid, hi in (("tokens", self.min_tokens, self.opt_tokens, self.max_tokens),
                                  ("images", self.min_images, self.opt_images, self.max_images)):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, mid, hi)):
                raise ConfigError(f"profile {what} must be integers, got {(lo, mid, hi)}")
            if not 1 <= lo <= mid <= hi:
                raise ConfigError(f"profile {what} must satisfy 1 <= min <= opt <= max, got min={lo} opt={mid} max={hi}")
        if self.min_images > self.max_tokens:
            raise ConfigError(f"profile needs at least {self.min_images} images but at most {self.max_tokens} tokens; "
                              "every image has at least one token")

    @property
    def tokens(self) -> tuple[int, int, int]:
        return self.min_tokens, self.opt_tokens, self.max_tokens

    @property
    def images(self) -> tuple[int, int, int]:
        return self.min_images, self.opt_images, self.max_images

    def covers(self, tokens: int, images: int) -> bool:
        """Whether a pack of ``tokens`` tokens and ``images`` images runs on this profile."""
        return self.min_tokens <= tokens <= self.max_tokens and self.min_images <= images <= self.max_images

    def shapes(self, patch_dim: int) -> dict[str, ShapeRange]:
        """``{input name: (min, opt, max) shape}`` for the four model inputs."""
        t, b = self.tokens, self.images
        return {
            "patches": tuple((n, patch_dim) for n in t),  # type: ignore[return-value]
            "coords": tuple((n, 2) for n in t),
            "segment_ids": tuple((n,) for n in t),
            "cu_seqlens": tuple((n + 1,) for n in b),
        }

    def describe(self) -> str:
        return (f"tokens {self.min_tokens}..{self.max_tokens} (opt {self.opt_tokens}), "
                f"images {self.min_images}..{self.max_images} (opt {self.opt_images})")

    def to_dict(self) -> dict[str, list[int]]:
        return {"tokens": list(self.tokens), "images": list(self.images)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PackProfile:
        try:
            t, b = [int(v) for v in d["tokens"]], [int(v) for v in d["images"]]
            if len(t) != 3 or len(b) != 3:
                raise ValueError("need three values each")
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a profile description: {d!r} ({exc})") from exc
        return cls(t[0], t[1], t[2], b[0], b[1], b[2])

    @classmethod
    def from_shapes(cls, shapes: dict[str, ShapeRange], patch_dim: int | None = None) -> PackProfile:
        """Inverse of :meth:`shapes` (e.g. from an engine's ``get_tensor_profile_shape``); checks consistency."""
        if "patches" not in shapes or "cu_seqlens" not in shapes:
            raise ConfigError(f"a profile needs 'patches' and 'cu_seqlens' shapes, got {sorted(shapes)}")
        tokens = _token_dim("patches", shapes["patches"], patch_dim)
        for name, width in (("coords", 2), ("segment_ids", None)):
            if name in shapes and (got := _token_dim(name, shapes[name], width)) != tokens:
                raise ConfigError(f"'{name}' token range {got} does not follow 'patches' {tokens}: coords and "
                                  "segment_ids must have the same token dimension as patches")
        cu = shapes["cu_seqlens"]
        if any(len(s) != 1 for s in cu):
            raise ConfigError(f"'cu_seqlens' shapes must be 1-D ([B+1]), got {list(cu)}")
        if cu[0][0] < 2:
            raise ConfigError(f"'cu_seqlens' needs at least 2 entries (one image), got min {cu[0][0]}")
        images = tuple(s[0] - 1 for s in cu)
        return cls(tokens[0], tokens[1], tokens[2], images[0], images[1], images[2])


def _token_dim(name: str, rng: Sequence[Shape], width: int | None) -> tuple[int, int, int]:
    """(min, opt, max) of the token axis of one input's shape range; checks rank and the fixed width."""
    expect_rank = 1 if name == "segment_ids" else 2
    for s in rng:
        if len(s) != expect_rank:
            raise ConfigError(f"'{name}' shapes must have rank {expect_rank}, got {list(rng)}")
        if width is not None and expect_rank == 2 and s[1] != width:
            raise ConfigError(f"'{name}' shapes must be [T, {width}], got {list(rng)}")
    return rng[0][0], rng[1][0], rng[2][0]


def bucket_lengths(pack_len: int, min_bucket: int = MIN_BUCKET) -> list[int]:
    """Pack-length buckets up to ``pack_len``: powers of two from ``min_bucket``, then ``pack_len`` itself.

    ``bucket_lengths(1024) == [256, 512, 1024]``; ``bucket_lengths(1000) == [256, 512, 1000]``;
    ``bucket_lengths(100) == [100]``.
    """
    if pack_len < 1:
        raise ConfigError(f"pack length must be >= 1, got {pack_len}")
    out, b = [], min_bucket
    while b < pack_len:
        out.append(b)
        b *= 2
    out.append(pack_len)
    return out


def default_profiles(pack_len: int, max_images: int, max_patches_per_image: int | None = None,
                     pack_lens: Iterable[int] | None = None) -> list[PackProfile]:
    """One profile per bucket: ``tokens (1, L, L)``, ``images (1, opt, min(max_images, L))``.

    ``opt`` images is the number of full-budget images that fill the bucket (``ceil(L / max_patches)``),
    the shape TensorRT tunes its kernels for. ``pack_lens`` replaces the default buckets.
    """
    if max_images < 1:
        raise ConfigError(f"max_images must be >= 1, got {max_images}")
    lens = sorted({int(v) for v in pack_lens}) if pack_lens is not None else bucket_lengths(pack_len)
    if not lens or lens[0] < 1:
        raise ConfigError(f"pack lengths must be positive, got {lens}")
    per_image = max(1, max_patches_per_image or MIN_BUCKET)
    profiles = []
    for length in lens:
        most = min(max_images, length)
        opt = min(most, max(1, math.ceil(length / per_image)))
        profiles.append(PackProfile(1, length, length, 1, opt, most))
    return profiles


def parse_pack_lens(text: str) -> list[int]:
    """``"256,512,1024"`` -> ``[256, 512, 1024]``."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as exc:
        raise ConfigError(f"--pack-lens must be comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"--pack-lens must be positive integers, got {text!r}")
    return sorted(set(values))


def _parse_shape(text: str, where: str) -> Shape:
    try:
        dims = tuple(int(d) for d in text.strip().lower().split("x"))
    except ValueError as exc:
        raise ConfigError(f"{where}: {text!r} is not a shape like 512x768 or 512") from exc
    if not dims or any(d < 1 for d in dims):
        raise ConfigError(f"{where}: shape {text!r} must have positive dimensions")
    return dims


def parse_profile(entries: Sequence[str], patch_dim: int) -> PackProfile:
    """Parse one ``--profile`` value: ``NAME:MIN,OPT,MAX`` entries (trtexec / Polygraphy shape syntax).

    Example: ``["patches:1x768,512x768,1024x768", "cu_seqlens:2,17,65"]``. Dimensions are ``x``-separated;
    ``patches`` may give the token count alone (``patches:1,512,1024``). ``coords`` and ``segment_ids``
    follow the token dimension of ``patches`` automatically; if given, they must agree with it.
    """
    shapes: dict[str, ShapeRange] = {}
    for entry in entries:
        for part in entry.split():
            name, sep, rest = part.partition(":")
            where = f"--profile {part!r}"
            if not sep or not name:
                raise ConfigError(f"{where}: expected NAME:MIN,OPT,MAX, e.g. patches:1x{patch_dim},512x{patch_dim},"
                                  f"1024x{patch_dim} cu_seqlens:2,9,65")
            if name not in INPUT_NAMES:
                raise ConfigError(f"{where}: unknown input {name!r}; inputs are {', '.join(INPUT_NAMES)}")
            if name in shapes:
                raise ConfigError(f"{where}: input {name!r} is given twice in one profile")
            triple = rest.split(",")
            if len(triple) != 3:
                raise ConfigError(f"{where}: need exactly three shapes MIN,OPT,MAX, got {len(triple)}")
            rng = tuple(_parse_shape(s, where) for s in triple)
            if name == "patches" and all(len(s) == 1 for s in rng):
                rng = tuple((s[0], patch_dim) for s in rng)
            if len({len(s) for s in rng}) != 1:
                raise ConfigError(f"{where}: MIN, OPT and MAX must have the same number of dimensions")
            for axis in range(len(rng[0])):
                if not rng[0][axis] <= rng[1][axis] <= rng[2][axis]:
                    raise ConfigError(f"{where}: shapes must satisfy MIN <= OPT <= MAX in every dimension")
            shapes[name] = rng  # type: ignore[assignment]
    missing = [n for n in ("patches", "cu_seqlens") if n not in shapes]
    if missing:
        raise ConfigError(f"--profile needs {' and '.join(missing)} (coords and segment_ids follow patches); "
                          f"got {sorted(shapes)}")
    return PackProfile.from_shapes(shapes, patch_dim)


def check_profiles(profiles: Sequence[PackProfile]) -> list[PackProfile]:
    """Validate a profile list (non-empty, no duplicates) and return it sorted smallest first."""
    if not profiles:
        raise ConfigError("at least one optimization profile is needed")
    if len(set(profiles)) != len(profiles):
        raise ConfigError("two optimization profiles are identical; drop one")
    return sorted(profiles, key=_size_key)


def _size_key(p: PackProfile) -> tuple[int, int, int, int]:
    return p.max_tokens, p.max_images, p.opt_tokens, p.opt_images


def largest_profile(profiles: Sequence[PackProfile]) -> PackProfile:
    return max(profiles, key=_size_key)


def choose_profile(profiles: Sequence[PackProfile], tokens: int, images: int) -> int:
    """Index (into ``profiles``) of the smallest profile whose ranges cover a pack.

    Raises :class:`InputValidationError` naming the largest profile when none does.
    """
    fits = [i for i, p in enumerate(profiles) if p.covers(tokens, images)]
    if not fits:
        big = largest_profile(profiles)
        raise InputValidationError(
            f"no optimization profile of this engine takes a pack of {tokens} tokens and {images} images; the largest "
            f"profile takes {big.describe()}. Use a smaller pack length (--pack-len) or rebuild the engine with a "
            "larger profile (navit compile --pack-lens / --profile)")
    return min(fits, key=lambda i: _size_key(profiles[i]))


def limits_for(profiles: Sequence[PackProfile]) -> PackLimits:
    """Runner limits from the largest profile (the smallest minimum token count across profiles)."""
    big = largest_profile(profiles)
    return PackLimits(max_pack_len=big.max_tokens, max_images=big.max_images,
                      min_pack_len=min(p.min_tokens for p in profiles))
