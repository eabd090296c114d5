"""Front-end configuration: patch size, token budget and normalization. Torch-free."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from navit_deploy.errors import ConfigError

BudgetKind = Literal["max_patches", "pixels", "naflex"]
BUDGETS = ("max_patches", "pixels", "naflex")


@dataclass(frozen=True)
class FrontendConfig:
    """How an image becomes patches.

    Two budget styles are supported:
      * ``budget="max_patches"`` (SigLIP 2 NaFlex): the largest native-aspect size whose patch grid has
        at most ``max_patches`` patches. With ``upscale=False`` images are never enlarged past their
        native size (rounded to whole patches), which saves tokens on thumbnails and crops.
      * ``budget="pixels"`` (Qwen2-VL ``smart_resize``): keep the pixel count within
        ``[min_pixels, max_pixels]``, sides rounded to multiples of the patch size.

      * ``budget="naflex"``: ``Siglip2ImageProcessor``'s rule, reproduced exactly: a binary search on the
        scale, each side rounded *up* to whole patches, at least one patch, no per-side cap and no refusal
        of extreme aspect ratios, small images enlarged (``upscale=False`` caps the scale at 1, for
        workloads that keep native token counts).

    ``square_grid > 0`` switches to the classic ViT front end: every image is resized (distorted) to
    ``square_grid x square_grid`` patches. It exists for baselines and comparisons.

    Pixels: ``resample`` (PIL filter) with ``reducing_gap`` (Pillow's two-step downscale; None for the
    exact filter), values times ``rescale`` then standardized with ``mean``/``std``. ``jpeg_draft``: decode
    large JPEGs at a reduced DCT scale (faster, but other pixels than a full decode). ``to_rgb``:
    ``"composite"`` puts alpha on white and maps 16-bit scans by their type's range (the project's
    front end); ``"convert"`` is plain ``PIL.Image.convert("RGB")`` after the EXIF transpose, as
    ``transformers.image_utils.load_image`` does (alpha dropped), so imported models see their
    reference pixels. Numpy frames follow the same rule.

    Qwen2-VL / Qwen2.5-VL towers: ``temporal_patch_size`` frames per patch (a still image repeated; the
    patch vector is ``(c, t, py, px)``, as ``Qwen2VLImageProcessor`` flattens it) and ``merge_size`` (the
    patch merger's block side: sides are multiples of ``patch_size * merge_size`` and each
    ``merge_size x merge_size`` block of patches is contiguous in the patch order). Both are 1 elsewhere.
    """

    patch_size: int = 16
    channels: int = 3
    budget: BudgetKind = "max_patches"
    max_patches: int = 256
    upscale: bool = True
    min_pixels: int = 16 * 16 * 4
    max_pixels: int = 16 * 16 * 256
    max_grid: int = 64
    square_grid: int = 0
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    max_image_pixels: int = 89_478_485
    resample: Literal["bilinear", "bicubic"] = "bicubic"
    rescale: float = 1.0 / 255.0
    reducing_gap: float | None = 3.0
    jpeg_draft: bool = True
    to_rgb: Literal["composite", "convert"] = "composite"
    temporal_patch_size: int = 1
    merge_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.patch_size <= 0 or self.channels not in (1, 3):
            raise ConfigError(f"invalid patch_size={self.patch_size} or channels={self.channels}")
        if self.budget not in BUDGETS:
            raise ConfigError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
        if self.resample not in ("bilinear", "bicubic"):
            raise ConfigError(f"resample must be 'bilinear' or 'bicubic', got {self.resample!r}")
        if self.to_rgb not in ("composite", "convert"):
            raise ConfigError(f"to_rgb must be 'composite' or 'convert', got {self.to_rgb!r}")
        if not self.rescale > 0 or (self.reducing_gap is not None and self.reducing_gap < 1):
            raise ConfigError(f"need rescale > 0 and reducing_gap None or >= 1, got {self.rescale}, {self.reducing_gap}")
        if self.max_patches < 1:
            raise ConfigError(f"max_patches must be >= 1, got {self.max_patches}")
        if not (0 < self.min_pixels <= self.max_pixels):
            raise ConfigError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError("mean/std must have one value per channel")
        if self.square_grid < 0 or self.square_grid > self.max_grid:
            raise ConfigError(f"square_grid must be in [0, max_grid={self.max_grid}], got {self.square_grid}")
        if self.temporal_patch_size < 1 or self.merge_size < 1:
            raise ConfigError(f"need temporal_patch_size >= 1 and merge_size >= 1, got "
                              f"{self.temporal_patch_size}, {self.merge_size}")
        if any(s <= 0 for s in self.std):
            raise ConfigError("std values must be positive")

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch vector (C*T*p*p; T, the temporal patch, is 1 except for Qwen-VL)."""
        return self.channels * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def max_tokens_per_image(self) -> int:
        """Upper bound on the patches one image can produce under this budget."""
        if self.square_grid:
            return self.square_grid * self.square_grid
        if self.budget in ("max_patches", "naflex"):
            return self.max_patches
        if self.merge_size > 1:  # the processor's rule may go over max_pixels on thin or tiny images
            from navit_deploy.frontend.budget import smart_resize_max_pixels

            factor = self.patch_size * self.merge_size
            bound = smart_resize_max_pixels(factor, self.min_pixels, self.max_pixels) // (self.patch_size ** 2)
            unit = self.merge_size * self.merge_size  # sides are whole merge blocks: counts are multiples of it
            return bound // unit * unit
        return self.max_pixels // (self.patch_size * self.patch_size)

    @property
    def tokens_per_merged_token(self) -> int:
        """Patch tokens per visual token after the model's patch merger (``merge_size ** 2``; 1 without one)."""
        return self.merge_size * self.merge_size

    def with_budget(self, *, max_patches: int | None = None, upscale: bool | None = None,
                    min_pixels: int | None = None, max_pixels: int | None = None) -> "FrontendConfig":
        """This front end at another per-image budget (None: keep the model's), as a call overrides it:
        ``max_patches``/``upscale`` for the ``max_patches`` and ``naflex`` budgets, ``min_pixels``/``max_pixels``
        for ``budget="pixels"`` (Qwen-VL: as the processor's ``min_pixels``/``max_pixels`` arguments).
        An override the model's budget does not use is a :class:`ConfigError`, not silently ignored."""
        patches = {k: v for k, v in (("max_patches", max_patches), ("upscale", upscale)) if v is not None}
        pixels = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        if pixels and self.budget != "pixels":
            raise ConfigError(f"min_pixels/max_pixels (--min-pixels/--max-pixels) apply to a pixel budget, and this "
                              f"model's budget is {self.budget!r}; set max_patches (--max-patches) instead")
        if patches and self.budget == "pixels":
            raise ConfigError("max_patches/upscale (--max-patches/--no-upscale) do not apply to this model's pixel "
                              f"budget (min_pixels={self.min_pixels}, max_pixels={self.max_pixels}); set min_pixels/"
                              "max_pixels (--min-pixels/--max-pixels) instead")
        changes = {**patches, **pixels}
        return self.replace(**changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FrontendConfig":
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown front-end config keys: {sorted(unknown)}")
        kw = dict(d)
        for key in ("mean", "std"):
            if key in kw:
                kw[key] = tuple(float(x) for x in kw[key])
        return cls(**kw)

    def replace(self, **changes: Any) -> "FrontendConfig":
        d = self.to_dict()
        d.update(changes)
        return FrontendConfig.from_dict(d)


def budget_flag(cfg: FrontendConfig) -> str:
    """The CLI flag that lowers an image's tokens under ``cfg``'s budget, for error hints."""
    if cfg.budget == "pixels":
        return f"max_pixels {cfg.max_pixels}: navit infer --max-pixels"
    return f"max_patches {cfg.max_patches}: navit infer --max-patches"
