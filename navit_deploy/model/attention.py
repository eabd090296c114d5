"""The one place that chooses how attention confined to each image is computed.

Every implementation takes ``q, k, v`` as ``[T, H, D]``, the pack's ``segment_ids [T]`` (``-1`` on
padding) and ``cu_seqlens [B+1]`` (int32), and returns ``[T, H, D]``. Export lowerings register more
implementations here (see :mod:`navit_deploy.export.lowerings`) so the model never branches on them.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from navit_deploy.errors import BackendUnavailableError, ConfigError


class AttentionFn(Protocol):
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_ids: torch.Tensor,
                 cu_seqlens: torch.Tensor, scale: float) -> torch.Tensor: ...


_REGISTRY: dict[str, AttentionFn] = {}


def register_attention(name: str) -> Callable[[AttentionFn], AttentionFn]:
    """Decorator adding an attention implementation under ``name``."""

    def deco(fn: AttentionFn) -> AttentionFn:
        _REGISTRY[name] = fn
        return fn

    return deco


def get_attention(name: str) -> AttentionFn:
    """The implementation registered as ``name``; a clear error listing the choices otherwise."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown attention implementation {name!r}; choose one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def available_attention() -> list[str]:
    return sorted(_REGISTRY)


def block_diagonal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """``[T, T]`` bool mask: token i may attend to j iff they belong to the same segment (padding to padding)."""
    return segment_ids.unsqueeze(1) == segment_ids.unsqueeze(0)


@register_attention("dense")
def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_ids: torch.Tensor,
                    cu_seqlens: torch.Tensor, scale: float) -> torch.Tensor:
    """Full ``T x T`` attention with a block-diagonal mask built from segment ids. Exportable with standard ops."""
    mask = block_diagonal_mask(segment_ids)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0),
        attn_mask=mask, scale=scale,
    )
    return out.squeeze(0).transpose(0, 1)


@register_attention("dense-bias")
def dense_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_ids: torch.Tensor,
                         cu_seqlens: torch.Tensor, scale: float) -> torch.Tensor:
    """The dense mask written out for export: ``softmax(q k^T * scale + bias) v`` with an additive ``0/-inf``
    bias built from segment ids.

    Same result as :func:`dense_attention`; its ONNX graph is leaner: ``scaled_dot_product_attention``
    with a boolean mask exports as ``Where`` on the scores plus an ``IsNaN``/``Where`` guard for rows
    with nothing to attend to, per layer. Here every row attends at least to itself (padding tokens share
    segment ``-1``), so no guard is needed, and the bias, identical in every layer, is built once by
    ONNX Runtime's common-subexpression elimination.
    """
    mask = block_diagonal_mask(segment_ids)
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    scores = torch.matmul(q.transpose(0, 1) * scale, k.permute(1, 2, 0)) + bias  # [H, T, T]
    return torch.matmul(torch.softmax(scores, dim=-1), v.transpose(0, 1)).transpose(0, 1)


@register_attention("segment")
def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_ids: torch.Tensor,
                      cu_seqlens: torch.Tensor, scale: float) -> torch.Tensor:
    """Reference: a Python loop running plain attention per image. Not exportable; used to check the others."""
    out = torch.zeros_like(q)
    bounds = cu_seqlens.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e > s:
            qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q, k, v))
            out[s:e] = F.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(0, 1)
    return out


@register_attention("varlen")
def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_ids: torch.Tensor,
                     cu_seqlens: torch.Tensor, scale: float) -> torch.Tensor:
    """``torch.nn.attention.varlen.varlen_attn`` (CUDA, fp16/bf16) driven by ``cu_seqlens``; padding gets zeros."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError as exc:  # pragma: no cover - depends on the torch build
        raise BackendUnavailableError("this torch build has no torch.nn.attention.varlen") from exc
    if q.device.type != "cuda":
        raise BackendUnavailableError("varlen attention needs a CUDA device; use 'dense' or 'segment' on CPU")
    cu = cu_seqlens.to(torch.int32)
    lengths = cu[1:] - cu[:-1]
    max_len = int(lengths.max()) if lengths.numel() else 0
    out = torch.zeros_like(q)
    valid = int(cu[-1])
    out[:valid] = varlen_attn(q[:valid], k[:valid], v[:valid], cu, cu, max_len, max_len, scale=scale)
    return out


# Windowed blocks of the dense lowerings: the windows' attention in fixed slots instead of a mask over the pack.
WINDOW_SLOT_IMPLS = ("dense", "dense-bias")


@register_attention("window-slots")
def window_slot_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segment_ids: torch.Tensor,
                          cu_seqlens: torch.Tensor, scale: float, slot: int = 64) -> torch.Tensor:
    """Attention within windows of at most ``slot`` tokens, each window gathered into a slot of its own:
    ``[W, H, slot, slot]`` scores instead of the ``[H, T, T]`` of a mask over the whole pack (the windowed blocks
    of a Qwen2.5-VL tower: ``slot`` = 64 patches per 112 px window, 1/80 of the scores at 5,000 tokens).

    Here ``segment_ids``/``cu_seqlens`` are the windows'; the packer lays windows out contiguously in order.
    Exact (masked keys get ``-inf``; every window has a key); standard ONNX ops (Gather, MatMul, Softmax), no
    data-dependent shapes. Padding tokens get zeros.
    """
    t, h, d = q.shape
    cu = cu_seqlens.to(torch.int64)
    starts, lengths = cu[:-1], cu[1:] - cu[:-1]  # [W]
    offs = torch.arange(slot, device=q.device, dtype=torch.int64)
    valid = offs.unsqueeze(0) < lengths.unsqueeze(1)  # [W, S]
    gather = torch.where(valid, starts.unsqueeze(1) + offs.unsqueeze(0), torch.zeros_like(offs).unsqueeze(0))

    def slots(x: torch.Tensor) -> torch.Tensor:  # [T, H, D] -> [W, H, S, D]
        return x[gather].permute(0, 2, 1, 3)

    bias = torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill(~valid, float("-inf"))
    scores = torch.matmul(slots(q) * scale, slots(k).transpose(-1, -2)) + bias[:, None, None, :]
    out = torch.matmul(torch.softmax(scores, dim=-1), slots(v))  # [W, H, S, D]
    out = out.permute(0, 2, 1, 3).reshape(-1, h, d)  # [W*S, H, D]
    member = segment_ids >= 0
    w = segment_ids.clamp(min=0)
    pos = torch.arange(t, device=q.device, dtype=torch.int64) - starts[w]
    flat = torch.where(member, w * slot + pos, torch.zeros_like(pos))
    return out[flat] * member.to(q.dtype)[:, None, None]
