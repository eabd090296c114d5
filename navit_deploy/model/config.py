"""NaViT model configuration (a JSON-serializable dataclass)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from navit_deploy.errors import ConfigError
from navit_deploy.frontend.config import FrontendConfig

PosMode = Literal["learned", "fractional"]


@dataclass(frozen=True)
class NaViTConfig:
    """Architecture of a NaViT plus the front end it was trained with.

    ``pos_mode="learned"`` indexes the row/column tables with integer patch coordinates (the paper's
    default); ``"fractional"`` indexes them with coordinates normalized by each image's own grid size,
    so an image's positions span the whole table whatever its resolution.
    """

    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    num_classes: int = 8
    pos_mode: PosMode = "learned"
    qk_norm: bool = True
    pool_heads: int = 3
    norm_eps: float = 1e-6
    labels: tuple[str, ...] = ()
    frontend: FrontendConfig = field(default_factory=FrontendConfig)

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ConfigError(f"dim={self.dim} is not divisible by heads={self.heads}")
        if self.dim % self.pool_heads:
            raise ConfigError(f"dim={self.dim} is not divisible by pool_heads={self.pool_heads}")
        if self.pos_mode not in ("learned", "fractional"):
            raise ConfigError(f"pos_mode must be 'learned' or 'fractional', got {self.pos_mode!r}")
        if self.labels and len(self.labels) != self.num_classes:
            raise ConfigError(f"{len(self.labels)} labels given for num_classes={self.num_classes}")
        if self.depth < 1 or self.num_classes < 1:
            raise ConfigError("depth and num_classes must be >= 1")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def patch_dim(self) -> int:
        return self.frontend.patch_dim

    @property
    def max_grid(self) -> int:
        return self.frontend.max_grid

    def label_names(self) -> tuple[str, ...]:
        return self.labels or tuple(f"class_{i}" for i in range(self.num_classes))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["frontend"] = self.frontend.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NaViTConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(unknown)}")
        kw = dict(d)
        kw["labels"] = tuple(kw.get("labels", ()))
        kw["frontend"] = FrontendConfig.from_dict(kw.get("frontend", {}))
        return cls(**kw)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "NaViTConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except (json.JSONDecodeError, TypeError) as exc:
            raise ConfigError(f"{path}: not a valid NaViT config ({exc})") from exc
