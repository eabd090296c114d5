"""Numpy reference semantics of the packed-attention operators the lowerings emit. Torch-free.

These fix what ``NavitPackedAttention`` (our TensorRT plugin), ``com.microsoft.PackedMultiHeadAttention``
and TensorRT 11's ``TRT_Attention`` (packed_nhd) compute, and let ONNX Runtime on CPU run graphs that
contain them (registered as onnxruntime-extensions Python operators) so the wiring of every lowering is
validated here even where the real kernels cannot run.
"""

from __future__ import annotations

import numpy as np


def packed_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, cu_seqlens: np.ndarray, num_heads: int,
                     scale: float | None = None) -> np.ndarray:
    """``q, k, v [T, H*D]`` -> ``[T, H*D]``: softmax attention within each ``cu_seqlens`` segment.

    Tokens at or beyond ``cu_seqlens[-1]`` (padding) get zeros. Computed in float64 then cast back.
    """
    t, width = q.shape
    d = width // num_heads
    s = 1.0 / np.sqrt(d) if not scale else float(scale)
    out = np.zeros((t, width), dtype=np.float64)
    cu = np.asarray(cu_seqlens).astype(np.int64)
    for b in range(len(cu) - 1):
        lo, hi = int(cu[b]), int(cu[b + 1])
        if hi <= lo:
            continue
        qs = q[lo:hi].astype(np.float64).reshape(hi - lo, num_heads, d).transpose(1, 0, 2)
        ks = k[lo:hi].astype(np.float64).reshape(hi - lo, num_heads, d).transpose(1, 0, 2)
        vs = v[lo:hi].astype(np.float64).reshape(hi - lo, num_heads, d).transpose(1, 0, 2)
        logits = qs @ ks.transpose(0, 2, 1) * s
        logits -= logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=-1, keepdims=True)
        out[lo:hi] = (p @ vs).transpose(1, 0, 2).reshape(hi - lo, width)
    return out.astype(q.dtype)


def packed_mha_from_token_offset(q: np.ndarray, k: np.ndarray, v: np.ndarray, token_offset: np.ndarray,
                                 cu_seqlens: np.ndarray, num_heads: int, scale: float) -> np.ndarray:
    """ORT ``PackedMultiHeadAttention`` semantics, checking ``token_offset`` the way the CUDA kernel uses it.

    ``token_offset [B, S]`` flattened lists, for each packed token in order, its position ``b*S + j`` in
    the padded layout, then the padded positions. A wrong ``token_offset`` raises instead of passing.
    """
    b, s = token_offset.shape
    cu = cu_seqlens.astype(np.int64)
    lengths = np.diff(cu)
    expected_valid = np.concatenate([bi * s + np.arange(n) for bi, n in enumerate(lengths)]) if b else np.zeros(0)
    flat = token_offset.reshape(-1).astype(np.int64)
    n = int(cu[-1])
    if q.shape[0] != n or not np.array_equal(flat[:n], expected_valid):
        raise ValueError("token_offset/cumulative_sequence_length disagree with the packed layout")
    if sorted(flat.tolist()) != list(range(b * s)) or s != (lengths.max() if b else 0):
        raise ValueError("token_offset is not a permutation of the padded positions")
    return packed_attention(q, k, v, cu_seqlens, num_heads, scale)


REFERENCE_DOMAIN = "ai.onnx.contrib"


def rehome_custom_nodes(model, domain: str, reference_domain: str = REFERENCE_DOMAIN) -> int:  # noqa: ANN001
    """Move ``domain`` nodes to ``reference_domain`` (onnxruntime-extensions Python ops), in place.

    ``model`` is an ``onnx.ModelProto``. Python ops take a fixed input list, so empty optional inputs are
    dropped. Used by :class:`~navit_deploy.runtime.onnx_runner.OnnxRunner` (``reference_ops=True``) and by
    calibration. Returns the number of nodes moved.
    """
    moved = 0
    for node in model.graph.node:
        if node.domain == domain:
            node.domain = reference_domain
            kept = [i for i in node.input if i]
            del node.input[:]
            node.input.extend(kept)
            moved += 1
    if moved and not any(o.domain == reference_domain for o in model.opset_import):
        model.opset_import.add(domain=reference_domain, version=1)
    return moved


_REGISTERED = False


def register_ort_reference_ops() -> None:
    """Register the reference operators with onnxruntime-extensions (domain ``ai.onnx.contrib``), once."""
    global _REGISTERED
    if _REGISTERED:
        return
    try:
        from onnxruntime_extensions import PyCustomOpDef, onnx_op
    except ImportError as exc:  # pragma: no cover - optional dependency
        from navit_deploy.errors import BackendUnavailableError

        raise BackendUnavailableError("validating plugin/contrib lowerings on CPU needs onnxruntime-extensions "
                                      "(pip install onnxruntime-extensions)") from exc
    f, i32 = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32

    @onnx_op(op_type="NavitPackedAttention", inputs=[f, f, f, i32], outputs=[f],
             attrs={"num_heads": PyCustomOpDef.dt_int64, "head_dim": PyCustomOpDef.dt_int64,
                    "scale": PyCustomOpDef.dt_float, "plugin_version": PyCustomOpDef.dt_string,
                    "plugin_namespace": PyCustomOpDef.dt_string})
    def _navit_packed_attention(q, k, v, cu, **attrs):  # noqa: ANN001
        return packed_attention(q, k, v, cu, int(attrs["num_heads"]), float(attrs.get("scale", 0.0)))

    @onnx_op(op_type="PackedMultiHeadAttention", inputs=[f, f, f, i32, i32], outputs=[f],
             attrs={"num_heads": PyCustomOpDef.dt_int64, "scale": PyCustomOpDef.dt_float})
    def _packed_mha(q, k, v, token_offset, cu, **attrs):  # noqa: ANN001
        return packed_mha_from_token_offset(q, k, v, token_offset, cu, int(attrs["num_heads"]),
                                            float(attrs.get("scale", 0.0)))

    @onnx_op(op_type="TRT_Attention", inputs=[f, f, f, i32, i32], outputs=[f],
             attrs={"query_form": PyCustomOpDef.dt_string, "kv_form": PyCustomOpDef.dt_string,
                    "causal_kind": PyCustomOpDef.dt_string, "TRT_decomposable": PyCustomOpDef.dt_int64})
    def _trt_attention(q, k, v, query_lengths, kv_lengths, **attrs):  # noqa: ANN001
        if attrs.get("query_form") != "packed_nhd" or attrs.get("kv_form") != "packed_nhd":
            raise ValueError("reference TRT_Attention supports packed_nhd forms only")
        if not np.array_equal(query_lengths, kv_lengths):
            raise ValueError("self-attention needs equal query and kv lengths")
        t, h, d = q.shape
        # TRT_Attention does not scale Q itself: the graph pre-scales it, so scale=1 here.
        out = packed_attention(q.reshape(t, h * d), k.reshape(t, h * d), v.reshape(t, h * d), query_lengths, h, 1.0)
        return out.reshape(t, h, d)

    _REGISTERED = True
