"""Analytic FLOP counts of a NaViT forward and the machine's measured matrix-multiply peak. Torch-free.

Counting convention (multiply-add = 2 FLOPs, weights only, biases/norms/activations/softmax ignored):

* linear layers: ``2 * weights * tokens`` (patch embedding, every block's QKV/proj/MLP, the pooling K/V)
  plus ``2 * weights * images`` for what runs once per image (pooling proj/MLP, head);
* self-attention per layer: ``4 * dim * L**2`` for a sequence of ``L`` tokens (``Q K^T`` and ``A V``);
  per image (``sum L_i**2``) for a per-image / varlen kernel, per pack (``pack_len**2``) for the dense
  block-diagonal mask, which computes every cross-image score and masks it away;
* attention pooling: ``4 * dim`` per token (scores and weighted sum) per image, ``2 * dim * T * (B + 1)``
  for the dense graph, which evaluates the weighted sum for every (image, token) pair.

VLM towers (Qwen-VL): a gated MLP has three matrices; windowed blocks attend within windows of
``window_tokens`` (``L * min(L, window_tokens)`` per image, whatever the lowering: the dense one computes
windows in slots); the patch merger (``merge^2 * dim`` wide, to ``out_dim``) runs on every merged token
instead of the pooling head.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs from a NaViT config."""

    dim: int
    depth: int
    hidden: int
    patch_dim: int
    num_classes: int
    inner: int = 0  # attention width (heads * head dim); 0: dim
    pos_table: int = 0  # a resized position table of pos_table**2 rows (SigLIP 2): one matmul per token
    mlp_matrices: int = 2  # 3 for a gated MLP (gate, up, down)
    windowed_depth: int = 0  # blocks attending within windows (the others attend over the whole image)
    window_tokens: int = 0  # tokens of a whole window
    merge_tokens: int = 0  # > 0: a tower with a patch merger over blocks of this many tokens, no pooling head
    out_dim: int = 0  # the merger's output width

    @classmethod
    def from_config(cls, cfg: Any) -> ModelShape:
        """From a :class:`~navit_deploy.model.config.NaViTConfig` (or anything with the same fields)."""
        hidden = getattr(cfg, "mlp_hidden", None) or int(cfg.dim * cfg.mlp_ratio)
        inner = cfg.heads * cfg.head_dim if hasattr(cfg, "head_dim") else cfg.dim
        inner = 0 if inner == cfg.dim else inner
        table = cfg.pos_table ** 2 if getattr(cfg, "pos_mode", "") == "resized" else 0
        tower = getattr(cfg, "output", "pooled") == "tokens"
        windowed = cfg.depth - len(set(cfg.fullatt_blocks)) if getattr(cfg, "windowed", False) else 0
        merge = cfg.frontend.merge_size ** 2 if tower else 0
        return cls(dim=cfg.dim, depth=cfg.depth, hidden=hidden, patch_dim=cfg.patch_dim, num_classes=cfg.num_classes,
                   inner=inner, pos_table=table, mlp_matrices=3 if getattr(cfg, "mlp", "plain") == "gated" else 2,
                   windowed_depth=windowed, window_tokens=cfg.window_merged ** 2 * merge if windowed else 0,
                   merge_tokens=merge, out_dim=cfg.out_dim if tower else 0)

    @property
    def weights_per_token(self) -> int:
        """Linear-layer weights applied to every token (padding included)."""
        d, h, i = self.dim, self.hidden, self.inner or self.dim
        block = d * 3 * i + i * d + self.mlp_matrices * d * h
        if self.merge_tokens:  # the merger's MLP, per merged token, spread over its tokens
            u = self.merge_tokens * d
            return self.patch_dim * d + self.depth * block + (u * u + u * self.out_dim) // self.merge_tokens
        return self.patch_dim * d + self.pos_table * d + self.depth * block + d * 2 * i

    @property
    def weights_per_image(self) -> int:
        """Linear-layer weights applied once per image (pooled vector: pooling proj + MLP, head)."""
        if self.merge_tokens:
            return 0
        d, h = self.dim, self.hidden
        return d * d + self.mlp_matrices * d * h + d * self.num_classes


def model_flops(shape: ModelShape, seqlens: Sequence[int], pack_len: int | None = None,
                attention: str = "varlen") -> dict[str, int]:
    """FLOPs of one forward over one pack holding images of ``seqlens`` tokens.

    ``pack_len`` (default: ``sum(seqlens)``, no padding) is the number of tokens the linear layers run
    on. ``attention``: ``"varlen"`` (per image, ``sum L_i**2``: the segment loop, varlen/packed kernels)
    or ``"dense"`` (block-diagonal mask over the whole pack, ``pack_len**2``).
    """
    lens = [int(n) for n in seqlens]
    valid = sum(lens)
    t = valid if pack_len is None else int(pack_len)
    if t < valid:
        raise ValueError(f"pack_len {t} is shorter than the {valid} tokens it holds")
    d, i = shape.dim, shape.inner or shape.dim
    linear = 2 * shape.weights_per_token * t + 2 * shape.weights_per_image * len(lens)
    full_depth = shape.depth - shape.windowed_depth
    windowed = shape.windowed_depth * 4 * i * sum(n * min(n, shape.window_tokens) for n in lens)
    if attention == "dense":
        attn = full_depth * 4 * i * t * t + windowed
        pool = 2 * d * t * (len(lens) + 1)
    elif attention == "varlen":
        attn = full_depth * 4 * i * sum(n * n for n in lens) + windowed
        pool = 4 * d * t
    else:
        raise ValueError(f"attention must be 'varlen' or 'dense', got {attention!r}")
    if shape.merge_tokens:
        pool = 0
    return {"linear": linear, "attention": attn, "pool": pool, "total": linear + attn + pool}


def useful_flops(shape: ModelShape, seqlens: Sequence[int]) -> int:
    """The per-image ideal: every image alone, unpadded, attention over its own tokens only."""
    return model_flops(shape, seqlens, None, "varlen")["total"]


def attention_kind(lowering: str) -> str:
    """How a runner's attention scales: ``"dense"`` for the mask lowering, ``"varlen"`` otherwise."""
    return "dense" if lowering == "dense" else "varlen"


def gemm_peak_gflops(n: int = 1024, seconds: float = 0.5, dtype: Any = np.float32) -> float:
    """Best observed float32 GEMM rate of numpy's BLAS (all its threads) in GFLOP/s: the machine's
    practical matrix-multiply peak, measured in the same process as the benchmark."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    a @ b  # warm-up (thread pool start, page faults)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    reps = 0
    while reps < 3 or time.perf_counter() < deadline:
        s = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - s)
        reps += 1
    return 2.0 * n ** 3 / best / 1e9
