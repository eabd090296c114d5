"""NaViT building blocks: patch embedding, factorized positional embeddings, blocks, masked pooling.

A leaf module: it imports nothing from the model assembly. Every forward takes flat packed tensors
and is free of Python loops over images and of ``.item()``, so it exports with dynamic axes.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from navit_deploy.model.attention import get_attention


def segment_onehot(segment_ids: torch.Tensor, num_segments: torch.Tensor | int) -> torch.Tensor:
    """``[T, B]`` bool: token t belongs to image b. Padding (``-1``) belongs to none."""
    ids = torch.arange(num_segments, device=segment_ids.device, dtype=segment_ids.dtype)
    return segment_ids.unsqueeze(1) == ids.unsqueeze(0)


def num_segments_of(cu_seqlens: torch.Tensor) -> torch.Tensor | int:
    """B as a traceable size (``cu_seqlens.shape[0] - 1``)."""
    return cu_seqlens.shape[0] - 1


class PatchEmbed(nn.Module):
    """Linear projection of flattened patches (a ViT's patchifying stem), then LayerNorm.

    No LayerNorm on the raw patch: it would map every uniform patch (a solid fill, blank paper) to the
    same vector and erase absolute colour and brightness.
    """

    def __init__(self, patch_dim: int, dim: int, eps: float) -> None:
        super().__init__()
        self.proj = nn.Linear(patch_dim, dim)
        self.norm_out = nn.LayerNorm(dim, eps=eps)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.norm_out(self.proj(patches))


class FactorizedPosEmbed(nn.Module):
    """Separate learned row and column tables, summed: works at any grid size up to ``max_grid``.

    ``fractional=True`` maps each image's coordinates to ``floor(coord / grid_size * max_grid)`` so every
    image spans the table (the paper's fractional-coordinate variant).
    """

    def __init__(self, max_grid: int, dim: int, fractional: bool) -> None:
        super().__init__()
        self.max_grid = max_grid
        self.fractional = fractional
        # Patch tokens are layer-normed (unit scale): positions start at a comparable scale, not 0.02,
        # or geometry is ~50x weaker than content and takes hundreds of steps to emerge.
        self.row = nn.Parameter(torch.randn(max_grid, dim) * 0.5)
        self.col = nn.Parameter(torch.randn(max_grid, dim) * 0.5)

    def forward(self, coords: torch.Tensor, segment_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        rows, cols = coords[:, 0], coords[:, 1]
        if self.fractional:
            onehot = segment_onehot(segment_ids, num_segments_of(cu_seqlens)).to(coords.dtype)  # [T, B]
            grid = ((coords + 1).unsqueeze(1) * onehot.unsqueeze(2)).amax(dim=0)  # [B, 2] grid (h, w)
            per_token = (onehot.unsqueeze(2) * grid.unsqueeze(0)).sum(dim=1).clamp_min(1)  # [T, 2]
            scaled = torch.div(coords * self.max_grid, per_token, rounding_mode="floor").clamp(0, self.max_grid - 1)
            rows, cols = scaled[:, 0], scaled[:, 1]
        return F.embedding(rows, self.row) + F.embedding(cols, self.col)


class Attention(nn.Module):
    """Multi-head self-attention confined to each image, with optional query-key normalization.

    The implementation is looked up by name in :mod:`navit_deploy.model.attention`; set ``impl``.
    """

    def __init__(self, dim: int, heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.impl = "dense"

    def forward(self, x: torch.Tensor, segment_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv(x).reshape(t, 3, self.heads, self.head_dim).unbind(1)
        q, k = self.q_norm(q), self.k_norm(k)
        out = get_attention(self.impl)(q, k, v, segment_ids, cu_seqlens, self.scale)
        return self.proj(out.reshape(t, self.heads * self.head_dim))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qk_norm, eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, segment_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), segment_ids, cu_seqlens)
        return x + self.mlp(self.norm2(x))


class MaskedAttentionPool(nn.Module):
    """Multi-head attention pooling with a learned query, masked to each image: ``[T, D] -> [B, D]``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.query = nn.Parameter(torch.randn(heads, self.head_dim) * 0.02)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, segment_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]
        k, v = self.kv(x).reshape(t, 2, self.heads, self.head_dim).unbind(1)  # [T, H, d]
        scores = (k * self.query.unsqueeze(0)).sum(-1) / math.sqrt(self.head_dim)  # [T, H]
        member = segment_onehot(segment_ids, num_segments_of(cu_seqlens)).transpose(0, 1)  # [B, T]
        neg = torch.finfo(scores.dtype).min
        logits = scores.unsqueeze(0).masked_fill(~member.unsqueeze(2), neg)  # [B, T, H]
        weights = torch.softmax(logits, dim=1) * member.unsqueeze(2).to(scores.dtype)
        pooled = torch.einsum("bth,thd->bhd", weights, v).reshape(-1, self.heads * self.head_dim)
        pooled = self.proj(pooled)
        return pooled + self.mlp(self.norm(pooled))
