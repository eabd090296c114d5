"""onnxscript translations of ``navit::packed_attention`` for each custom-node lowering."""

from __future__ import annotations

from typing import Any, Callable

from onnxscript import INT64, opset20 as op
from onnxscript.values import Op, Opset

from navit_deploy.export.lowerings import (MS_DOMAIN, PLUGIN_DOMAIN, PLUGIN_NAMESPACE, PLUGIN_OP, PLUGIN_VERSION,
                                           SEGMENT_DOMAIN, SEGMENT_OP, TRT_DOMAIN)
from navit_deploy.export.schemas import register_schemas

register_schemas()
_plugin_op = Op(Opset(PLUGIN_DOMAIN, 1), PLUGIN_OP)
_packed_mha = Op(Opset(MS_DOMAIN, 1), "PackedMultiHeadAttention")
_segment_attention = Op(Opset(SEGMENT_DOMAIN, 1), SEGMENT_OP)
_trt_attention = Op(Opset(TRT_DOMAIN, 1), "TRT_Attention")
_BIG = 2**62


def plugin_translation(num_heads: int, head_dim: int) -> Callable[..., Any]:
    """One ``NavitPackedAttention`` node, attributed for the TensorRT ONNX parser's plugin fallback."""

    def translate(q, k, v, cu_seqlens, num_heads_: int, scale: float):  # noqa: ANN001, ANN202
        return _plugin_op(q, k, v, cu_seqlens, num_heads=num_heads, head_dim=head_dim,
                                           scale=float(scale), plugin_version=PLUGIN_VERSION,
                                           plugin_namespace=PLUGIN_NAMESPACE)

    return translate


def _valid_count(cu_seqlens):  # noqa: ANN001, ANN202
    cu64 = op.Cast(cu_seqlens, to=INT64.dtype)
    return cu64, op.Slice(cu64, op.Constant(value_ints=[-1]), op.Constant(value_ints=[_BIG]))


def ort_packed_translation(num_heads: int, head_dim: int) -> Callable[..., Any]:
    """``PackedMultiHeadAttention`` on the valid tokens, with ``token_offset`` built in the graph; padding -> 0."""

    def translate(q, k, v, cu_seqlens, num_heads_: int, scale: float):  # noqa: ANN001, ANN202
        zero, one = op.Constant(value_ints=[0]), op.Constant(value_ints=[1])
        cu64, total = _valid_count(cu_seqlens)
        lengths = op.Sub(op.Slice(cu64, one, op.Constant(value_ints=[_BIG])),
                         op.Slice(cu64, zero, op.Constant(value_ints=[-1])))
        seq = op.ReduceMax(lengths, keepdims=1)  # [1] = S, the longest image
        batch = op.Shape(lengths)  # [1] = B
        positions = op.Range(op.Constant(value_int=0), op.Squeeze(op.Mul(batch, seq)), op.Constant(value_int=1))
        row, col = op.Div(positions, seq), op.Mod(positions, seq)
        valid = op.Less(col, op.Gather(lengths, row))
        offsets = op.Concat(op.Compress(positions, valid), op.Compress(positions, op.Not(valid)), axis=0)
        token_offset = op.Cast(op.Reshape(offsets, op.Concat(batch, seq, axis=0)), to=6)  # INT32
        qv, kv, vv = (op.Slice(x, zero, total, zero) for x in (q, k, v))
        out = _packed_mha(qv, kv, vv, None, token_offset, cu_seqlens, num_heads=num_heads,
                                           scale=float(scale))
        pad_rows = op.Sub(op.Shape(q, start=0, end=1), total)
        pads = op.Concat(zero, zero, pad_rows, zero, axis=0)
        return op.Pad(out, pads)

    return translate


def ort_mha_translation(num_heads: int, head_dim: int) -> Callable[..., Any]:
    """A ``SegmentAttention`` placeholder per layer, rewritten after export into a ``Loop`` that runs
    ``com.microsoft.MultiHeadAttention`` once per segment (see :mod:`navit_deploy.export.segment_loop`)."""

    def translate(q, k, v, cu_seqlens, num_heads_: int, scale: float):  # noqa: ANN001, ANN202
        return _segment_attention(q, k, v, cu_seqlens, num_heads=num_heads, scale=float(scale))

    return translate


def trt_native_translation(num_heads: int, head_dim: int) -> Callable[..., Any]:
    """TensorRT 11 ``TRT_Attention`` (packed_nhd). Q is pre-scaled: the op itself does not scale."""

    def translate(q, k, v, cu_seqlens, num_heads_: int, scale: float):  # noqa: ANN001, ANN202
        shape3 = op.Constant(value_ints=[0, num_heads, head_dim])
        q3 = op.Reshape(op.Mul(q, op.CastLike(op.Constant(value_float=float(scale)), q)), shape3)
        k3, v3 = op.Reshape(k, shape3), op.Reshape(v, shape3)
        out3 = _trt_attention(q3, k3, v3, None, cu_seqlens, cu_seqlens, query_form="packed_nhd",
                                  kv_form="packed_nhd", causal_kind="none", TRT_decomposable=1)
        out = op.Reshape(out3, op.Constant(value_ints=[0, num_heads * head_dim]))
        # Padding rows are unspecified in TRT_Attention: zero them so padding never carries garbage.
        _, total = _valid_count(cu_seqlens)
        idx = op.Range(op.Constant(value_int=0), op.Squeeze(op.Shape(q, start=0, end=1)), op.Constant(value_int=1))
        keep = op.Unsqueeze(op.Less(idx, total), op.Constant(value_ints=[1]))
        return op.Where(keep, out, op.CastLike(op.Constant(value_float=0.0), out))

    return translate
