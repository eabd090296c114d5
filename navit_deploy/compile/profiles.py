"""TensorRT optimization profiles over packs: bucketing, ``--profile`` parsing and per-pack selection.

Pure Python (no TensorRT, no torch), so every rule here is unit-tested on any machine.

A NaViT pack has two dynamic sizes: the number of tokens ``T`` (``patches [T, patch_dim]``, ``coords [T, 2]``,
``segment_ids [T]``) and the number of images ``B`` (``cu_seqlens [B+1]``). One :class:`PackProfile` holds a
``(min, opt, max)`` range for each and becomes one TensorRT optimization profile with the input shapes
derived from it, so ``coords`` and ``segment_ids`` always follow the token dimension of ``patches``.

A windowed VLM tower (Qwen2.5-VL) has a third one, the number of windows ``W`` (``window_cu_seqlens [W+1]``;
``window_segment_ids [T]`` follows the tokens), and every tower with a patch merger (Qwen2-VL too) takes
tokens in whole merge blocks of ``unit = merge_size**2`` patches. The bounds follow from how packs are made:
a window holds at least one merge block and an image at least one window, so ``B <= W <= T / unit``
(:func:`window_bound`); token counts are multiples of ``unit``; the merged output is ``[T / unit, D]``.

By default there is one profile per pack-length bucket (256, 512, 1024, ... up to the artifact's pack length):
``tokens = (unit, bucket, bucket)``, ``images = (1, opt, min(max_images, bucket / unit))`` and, with windows,
``windows = (1, opt, bucket / unit)``. At run time the runner picks, for each pack, the smallest profile whose
ranges cover the pack (:func:`choose_profile`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from navit_deploy.errors import ConfigError, InputValidationError
from navit_deploy.runtime.runner import INPUT_NAMES, WINDOW_INPUTS, PackLimits

MIN_BUCKET = 256
"""Smallest default pack-length bucket (smaller packs run on the 256 profile)."""

PROFILE_INPUTS = INPUT_NAMES + WINDOW_INPUTS
"""Every input a profile can give a shape range for (the last two: windowed towers only)."""

Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]


def _ints(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def window_bound(tokens: int, unit: int) -> int:
    """The most windows (and images) a pack of ``tokens`` tokens can hold: every window holds at least one
    merge block of ``unit`` tokens, so ``W <= tokens // unit``. Edge windows are cut, so a full window's size
    (``unit * window**2``) bounds nothing: many small images give one window per merge block."""
    return tokens // unit


@dataclass(frozen=True)
class PackProfile:
    """One optimization profile: token, image and (windowed towers) window ranges ``(min, opt, max)``.

    ``unit``: tokens per merge block (1 for a pooled NaViT); token counts are multiples of it. Windows are
    ``(0, 0, 0)`` for a model without windowed blocks.
    """

    min_tokens: int
    opt_tokens: int
    max_tokens: int
    min_images: int
    opt_images: int
    max_images: int
    min_windows: int = 0
    opt_windows: int = 0
    max_windows: int = 0
    unit: int = 1

    def __post_init__(self) -> None:
        if not _ints(self.unit) or self.unit < 1:
            raise ConfigError(f"profile unit (tokens per merge block) must be a positive integer, got {self.unit}")
        ranges = [("tokens", self.tokens), ("images", self.images)]
        if self.windowed:
            ranges.append(("windows", self.windows))
        elif self.windows != (0, 0, 0):
            raise ConfigError(f"profile windows must be all 0 (no windows) or satisfy 1 <= min <= opt <= max, got "
                              f"{self.windows}")
        for what, (lo, mid, hi) in ranges:
            if not _ints(lo, mid, hi):
                raise ConfigError(f"profile {what} must be integers, got {(lo, mid, hi)}")
            if not 1 <= lo <= mid <= hi:
                raise ConfigError(f"profile {what} must satisfy 1 <= min <= opt <= max, got min={lo} opt={mid} max={hi}")
        if self.unit > 1 and any(t % self.unit for t in self.tokens):
            raise ConfigError(f"profile tokens {self.tokens} must be multiples of {self.unit}: this model takes whole "
                              f"merge blocks of {self.unit} tokens")
        blocks = window_bound(self.max_tokens, self.unit)
        per = "token" if self.unit == 1 else f"merge block of {self.unit} tokens"
        if self.min_images > blocks:
            raise ConfigError(f"profile needs at least {self.min_images} images but at most {self.max_tokens} tokens "
                              f"({blocks} x {self.unit}); every image has at least one {per}")
        if self.windowed:
            if self.min_windows > blocks:
                raise ConfigError(f"profile needs at least {self.min_windows} windows but at most {self.max_tokens} "
                                  f"tokens ({blocks} merge blocks); every window holds at least one merge block")
            if self.max_windows < self.min_images:
                raise ConfigError(f"profile allows at most {self.max_windows} windows but needs at least "
                                  f"{self.min_images} images; every image has at least one window")

    @property
    def tokens(self) -> tuple[int, int, int]:
        return self.min_tokens, self.opt_tokens, self.max_tokens

    @property
    def images(self) -> tuple[int, int, int]:
        return self.min_images, self.opt_images, self.max_images

    @property
    def windows(self) -> tuple[int, int, int]:
        return self.min_windows, self.opt_windows, self.max_windows

    @property
    def windowed(self) -> bool:
        """Whether the profile has a window range (``window_segment_ids``/``window_cu_seqlens`` inputs)."""
        return self.max_windows > 0

    def covers(self, tokens: int, images: int, windows: int | None = None) -> bool:
        """Whether a pack of ``tokens`` tokens, ``images`` images and ``windows`` windows (None: the pack has no
        window inputs) runs on this profile."""
        if (windows is not None) != self.windowed:
            return False
        ok = self.min_tokens <= tokens <= self.max_tokens and self.min_images <= images <= self.max_images
        return ok and (windows is None or self.min_windows <= windows <= self.max_windows)

    def shapes(self, patch_dim: int) -> dict[str, ShapeRange]:
        """``{input name: (min, opt, max) shape}`` for the model inputs (four, six with windows)."""
        t, b = self.tokens, self.images
        out = {
            "patches": tuple((n, patch_dim) for n in t),
            "coords": tuple((n, 2) for n in t),
            "segment_ids": tuple((n,) for n in t),
            "cu_seqlens": tuple((n + 1,) for n in b),
        }
        if self.windowed:
            out["window_segment_ids"] = tuple((n,) for n in t)
            out["window_cu_seqlens"] = tuple((n + 1,) for n in self.windows)
        return out  # type: ignore[return-value]

    def describe(self) -> str:
        text = (f"tokens {self.min_tokens}..{self.max_tokens} (opt {self.opt_tokens}), "
                f"images {self.min_images}..{self.max_images} (opt {self.opt_images})")
        if self.windowed:
            text += f", windows {self.min_windows}..{self.max_windows} (opt {self.opt_windows})"
        return text

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"tokens": list(self.tokens), "images": list(self.images)}
        if self.windowed:
            d["windows"] = list(self.windows)
        if self.unit != 1:
            d["unit"] = self.unit
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PackProfile:
        try:
            t, b = [int(v) for v in d["tokens"]], [int(v) for v in d["images"]]
            w = [int(v) for v in d.get("windows", (0, 0, 0))]
            unit = int(d.get("unit", 1))
            if len(t) != 3 or len(b) != 3 or len(w) != 3:
                raise ValueError("need three values each")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"not a profile description: {d!r} ({exc})") from exc
        return cls(t[0], t[1], t[2], b[0], b[1], b[2], w[0], w[1], w[2], unit)

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, ShapeRange], patch_dim: int | None = None, unit: int = 1) -> PackProfile:
        """Inverse of :meth:`shapes` (e.g. from an engine's ``get_tensor_profile_shape``); checks consistency."""
        if "patches" not in shapes or "cu_seqlens" not in shapes:
            raise ConfigError(f"a profile needs 'patches' and 'cu_seqlens' shapes, got {sorted(shapes)}")
        tokens = _token_dim("patches", shapes["patches"], patch_dim)
        for name, width in (("coords", 2), ("segment_ids", None), ("window_segment_ids", None)):
            if name in shapes and (got := _token_dim(name, shapes[name], width)) != tokens:
                raise ConfigError(f"'{name}' token range {got} does not follow 'patches' {tokens}: {name} must have "
                                  "the same token dimension as patches")
        images = _count_dim("cu_seqlens", shapes["cu_seqlens"], "image")
        windows = (0, 0, 0)
        if "window_cu_seqlens" in shapes:
            windows = _count_dim("window_cu_seqlens", shapes["window_cu_seqlens"], "window")
        elif "window_segment_ids" in shapes:
            raise ConfigError("'window_segment_ids' is given without 'window_cu_seqlens': a windowed model needs "
                              "both window inputs (window_cu_seqlens:MIN,OPT,MAX is W+1 for W windows)")
        return cls(*tokens, *images, *windows, unit=unit)


def _token_dim(name: str, rng: Sequence[Shape], width: int | None) -> tuple[int, int, int]:
    """(min, opt, max) of the token axis of one input's shape range; checks rank and the fixed width."""
    expect_rank = 2 if name in ("patches", "coords") else 1
    for s in rng:
        if len(s) != expect_rank:
            raise ConfigError(f"'{name}' shapes must have rank {expect_rank}, got {list(rng)}")
        if width is not None and expect_rank == 2 and s[1] != width:
            raise ConfigError(f"'{name}' shapes must be [T, {width}], got {list(rng)}")
    return rng[0][0], rng[1][0], rng[2][0]


def _count_dim(name: str, rng: Sequence[Shape], what: str) -> tuple[int, int, int]:
    """(min, opt, max) counts from a ``[N+1]`` length tensor's shape range."""
    if any(len(s) != 1 for s in rng):
        raise ConfigError(f"'{name}' shapes must be 1-D ([N+1] for N {what}s), got {list(rng)}")
    if rng[0][0] < 2:
        raise ConfigError(f"'{name}' needs at least 2 entries (one {what}), got min {rng[0][0]}")
    return rng[0][0] - 1, rng[1][0] - 1, rng[2][0] - 1


def bucket_lengths(pack_len: int, min_bucket: int = MIN_BUCKET, unit: int = 1) -> list[int]:
    """Pack-length buckets up to ``pack_len``: powers of two from ``min_bucket``, then ``pack_len`` itself;
    with ``unit`` > 1, each rounded down to whole merge blocks (``pack_len`` must already be whole blocks).

    ``bucket_lengths(1024) == [256, 512, 1024]``; ``bucket_lengths(1000) == [256, 512, 1000]``;
    ``bucket_lengths(100) == [100]``.
    """
    if pack_len < 1:
        raise ConfigError(f"pack length must be >= 1, got {pack_len}")
    if pack_len % unit:
        raise ConfigError(f"pack length {pack_len} is not whole merge blocks of {unit} tokens")
    out, b = [], min_bucket
    while b < pack_len:
        if b // unit * unit >= unit:
            out.append(b // unit * unit)
        b *= 2
    out.append(pack_len)
    return sorted(set(out))


def default_profiles(pack_len: int, max_images: int, max_patches_per_image: int | None = None,
                     pack_lens: Iterable[int] | None = None, *, unit: int = 1, windowed: bool = False,
                     window: int = 0) -> list[PackProfile]:
    """One profile per bucket: ``tokens (unit, L, L)``, ``images (1, opt, min(max_images, L / unit))`` and, for
    a ``windowed`` tower, ``windows (1, opt, L / unit)`` (:func:`window_bound`).

    ``opt`` images is the number of full-budget images that fill the bucket (``ceil(L / max_patches)``), and
    ``opt`` windows the number of full windows of ``window x window`` merge blocks that fill it (at least the
    opt images): the shapes TensorRT tunes its kernels for. ``pack_lens`` replaces the default buckets and
    must be whole merge blocks.
    """
    if max_images < 1:
        raise ConfigError(f"max_images must be >= 1, got {max_images}")
    if pack_lens is not None:
        lens = sorted({int(v) for v in pack_lens})
        if not lens or lens[0] < 1:
            raise ConfigError(f"pack lengths must be positive, got {lens}")
        odd = [v for v in lens if v % unit]
        if odd:
            raise ConfigError(f"pack lengths {odd} are not whole merge blocks of {unit} tokens (this model merges "
                              f"{unit} patches into one token); use multiples of {unit}, e.g. "
                              f"{', '.join(str(-(-v // unit) * unit) for v in odd)}")
    else:
        lens = bucket_lengths(pack_len, unit=unit)
    per_image = max(1, max_patches_per_image or MIN_BUCKET)
    per_window = unit * window * window if window > 0 else unit
    profiles = []
    for length in lens:
        blocks = window_bound(length, unit)
        most = min(max_images, blocks)
        opt = min(most, max(1, math.ceil(length / per_image)))
        win = (1, min(blocks, max(opt, math.ceil(length / per_window))), blocks) if windowed else (0, 0, 0)
        profiles.append(PackProfile(unit, length, length, 1, opt, most, *win, unit=unit))
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
    ``patches`` may give the token count alone (``patches:1,512,1024``). ``coords``, ``segment_ids`` and
    ``window_segment_ids`` follow the token dimension of ``patches`` automatically; if given, they must agree
    with it. A windowed tower also needs ``window_cu_seqlens:MIN,OPT,MAX`` (W+1 for W windows). The profile's
    merge-block unit is set for the model by :func:`fit_to_model`.
    """
    shapes: dict[str, ShapeRange] = {}
    for entry in entries:
        for part in entry.split():
            name, sep, rest = part.partition(":")
            where = f"--profile {part!r}"
            if not sep or not name:
                raise ConfigError(f"{where}: expected NAME:MIN,OPT,MAX, e.g. patches:1x{patch_dim},512x{patch_dim},"
                                  f"1024x{patch_dim} cu_seqlens:2,9,65")
            if name not in PROFILE_INPUTS:
                raise ConfigError(f"{where}: unknown input {name!r}; inputs are {', '.join(PROFILE_INPUTS)}")
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


def fit_to_model(profile: PackProfile, unit: int) -> PackProfile:
    """``profile`` with the model's merge-block unit (checks its token counts are whole blocks)."""
    return profile if profile.unit == unit else replace(profile, unit=unit)


GraphShape = tuple[int | str | None, ...]
"""An ONNX input's shape: ints for static dims, the ``dim_param`` name (or None) for dynamic ones."""


def check_profile_inputs(profiles: Sequence[PackProfile], patch_dim: int, graph_inputs: Mapping[str, GraphShape],
                         what: str = "the model") -> None:
    """Every profile must give a shape range to exactly the model's inputs (as the ONNX graph declares them):
    the right rank, static dims equal to the graph's, and dims that share a ``dim_param`` (the token axis of
    ``patches``, ``coords``, ``segment_ids``, ``window_segment_ids``) the same range. Raises ConfigError."""
    for i, p in enumerate(profiles):
        shapes = p.shapes(patch_dim)
        missing = [n for n in graph_inputs if n not in shapes]
        if missing:
            hint = (" (a windowed tower's profile needs window_cu_seqlens:MIN,OPT,MAX, W+1 for W windows; "
                    "window_segment_ids follows patches)" if any(n in WINDOW_INPUTS for n in missing) else "")
            raise ConfigError(f"optimization profile {i} ({p.describe()}) gives no shapes for {missing}, inputs of "
                              f"{what}{hint}")
        extra = [n for n in shapes if n not in graph_inputs]
        if extra:
            raise ConfigError(f"optimization profile {i} gives shapes for {extra}, which {what} does not take "
                              f"(its inputs: {list(graph_inputs)})")
        named: dict[str, tuple[tuple[int, int, int], str]] = {}
        for name, dims in graph_inputs.items():
            rng = shapes[name]
            if len(rng[0]) != len(dims):
                raise ConfigError(f"optimization profile {i}: {name!r} has rank {len(dims)} in {what}, the profile "
                                  f"gives {list(rng)}")
            for axis, dim in enumerate(dims):
                got = (rng[0][axis], rng[1][axis], rng[2][axis])
                if isinstance(dim, int):
                    if got != (dim, dim, dim):
                        raise ConfigError(f"optimization profile {i}: axis {axis} of {name!r} is {dim} in {what}, "
                                          f"the profile gives {got}")
                elif dim:
                    seen = named.setdefault(dim, (got, name))
                    if seen[0] != got:
                        raise ConfigError(f"optimization profile {i}: {name!r} and {seen[1]!r} share the dimension "
                                          f"{dim!r} in {what} but get ranges {got} and {seen[0]}")


def check_profiles(profiles: Sequence[PackProfile]) -> list[PackProfile]:
    """Validate a profile list (non-empty, no duplicates, all alike) and return it sorted smallest first."""
    if not profiles:
        raise ConfigError("at least one optimization profile is needed")
    if len(set(profiles)) != len(profiles):
        raise ConfigError("two optimization profiles are identical; drop one")
    if len({(p.windowed, p.unit) for p in profiles}) != 1:
        raise ConfigError("optimization profiles of one engine must all have windows or all have none, with one "
                          "merge-block unit")
    return sorted(profiles, key=_size_key)


def _size_key(p: PackProfile) -> tuple[int, int, int, int, int, int]:
    return p.max_tokens, p.max_images, p.max_windows, p.opt_tokens, p.opt_images, p.opt_windows


def largest_profile(profiles: Sequence[PackProfile]) -> PackProfile:
    return max(profiles, key=_size_key)


def choose_profile(profiles: Sequence[PackProfile], tokens: int, images: int, windows: int | None = None) -> int:
    """Index (into ``profiles``) of the smallest profile whose ranges cover a pack (``windows``: its number of
    windows, None for a pack without window inputs).

    Raises :class:`InputValidationError` naming the largest profile when none does.
    """
    fits = [i for i, p in enumerate(profiles) if p.covers(tokens, images, windows)]
    if not fits:
        big = largest_profile(profiles)
        pack = f"{tokens} tokens and {images} images" + ("" if windows is None else f" in {windows} windows")
        if (windows is not None) != big.windowed:
            raise InputValidationError(
                f"a pack of {pack} {'has' if windows is not None else 'has no'} window inputs, but this engine's "
                f"profiles {'have' if big.windowed else 'have none'}: the pack was made for another model")
        raise InputValidationError(
            f"no optimization profile of this engine takes a pack of {pack}; the largest profile takes "
            f"{big.describe()}. Use a smaller pack length (--pack-len) or rebuild the engine with a larger profile "
            "(navit compile --pack-lens / --profile)")
    return min(fits, key=lambda i: _size_key(profiles[i]))


def limits_for(profiles: Sequence[PackProfile]) -> PackLimits:
    """Runner limits from the largest profile (the smallest minimum token count across profiles)."""
    big = largest_profile(profiles)
    return PackLimits(max_pack_len=big.max_tokens, max_images=big.max_images,
                      min_pack_len=min(p.min_tokens for p in profiles))
