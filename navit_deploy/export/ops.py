"""The torch custom op behind every packed-attention lowering, and its registration in the attention switch.

``navit::packed_attention(q, k, v, cu_seqlens, num_heads, scale)`` takes ``q, k, v [T, H*D]`` and
``cu_seqlens [B+1]`` int32 and returns ``[T, H*D]``: attention within each segment, zeros on padding.
Eager calls run the reference (per-segment SDPA); export translates it per lowering
(see :mod:`navit_deploy.export.lowerings`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from navit_deploy.model.attention import register_attention

PACKED_OP_IMPL = "packed-op"


@torch.library.custom_op("navit::packed_attention", mutates_args=())
def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     num_heads: int, scale: float) -> torch.Tensor:
    t, width = q.shape
    d = width // num_heads
    out = torch.zeros_like(q)
    bounds = cu_seqlens.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e > s:
            qs, ks, vs = (x[s:e].reshape(e - s, num_heads, d).transpose(0, 1) for x in (q, k, v))
            out[s:e] = F.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(0, 1).reshape(e - s, width)
    return out


@packed_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, num_heads: int,
      scale: float) -> torch.Tensor:
    return torch.empty_like(q)


@register_attention(PACKED_OP_IMPL)
def packed_op_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_ids: torch.Tensor,
                        cu_seqlens: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention through ``navit::packed_attention`` so export can lower it to one node per layer."""
    t, h, d = q.shape
    out = packed_attention(q.reshape(t, h * d), k.reshape(t, h * d), v.reshape(t, h * d),
                           cu_seqlens.to(torch.int32), h, scale)
    return out.reshape(t, h, d)
