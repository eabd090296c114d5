"""NaViT over packed sequences: forward takes only flat tensors decided on the host by the packer."""

from __future__ import annotations

import torch
import torch.nn as nn

from navit_deploy.model.attention import WINDOW_SLOT_IMPLS, get_attention
from navit_deploy.model.config import NaViTConfig
from navit_deploy.model.layers import (Block, MaskedAttentionPool, PatchEmbed, PatchMerger, Rotary2D, block_norm,
                                      layer_norm, positional_embedding)


class NaViT(nn.Module):
    """Patch n' Pack Vision Transformer.

    ``forward(patches [T, C*p*p], coords [T, 2], segment_ids [T], cu_seqlens [B+1])`` returns
    ``(embeddings [B, dim], logits [B, num_classes])``, one row per image in pack order, or
    ``(embeddings,)`` for a model without a classifier (``num_classes=0``, e.g. SigLIP 2). Padding tokens
    (segment id ``-1``) influence nothing.

    A VLM tower (``output="tokens"``) returns ``(tokens [T / merge^2, out_dim],)``: the merged tokens of the
    whole pack in pack order (padding rows included; T a multiple of ``merge^2``). With windows
    (``config.windowed``) forward takes two more inputs, ``window_segment_ids [T]`` and ``window_cu_seqlens
    [W+1]``, the same two tensors over windows; windowed blocks get them, full-attention blocks the images'.
    """

    def __init__(self, config: NaViTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = PatchEmbed(c)
        self.pos_embed = positional_embedding(c)
        self.rope = Rotary2D(c.head_dim, c.rope_theta) if c.pos_mode == "rope2d" else None
        full = set(c.fullatt_blocks)
        self.blocks = nn.ModuleList(Block(c, windowed=c.windowed and i not in full) for i in range(c.depth))
        self.head = None
        if c.output == "tokens":
            self.merger = PatchMerger(c)
        else:
            self.norm = block_norm(c.dim, c)
            self.pool = MaskedAttentionPool(c)
            self.head_norm = layer_norm(c.dim, c) if c.head_norm else nn.Identity()
            self.head = nn.Linear(c.dim, c.num_classes, bias=c.head_bias) if c.num_classes else None
        self.apply(_init_weights)

    @property
    def attention(self) -> str:
        return self.blocks[0].attn.impl

    def set_attention(self, name: str, window_slots: bool = True) -> "NaViT":
        """Switch every block to the attention implementation registered as ``name``.

        With the dense implementations, windowed blocks compute their windows in fixed slots (exact, and the
        scores of windows instead of the whole pack); ``window_slots=False`` keeps the mask over the pack."""
        get_attention(name)  # validates the name
        c = self.config
        slot = c.window_merged ** 2 * c.frontend.merge_size ** 2
        for block in self.blocks:
            block.attn.impl = name
            block.attn.slot = slot if window_slots and block.windowed and name in WINDOW_SLOT_IMPLS else 0
        return self

    def forward(self, patches: torch.Tensor, coords: torch.Tensor, segment_ids: torch.Tensor,
                cu_seqlens: torch.Tensor, window_segment_ids: torch.Tensor | None = None,
                window_cu_seqlens: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        x = self.patch_embed(patches)
        if self.pos_embed is not None:
            x = x + self.pos_embed(coords, segment_ids, cu_seqlens)
        rope = self.rope(coords) if self.rope is not None else None
        for block in self.blocks:
            if block.windowed:
                x = block(x, window_segment_ids, window_cu_seqlens, rope)
            else:
                x = block(x, segment_ids, cu_seqlens, rope)
        if self.config.output == "tokens":
            return (self.merger(x),)
        pooled = self.pool(self.norm(x), segment_ids, cu_seqlens)
        normed = self.head_norm(pooled)
        embeddings = normed if self.config.embedding == "head_norm" else pooled
        if self.head is None:
            return (embeddings,)
        return embeddings, self.head(normed)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
