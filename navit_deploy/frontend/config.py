"""Front-end configuration: patch size, token budget and normalization. Torch-free."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from navit_deploy.errors import ConfigError

BudgetKind = Literal["max_patches", "pixels"]


@dataclass(frozen=True)
class FrontendConfig:
    """How an image becomes patches.

    Two budget styles are supported:
      * ``budget="max_patches"`` (SigLIP 2 NaFlex): the largest native-aspect size whose patch grid has
        at most ``max_patches`` patches. With ``upscale=False`` images are never enlarged past their
        native size (rounded to whole patches), which saves tokens on thumbnails and crops.
      * ``budget="pixels"`` (Qwen2-VL ``smart_resize``): keep the pixel count within
        ``[min_pixels, max_pixels]``, sides rounded to multiples of the patch size.

    ``square_grid > 0`` switches to the classic ViT front end: every image is resized (distorted) to
    ``square_grid x square_grid`` patches. It exists for baselines and comparisons.
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
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.patch_size <= 0 or self.channels not in (1, 3):
            raise ConfigError(f"invalid patch_size={self.patch_size} or channels={self.channels}")
        if self.budget not in ("max_patches", "pixels"):
            raise ConfigError(f"budget must be 'max_patches' or 'pixels', got {self.budget!r}")
        if self.max_patches < 1:
            raise ConfigError(f"max_patches must be >= 1, got {self.max_patches}")
        if not (0 < self.min_pixels <= self.max_pixels):
            raise ConfigError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError("mean/std must have one value per channel")
        if self.square_grid < 0 or self.square_grid > self.max_grid:
            raise ConfigError(f"square_grid must be in [0, max_grid={self.max_grid}], got {self.square_grid}")
        if any(s <= 0 for s in self.std):
            raise ConfigError("std values must be positive")

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch vector (C*p*p)."""
        return self.channels * self.patch_size * self.patch_size

    @property
    def max_tokens_per_image(self) -> int:
        """Upper bound on the patches one image can produce under this budget."""
        if self.square_grid:
            return self.square_grid * self.square_grid
        if self.budget == "max_patches":
            return self.max_patches
        return self.max_pixels // (self.patch_size * self.patch_size)

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
