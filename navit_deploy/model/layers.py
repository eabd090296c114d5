"""NaViT building blocks: patch embedding, positional embeddings, blocks, masked pooling.

A leaf module: it imports nothing from the model assembly. Every forward takes flat packed tensors
and is free of Python loops over images and of ``.item()``, so it exports with dynamic axes. The options of
:class:`~navit_deploy.model.config.NaViTConfig` choose the variant each model family uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from navit_deploy.model.attention import get_attention
from navit_deploy.model.config import NaViTConfig


def segment_onehot(segment_ids: torch.Tensor, num_segments: torch.Tensor | int) -> torch.Tensor:
    """``[T, B]`` bool: token t belongs to image b. Padding (``-1``) belongs to none."""
    ids = torch.arange(num_segments, device=segment_ids.device, dtype=segment_ids.dtype)
    return segment_ids.unsqueeze(1) == ids.unsqueeze(0)


def num_segments_of(cu_seqlens: torch.Tensor) -> torch.Tensor | int:
    """B as a traceable size (``cu_seqlens.shape[0] - 1``)."""
    return cu_seqlens.shape[0] - 1


def token_grid(coords: torch.Tensor, segment_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``[T, 2]`` float: the (rows, cols) of the patch grid of each token's image (1 on padding).

    Taken from the coordinates (the largest row and column of the image, plus one), so it needs no input
    beyond the four the model has.
    """
    onehot = segment_onehot(segment_ids, num_segments_of(cu_seqlens)).to(torch.float32)  # [T, B]
    grid = ((coords.to(torch.float32) + 1).unsqueeze(1) * onehot.unsqueeze(2)).amax(dim=0)  # [B, 2]
    return (onehot.unsqueeze(2) * grid.unsqueeze(0)).sum(dim=1).clamp_min(1.0)


def layer_norm(n: int, c: NaViTConfig) -> nn.LayerNorm:
    return nn.LayerNorm(n, eps=c.norm_eps, bias=c.norm_bias)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` (T5/Qwen), computed in float32 as transformers does."""

    def __init__(self, n: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def block_norm(n: int, c: NaViTConfig, eps: float | None = None) -> nn.Module:
    """The norm of the blocks (and of the patch merger): LayerNorm or RMSNorm as ``c.norm`` says."""
    eps = c.norm_eps if eps is None else eps
    return RMSNorm(n, eps) if c.norm == "rmsnorm" else nn.LayerNorm(n, eps=eps, bias=c.norm_bias)


class QuickGELU(nn.Module):
    """CLIP's ``x * sigmoid(1.702 x)`` (transformers' ``quick_gelu``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def gelu(c: NaViTConfig) -> nn.Module:
    """The MLP activation ``c.gelu`` names."""
    if c.gelu == "quick":
        return QuickGELU()
    if c.gelu == "silu":
        return nn.SiLU()
    return nn.GELU(approximate="tanh" if c.gelu == "tanh" else "none")


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` (Qwen2.5-VL's vision MLP, with biases)."""

    def __init__(self, c: NaViTConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(c.dim, c.mlp_hidden)
        self.up = nn.Linear(c.dim, c.mlp_hidden)
        self.down = nn.Linear(c.mlp_hidden, c.dim)
        self.act = gelu(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


def mlp(c: NaViTConfig) -> nn.Module:
    if c.mlp == "gated":
        return GatedMLP(c)
    return nn.Sequential(nn.Linear(c.dim, c.mlp_hidden), gelu(c), nn.Linear(c.mlp_hidden, c.dim))


class Rotary2D(nn.Module):
    """2D rotary position embedding of Qwen2-VL / Qwen2.5-VL towers, computed in the graph from coordinates.

    ``head_dim / 4`` inverse frequencies ``theta ** (-2i / (head_dim / 2))``; angles ``[row * f, col * f]``
    (row first) fill half the head dim and are repeated for the other half, and ``rotate_half`` pairs
    dimension ``j`` with ``j + head_dim / 2``: exactly transformers' ``Qwen2_5_VLVisionRotaryEmbedding`` with
    ``apply_rotary_pos_emb_vision``.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        spatial = head_dim // 2
        inv_freq = 1.0 / (theta ** (torch.arange(0, spatial, 2, dtype=torch.float) / spatial))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``[T, 1, head_dim]`` (broadcast over heads)."""
        freqs = coords.to(torch.float32).unsqueeze(-1) * self.inv_freq  # [T, 2, d/4]
        half = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)  # [T, d/2]: rows, then columns
        emb = torch.cat([half, half], dim=-1).unsqueeze(1)
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    cos, sin = rope
    x32 = x.float()
    return (x32 * cos + rotate_half(x32) * sin).to(x.dtype)


class HeadL2Norm(nn.Module):
    """Query-key norm of vit-pytorch (ViT-22B): ``normalize(x) * sqrt(d) * gamma``, a gamma per head."""

    def __init__(self, heads: int, dim_head: int) -> None:
        super().__init__()
        self.scale = dim_head ** 0.5
        self.gamma = nn.Parameter(torch.ones(heads, dim_head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, H, d]
        return F.normalize(x, dim=-1) * self.scale * self.gamma


def qk_norm(kind: str, heads: int, dim_head: int, c: NaViTConfig) -> nn.Module:
    if kind == "layernorm":
        return layer_norm(dim_head, c)
    if kind == "l2":
        return HeadL2Norm(heads, dim_head)
    return nn.Identity()


class PatchEmbed(nn.Module):
    """Linear projection of flattened patches (a ViT's patchifying stem), with optional LayerNorms.

    The builtin model norms after the projection only: a LayerNorm on the raw patch would map every uniform
    patch (a solid fill, blank paper) to the same vector and erase absolute colour and brightness.
    vit-pytorch norms before and after; SigLIP 2 not at all.
    """

    def __init__(self, c: NaViTConfig) -> None:
        super().__init__()
        self.norm_in = layer_norm(c.patch_dim, c) if c.patch_norm_in else nn.Identity()
        self.proj = nn.Linear(c.patch_dim, c.dim, bias=c.patch_bias)
        self.norm_out = layer_norm(c.dim, c) if c.patch_norm_out else nn.Identity()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.norm_out(self.proj(self.norm_in(patches)))


class FactorizedPosEmbed(nn.Module):
    """Separate learned row and column tables, summed: works at any grid size up to the tables' sizes.

    ``fractional=True`` maps each image's coordinates to ``floor(coord / grid_size * table_size)`` so every
    image spans the table (the paper's fractional-coordinate variant).
    """

    def __init__(self, rows: int, cols: int, dim: int, fractional: bool) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols
        self.fractional = fractional
        # Patch tokens are layer-normed (unit scale): positions start at a comparable scale, not 0.02,
        # or geometry is ~50x weaker than content and takes hundreds of steps to emerge.
        self.row = nn.Parameter(torch.randn(rows, dim) * 0.5)
        self.col = nn.Parameter(torch.randn(cols, dim) * 0.5)

    def forward(self, coords: torch.Tensor, segment_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        rows, cols = coords[:, 0], coords[:, 1]
        if self.fractional:
            per_token = token_grid(coords, segment_ids, cu_seqlens).to(coords.dtype)  # [T, 2]
            size = torch.tensor([self.rows, self.cols], dtype=coords.dtype, device=coords.device)
            scaled = torch.div(coords * size, per_token, rounding_mode="floor")
            rows, cols = scaled[:, 0].clamp(0, self.rows - 1), scaled[:, 1].clamp(0, self.cols - 1)
        return F.embedding(rows, self.row) + F.embedding(cols, self.col)


class ResizedPosEmbed(nn.Module):
    """One learned ``side x side`` table resized to each image's grid (SigLIP 2 NaFlex).

    The weights are those of ``F.interpolate(mode="bilinear", align_corners=False, antialias=True)``,
    computed per token as transformers computes them: separable and linear in the table, so each token's
    embedding is its row weights times its column weights times the table (one ``[T, side*side]`` matmul,
    exportable with standard ops). Without the antialias (a downscaled grid averages more than two rows),
    pooled outputs move by up to ~0.2.
    """

    def __init__(self, side: int, dim: int) -> None:
        super().__init__()
        self.side = side
        self.table = nn.Parameter(torch.randn(side * side, dim) * 0.02)

    def weights(self, coords: torch.Tensor, segment_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """``[T, side*side]``: each token's weights over the table, row-major."""
        size = token_grid(coords, segment_ids, cu_seqlens)  # [T, 2] (rows, cols)
        scale = self.side / size
        support = scale.clamp(min=1.0)
        center = (coords.to(torch.float32) + 0.5) * scale - 0.5
        source = torch.arange(self.side, device=coords.device, dtype=torch.float32)
        w = (1 - (source - center.unsqueeze(-1)).abs() / support.unsqueeze(-1)).clamp(min=0.0)  # [T, 2, side]
        w = w / w.sum(-1, keepdim=True)
        return (w[:, 0, :, None] * w[:, 1, None, :]).flatten(1)

    def forward(self, coords: torch.Tensor, segment_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        return self.weights(coords, segment_ids, cu_seqlens) @ self.table


def positional_embedding(c: NaViTConfig) -> nn.Module | None:
    """The additive position table of ``c.pos_mode``; None for rotary positions (applied in attention)."""
    if c.pos_mode == "rope2d":
        return None
    if c.pos_mode == "resized":
        return ResizedPosEmbed(c.pos_table, c.dim)
    rows, cols = c.pos_rows_cols
    return FactorizedPosEmbed(rows, cols, c.dim, fractional=c.pos_mode == "fractional")


class Attention(nn.Module):
    """Multi-head self-attention confined to each image, with optional query-key normalization.

    The implementation is looked up by name in :mod:`navit_deploy.model.attention`; set ``impl``.
    """

    def __init__(self, c: NaViTConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = c.heads, c.head_dim
        inner = self.heads * self.head_dim
        self.scale = c.attn_scale if c.attn_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.qkv = nn.Linear(c.dim, 3 * inner, bias=c.qkv_bias)
        self.q_norm = qk_norm(c.qk_norm, self.heads, self.head_dim, c)
        self.k_norm = qk_norm(c.qk_norm, self.heads, self.head_dim, c)
        self.proj = nn.Linear(inner, c.dim, bias=c.proj_bias)
        self.impl = "dense"
        self.slot = 0  # > 0: windows of at most this many tokens in slots (see attention.window_slot_attention)

    def forward(self, x: torch.Tensor, segment_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv(x).reshape(t, 3, self.heads, self.head_dim).unbind(1)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        if self.slot:
            out = get_attention("window-slots")(q, k, v, segment_ids, cu_seqlens, self.scale, slot=self.slot)
        else:
            out = get_attention(self.impl)(q, k, v, segment_ids, cu_seqlens, self.scale)
        return self.proj(out.reshape(t, self.heads * self.head_dim))


class Block(nn.Module):
    """Pre-norm transformer block. ``windowed``: the model hands it the window lengths instead of the images'."""

    def __init__(self, c: NaViTConfig, windowed: bool = False) -> None:
        super().__init__()
        self.norm1 = block_norm(c.dim, c)
        self.attn = Attention(c)
        self.norm2 = block_norm(c.dim, c)
        self.mlp = mlp(c)
        self.windowed = windowed

    def forward(self, x: torch.Tensor, segment_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), segment_ids, cu_seqlens, rope)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """Qwen-VL's merger: norm each token, concatenate the ``merge x merge`` contiguous tokens of a block, MLP
    (exact GELU) to ``out_dim``: ``[T, dim] -> [T / merge^2, out_dim]`` (T a multiple of ``merge^2``)."""

    def __init__(self, c: NaViTConfig) -> None:
        super().__init__()
        self.unit = c.frontend.tokens_per_merged_token
        self.hidden = c.dim * self.unit
        self.norm = block_norm(c.dim, c, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(self.hidden, self.hidden), nn.GELU(), nn.Linear(self.hidden, c.out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x).reshape(-1, self.hidden))


class MaskedAttentionPool(nn.Module):
    """Multi-head attention pooling with a learned query, masked to each image: ``[T, D] -> [B, D]``.

    The query is the already projected (and, with a k norm, normalized) probe of a MAP head: SigLIP 2's
    ``probe @ W_q + b_q`` and vit-pytorch's normalized query are constants, folded in at import.
    """

    def __init__(self, c: NaViTConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = c.pool_heads, c.pool_head_dim
        inner = self.heads * self.head_dim
        self.scale = c.pool_scale if c.pool_scale is not None else 1.0 / math.sqrt(self.head_dim)
        self.query = nn.Parameter(torch.randn(self.heads, self.head_dim) * 0.02)
        self.kv = nn.Linear(c.dim, 2 * inner, bias=c.qkv_bias)
        self.k_norm = qk_norm(c.pool_k_norm, self.heads, self.head_dim, c)
        self.proj = nn.Linear(inner, c.dim)
        self.use_mlp = c.pool_mlp
        if c.pool_mlp:
            self.norm = layer_norm(c.dim, c)
            self.mlp = mlp(c)

    def forward(self, x: torch.Tensor, segment_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        t = x.shape[0]
        k, v = self.kv(x).reshape(t, 2, self.heads, self.head_dim).unbind(1)  # [T, H, d]
        scores = (self.k_norm(k) * self.query.unsqueeze(0)).sum(-1) * self.scale  # [T, H]
        member = segment_onehot(segment_ids, num_segments_of(cu_seqlens)).transpose(0, 1)  # [B, T]
        neg = torch.finfo(scores.dtype).min
        logits = scores.unsqueeze(0).masked_fill(~member.unsqueeze(2), neg)  # [B, T, H]
        weights = torch.softmax(logits, dim=1) * member.unsqueeze(2).to(scores.dtype)
        pooled = torch.einsum("bth,thd->bhd", weights, v).reshape(-1, self.heads * self.head_dim)
        pooled = self.proj(pooled)
        return pooled + self.mlp(self.norm(pooled)) if self.use_mlp else pooled
