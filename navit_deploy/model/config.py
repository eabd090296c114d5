"""NaViT model configuration (a JSON-serializable dataclass)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from navit_deploy.errors import ConfigError
from navit_deploy.frontend.config import FrontendConfig

PosMode = Literal["learned", "fractional", "resized", "rope2d"]
Act = Literal["tanh", "exact", "quick", "silu"]
ACTS = ("tanh", "exact", "quick", "silu")
Output = Literal["pooled", "tokens"]
QKNorm = Literal["none", "layernorm", "l2"]
QK_NORMS = ("none", "layernorm", "l2")


@dataclass(frozen=True)
class NaViTConfig:
    """Architecture of a NaViT plus the front end it was trained with.

    One model class expresses every family (the builtin model, SigLIP 2, vit-pytorch's NaViT) through these
    options; the defaults are the builtin model's.

    Positions: ``pos_mode="learned"`` indexes separate row and column tables with integer patch coordinates
    (the paper's default); ``"fractional"`` indexes them with coordinates normalized by each image's own
    grid size; ``"resized"`` resizes one learned ``pos_table x pos_table`` table to each image's grid with
    bilinear, antialiased weights (SigLIP 2). ``pos_grid`` sizes the row/column tables (default
    ``max_grid`` each).

    Blocks: ``dim_head`` per-head width (default ``dim // heads``); ``mlp_dim`` MLP width (default
    ``dim * mlp_ratio``); ``gelu`` ``"tanh"`` or ``"exact"``; ``norm_bias`` LayerNorm with a bias;
    ``qkv_bias`` / ``proj_bias`` biases of the q/k/v and output projections; ``qk_norm`` ``"layernorm"``,
    ``"l2"`` (``normalize(x) * sqrt(d) * gamma`` per head, vit-pytorch) or ``"none"``; ``attn_scale``
    (default ``1/sqrt(dim_head)``). Patch stem: ``patch_norm_in`` LayerNorm on the raw patch,
    ``patch_norm_out`` after the projection.

    Pooling (one learned query per head, masked to each image): ``pool_heads``, ``pool_dim_head``,
    ``pool_k_norm``, ``pool_scale``, ``pool_mlp`` (a residual MLP after the projection). Head:
    ``head_norm`` LayerNorm on the pooled vector, ``num_classes`` (0: no classifier, no logits output),
    ``head_bias``; ``embedding`` is the head-normed vector (``"head_norm"``) or the pooled one (``"pooled"``).
    ``family`` records where the architecture came from.

    Vision towers of VLMs (Qwen2-VL, Qwen2.5-VL): ``pos_mode="rope2d"`` (no additive table: a 2D rotary
    embedding from each token's (row, col), the first half of the rotated frequencies by row, the second by
    column, base ``rope_theta``); ``norm`` ``"rmsnorm"`` or ``"layernorm"`` for every norm; ``mlp``
    ``"gated"`` (``down(act(gate(x)) * up(x))``) or ``"plain"``; ``gelu`` names the MLP activation
    (``"quick"`` is CLIP's ``x * sigmoid(1.702 x)``, ``"silu"``); ``patch_bias``; ``window_size`` (pixels,
    0: none) makes every block windowed except ``fullatt_blocks`` (the pack then carries window lengths);
    ``output="tokens"``: no pooling, the patch merger (norm, then an MLP over each ``merge x merge`` block
    of contiguous tokens, to ``out_dim``) returns the merged tokens of the whole pack.
    """

    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    num_classes: int = 8
    pos_mode: PosMode = "learned"
    qk_norm: QKNorm = "layernorm"
    pool_heads: int = 3
    norm_eps: float = 1e-6
    labels: tuple[str, ...] = ()
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    dim_head: int | None = None
    mlp_dim: int | None = None
    gelu: Act = "tanh"
    norm_bias: bool = True
    qkv_bias: bool = True
    proj_bias: bool = True
    attn_scale: float | None = None
    patch_norm_in: bool = False
    patch_norm_out: bool = True
    pos_grid: tuple[int, int] | None = None
    pos_table: int = 16
    pool_dim_head: int | None = None
    pool_k_norm: QKNorm = "none"
    pool_scale: float | None = None
    pool_mlp: bool = True
    head_norm: bool = True
    head_bias: bool = True
    embedding: Literal["head_norm", "pooled"] = "head_norm"
    family: str = "navit"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["plain", "gated"] = "plain"
    patch_bias: bool = True
    rope_theta: float = 10000.0
    window_size: int = 0
    fullatt_blocks: tuple[int, ...] = ()
    output: Output = "pooled"
    out_dim: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.qk_norm, bool):  # configs written before qk_norm had kinds
            object.__setattr__(self, "qk_norm", "layernorm" if self.qk_norm else "none")
        if self.pos_grid is not None:
            object.__setattr__(self, "pos_grid", tuple(int(x) for x in self.pos_grid))
        object.__setattr__(self, "fullatt_blocks", tuple(int(i) for i in self.fullatt_blocks))
        if self.dim_head is None and self.dim % self.heads:
            raise ConfigError(f"dim={self.dim} is not divisible by heads={self.heads} (or give dim_head)")
        if self.pool_dim_head is None and self.dim % self.pool_heads:
            raise ConfigError(f"dim={self.dim} is not divisible by pool_heads={self.pool_heads}")
        if self.pos_mode not in ("learned", "fractional", "resized", "rope2d"):
            raise ConfigError(f"pos_mode must be 'learned', 'fractional', 'resized' or 'rope2d', got {self.pos_mode!r}")
        if self.pos_mode == "rope2d" and self.head_dim % 4:
            raise ConfigError(f"2D rotary embeddings need a head dim divisible by 4, got {self.head_dim}")
        if self.norm not in ("layernorm", "rmsnorm") or self.mlp not in ("plain", "gated"):
            raise ConfigError(f"norm must be 'layernorm'/'rmsnorm' and mlp 'plain'/'gated', got {self.norm!r}, {self.mlp!r}")
        if self.output not in ("pooled", "tokens"):
            raise ConfigError(f"output must be 'pooled' or 'tokens', got {self.output!r}")
        if self.output == "tokens" and (self.num_classes or self.out_dim < 1):
            raise ConfigError("output='tokens' needs out_dim >= 1 and no classifier (num_classes=0)")
        if self.window_size < 0 or any(not 0 <= i < self.depth for i in self.fullatt_blocks):
            raise ConfigError(f"need window_size >= 0 and fullatt_blocks within 0..{self.depth - 1}, got "
                              f"{self.window_size}, {list(self.fullatt_blocks)}")
        if self.window_size and self.window_size % (self.frontend.patch_size * self.frontend.merge_size):
            raise ConfigError(f"window_size {self.window_size} is not a multiple of patch x merge "
                              f"({self.frontend.patch_size * self.frontend.merge_size})")
        for name in ("qk_norm", "pool_k_norm"):
            if getattr(self, name) not in QK_NORMS:
                raise ConfigError(f"{name} must be one of {QK_NORMS}, got {getattr(self, name)!r}")
        if self.gelu not in ACTS:
            raise ConfigError(f"gelu (the MLP activation) must be one of {ACTS}, got {self.gelu!r}")
        if self.embedding not in ("head_norm", "pooled"):
            raise ConfigError(f"embedding must be 'head_norm' or 'pooled', got {self.embedding!r}")
        if self.embedding == "head_norm" and not self.head_norm:
            raise ConfigError("embedding='head_norm' needs head_norm=True")
        if self.labels and len(self.labels) != self.num_classes:
            raise ConfigError(f"{len(self.labels)} labels given for num_classes={self.num_classes}")
        if self.depth < 1 or self.num_classes < 0:
            raise ConfigError("depth must be >= 1 and num_classes >= 0")
        if self.pos_grid is not None and (len(self.pos_grid) != 2 or min(self.pos_grid) < 1):
            raise ConfigError(f"pos_grid must be (rows, cols) >= 1, got {self.pos_grid}")
        if self.pos_table < 1:
            raise ConfigError(f"pos_table must be >= 1, got {self.pos_table}")

    @property
    def head_dim(self) -> int:
        return self.dim_head if self.dim_head is not None else self.dim // self.heads

    @property
    def pool_head_dim(self) -> int:
        return self.pool_dim_head if self.pool_dim_head is not None else self.dim // self.pool_heads

    @property
    def mlp_hidden(self) -> int:
        return self.mlp_dim if self.mlp_dim is not None else int(self.dim * self.mlp_ratio)

    @property
    def pos_rows_cols(self) -> tuple[int, int]:
        """Sizes of the row and column tables (``"learned"``/``"fractional"``)."""
        return self.pos_grid if self.pos_grid is not None else (self.max_grid, self.max_grid)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The model's outputs, in order: the embedding, and logits when it has a classifier; or the merged
        tokens of a VLM tower."""
        if self.output == "tokens":
            return ("tokens",)
        return ("embeddings", "logits") if self.num_classes else ("embeddings",)

    @property
    def windowed(self) -> bool:
        """Some blocks attend within windows (the pack carries window lengths as two more inputs)."""
        return self.window_size > 0 and len(set(self.fullatt_blocks)) < self.depth

    @property
    def window_merged(self) -> int:
        """The side of a window in merged tokens (``window_size / patch / merge``; 0: no windows)."""
        fe = self.frontend
        return self.window_size // (fe.patch_size * fe.merge_size) if self.windowed else 0

    @property
    def windows(self):  # -> WindowSpec | None (packing stays out of the config's import time)
        """How packs for this model hold merge blocks and windows (a VLM tower); None for a pooled model."""
        if self.output != "tokens":
            return None
        from navit_deploy.packing.windows import WindowSpec

        return WindowSpec(self.frontend.merge_size, self.window_merged)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The model's inputs, in order."""
        base = ("patches", "coords", "segment_ids", "cu_seqlens")
        return base + ("window_segment_ids", "window_cu_seqlens") if self.windowed else base

    @property
    def output_dim(self) -> int:
        """Width of each output row: ``out_dim`` for merged tokens, else ``dim``."""
        return self.out_dim if self.output == "tokens" else self.dim

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
        d["pos_grid"] = list(self.pos_grid) if self.pos_grid is not None else None
        d["fullatt_blocks"] = list(self.fullatt_blocks)
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
