"""Training configuration (JSON-serializable)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from navit_deploy.errors import ConfigError

Mode = Literal["navit", "vit"]


@dataclass(frozen=True)
class TrainConfig:
    """What ``navit train`` does.

    ``mode="navit"``: native aspect, per-image resolution sampling (``min_patches..max_patches`` budget
    drawn per image) and continuous token dropping (per-image rate ~ Beta(a, b) scaled to
    ``drop_max``). ``mode="vit"``: the classic baseline, every image square-resized to the
    model front end's ``square_grid``, no dropping. Both stop after ``total_tokens`` tokens processed, so
    they can be compared at equal training compute.
    """

    mode: Mode = "navit"
    total_tokens: int = 4_000_000
    step_tokens: int = 2048
    pack_len: int = 1024
    max_images: int = 64
    min_patches: int = 48
    drop_beta: tuple[float, float] = (1.0, 3.0)
    drop_max: float = 0.5
    lr: float = 1.5e-3
    min_lr: float = 1e-5
    warmup_tokens: int = 200_000
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    seed: int = 0
    train_size: int = 10_000_000
    attention: str = "segment"
    checkpoint_every: int = 200
    threads: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("navit", "vit"):
            raise ConfigError(f"mode must be 'navit' or 'vit', got {self.mode!r}")
        if self.step_tokens < self.pack_len or self.step_tokens % self.pack_len:
            raise ConfigError("step_tokens must be a positive multiple of pack_len")
        if not 0.0 <= self.drop_max < 1.0:
            raise ConfigError("drop_max must be in [0, 1)")

    @property
    def packs_per_step(self) -> int:
        return self.step_tokens // self.pack_len

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["drop_beta"] = list(self.drop_beta)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        kw = dict(d)
        if "drop_beta" in kw:
            kw["drop_beta"] = tuple(kw["drop_beta"])
        return cls(**kw)
