"""FP16 conversion of an exported NaViT (``onnxconverter_common.float16``), strongly typed, FP32 I/O.

The result has FP16 weights and FP16 activations everywhere except the nodes kept in FP32, with
explicit ``Cast`` nodes at every boundary, so every tensor has one definite type: what TensorRT's
strongly typed networks (TensorRT 11) need. The model's inputs and outputs stay FP32 (and int64/int32
for coordinates, segment ids and ``cu_seqlens``), so the runtime and its artifact do not change.

Kept in FP32 by default (:data:`DEFAULT_KEEP_FP32`):

* ``LayerNormalization``: its variance squares the residual stream, and FP16 arithmetic overflows as
  soon as ``|x - mean| > 256`` (65504 is FP16's largest value); trained ViTs grow outlier features of
  that size. Running the normalization in FP32 (two casts each) is what TensorRT itself recommends
  ("running layernorm after self-attention in FP16 may cause overflow"). :func:`fp16_headroom`
  measures the actual margins on calibration images and ``navit quantize`` reports them.
* RMSNorm (group ``rms-norm``: the nodes exported from an ``RMSNorm`` module, Qwen2.5-VL's norms, which opset 20
  decomposes into ``Pow``, ``ReduceMean``, ``Add``, ``Sqrt``, ...): the same square of the residual stream.
* The converter's own block list (``Range``, ``Resize``, ``TopK``, ... ops without FP16 kernels).

Not kept by default, by measurement and by construction: ``Softmax`` (the attention scores are
bounded by QK-normalization, so FP16 is safe, and an FP16 ``MatMul -> Softmax -> MatMul`` lets
TensorRT fuse attention), ``Pow`` (the tanh-GELU cube overflows only for ``|x| > 40`` and then
saturates ``tanh`` to the right value), the ``Gemm``/``MatMul`` and residual ``Add`` nodes (their
inputs must stay below 65504: :func:`fp16_headroom` checks it on calibration images and ``navit
quantize`` warns when they do not). ``keep_fp32`` / ``--keep-fp32`` replaces the list (op types,
groups, modules, nodes).

The custom attention node of ``trt-plugin`` (``NavitPackedAttention``) becomes FP16 (the plugin's fast
tensor-core path); keep it in FP32 with ``keep_fp32=[..., "custom"]``. Its numpy reference kernel is
FP32-only, so CPU validation uses :func:`reference_validation_copy` (casts around the node). The ``ort-mha``
lowering's per-image ``Loop`` of ``MultiHeadAttention`` stays FP32 (converted as its placeholder, expanded after).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper

from navit_deploy.calibration.graph import STANDARD_DOMAINS, classify, match_keep
from navit_deploy.calibration.int8 import ensure_node_names
from navit_deploy.errors import BackendUnavailableError
from navit_deploy.export.schemas import register_schemas
from navit_deploy.export.segment_loop import SEGMENT_OP, contract_segment_attention, expand_segment_attention

DEFAULT_KEEP_FP32 = ("LayerNormalization", "rms-norm")
FP16_MAX = 1e4  # the converter's clamp for large constants (e.g. the -3.4e38 attention mask fill)


def _converter():
    try:
        from onnxconverter_common import float16
    except ImportError as exc:  # pragma: no cover - an optional dependency
        raise BackendUnavailableError("FP16 conversion needs onnxconverter-common (pip install onnxconverter-common)") from exc
    return float16


def _split_shared_initializers(model: onnx.ModelProto, blocked: set[str]) -> None:
    """Give blocked nodes their own copy of initializers they share with converted nodes (in place).

    The converter keeps an initializer in FP32 when *any* reader is blocked, which would feed FP32
    weights to an FP16 node. Exports deduplicate identical tensors (e.g. fresh LayerNorm weights).
    """
    inits = {i.name: i for i in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for name in n.input:
            if name in inits:
                readers.setdefault(name, []).append(n)
    for name, nodes in readers.items():
        kinds = {n.name in blocked for n in nodes}
        if len(kinds) < 2 or inits[name].data_type != onnx.TensorProto.FLOAT:
            continue
        twin = copy.deepcopy(inits[name])
        twin.name = f"{name}__fp32"
        model.graph.initializer.append(twin)
        for n in nodes:
            if n.name in blocked:
                for k, inp in enumerate(n.input):
                    if inp == name:
                        n.input[k] = twin.name


def _detach_graph_outputs(model: onnx.ModelProto) -> None:
    """Graph outputs that other nodes also read get an ``Identity`` of their own (in place).

    With ``keep_io_types`` the converter casts a graph output back to FP32 under its own name, which
    would hand FP32 to the FP16 nodes reading it (here: ``embeddings`` feeds the classifier).
    """
    outputs = {o.name for o in model.graph.output}
    read = {i for n in model.graph.node for i in n.input}
    for n in list(model.graph.node):
        for k, name in enumerate(n.output):
            if name in outputs and name in read:
                inner = f"{name}__inner"
                n.output[k] = inner
                for m in model.graph.node:
                    for j, inp in enumerate(m.input):
                        if inp == name:
                            m.input[j] = inner
                model.graph.node.append(helper.make_node("Identity", [inner], [name], name=f"{name}__output"))
                for vi in list(model.graph.value_info):
                    if vi.name == name:
                        twin = copy.deepcopy(vi)
                        twin.name = inner
                        model.graph.value_info.append(twin)


def _fix_casts(model: onnx.ModelProto, blocked: set[str]) -> None:
    """``Cast(to=FLOAT)`` nodes inside the converted region must now produce FP16 (in place)."""
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(model.graph.value_info) + list(model.graph.output)}
    for n in model.graph.node:
        if n.op_type != "Cast" or n.name in blocked:
            continue
        for a in n.attribute:
            if a.name == "to" and a.i == onnx.TensorProto.FLOAT and types.get(n.output[0]) == onnx.TensorProto.FLOAT16:
                a.i = onnx.TensorProto.FLOAT16


def convert_fp16(model: onnx.ModelProto, keep_fp32: Iterable[str] | None = None) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The FP16 model and ``{node name: why it stays FP32}`` (node-level; the converter's own list aside)."""
    float16 = _converter()
    model = copy.deepcopy(model)
    ensure_node_names(model)
    keep = tuple(keep_fp32) if keep_fp32 is not None else DEFAULT_KEEP_FP32
    infos = classify(model)
    kept = match_keep(infos, keep, known_op_types={"LayerNormalization", "Softmax", "Pow", "ReduceMean", "ReduceSum"})
    # custom nodes run FP16 unless kept: the plugin has FP16 kernels
    # ort-mha: each Loop of MultiHeadAttention goes back to its placeholder for the conversion, kept in FP32 (casts
    # at its boundary), and is expanded again after it: the converter does not type a Loop's body consistently.
    if contract_segment_attention(model):
        register_schemas()
        for n in model.graph.node:
            if n.op_type == SEGMENT_OP:
                kept[n.name] = "ort-mha attention (a Loop of MultiHeadAttention) in FP32"
    blocked = set(kept)
    _split_shared_initializers(model, blocked)
    _detach_graph_outputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the float32 number ... will be truncated": the mask fill, expected
        out = float16.convert_float_to_float16(model, min_positive_val=1e-7, max_finite_val=FP16_MAX,
                                               keep_io_types=True, op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST),
                                               node_block_list=sorted(blocked))
    _fix_casts(out, blocked)
    expand_segment_attention(out)
    default_blocked = set(float16.DEFAULT_OP_BLOCK_LIST)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(out.graph.value_info) + list(out.graph.input)}
    for n in out.graph.node:
        floats = any(types.get(i) == onnx.TensorProto.FLOAT for i in n.input)
        if n.op_type in default_blocked and n.name not in kept and floats:
            kept[n.name] = f"op {n.op_type} (no FP16 kernel; converter block list)"
    return out, kept


def reference_validation_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose custom nodes take and return FP32 through casts (their reference kernels are FP32-only).

    Only for validating an FP16 ``trt-plugin``/``trt-native`` model on CPU with
    ``OnnxRunner(reference_ops=True)``; deploy the original.
    """
    model = copy.deepcopy(model)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    nodes = []
    for n in model.graph.node:
        if n.domain in STANDARD_DOMAINS:
            nodes.append(n)
            continue
        after = []
        for k, name in enumerate(n.input):
            if name and types.get(name) == onnx.TensorProto.FLOAT16:
                cast = f"{name}__to_fp32_{n.name}"
                nodes.append(helper.make_node("Cast", [name], [cast], name=cast, to=onnx.TensorProto.FLOAT))
                n.input[k] = cast
        for k, name in enumerate(n.output):
            if types.get(name) == onnx.TensorProto.FLOAT16:
                raw = f"{name}__fp32"
                after.append(helper.make_node("Cast", [raw], [name], name=f"{raw}_to_fp16", to=onnx.TensorProto.FLOAT16))
                n.output[k] = raw
        nodes.append(n)
        nodes.extend(after)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


FP16_LARGEST = 65504.0
HEADROOM_OPS = ("LayerNormalization", "Softmax", "Pow", "Gemm", "MatMul", "Add")


def fp16_headroom(model: onnx.ModelProto, reader, lowering: str = "dense", progress: bool = False,
                  threads: int | None = None) -> dict[str, dict]:
    """How close FP32 activations come to FP16's limits, per op type, measured on ``reader``'s packs.

    For each op type of :data:`HEADROOM_OPS`: the largest ``|x|`` entering any such node (first input),
    and whether FP16 overflows on it (``|x| > 65504``) or on the squares a LayerNorm variance (or the
    GELU cube, for ``Pow``) computes in FP16 arithmetic (``|x|^2`` or ``|x|^3 > 65504``). For
    ``Softmax`` the largest score (the masked fill at the low end is not a value the model computes).
    """
    from navit_deploy.calibration.int8 import collect_ranges
    from navit_deploy.runtime.onnx_runner import CUSTOM_DOMAINS

    model = copy.deepcopy(model)
    ensure_node_names(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(model.graph.value_info) + list(model.graph.input)}
    inits = {i.name for i in model.graph.initializer}
    by_op: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type in HEADROOM_OPS and n.input and n.input[0] not in inits and types.get(n.input[0]) == onnx.TensorProto.FLOAT:
            by_op.setdefault(n.op_type, []).append(n.input[0])
    tensors = sorted({t for ts in by_op.values() for t in ts})
    custom = CUSTOM_DOMAINS.get(lowering) if lowering != "dense" else None
    ranges = collect_ranges(model, reader, tensors, "minmax", custom, progress, threads)
    out = {}
    for op, ts in sorted(by_op.items()):
        worst, where = 0.0, ""
        for t in ts:
            lo, hi = ranges[t].range_value
            if op == "Softmax":  # the low end is the mask fill (-3.4e38, clamped to -1e4 in FP16): ignore it
                m = float(np.asarray(hi).max())
            else:
                m = float(max(np.abs(np.asarray(lo)).max(), np.abs(np.asarray(hi)).max()))
            if m >= worst:
                worst, where = m, t
        power = 2 if op == "LayerNormalization" else 3 if op == "Pow" else 1
        out[op] = {"nodes": len(ts), "max_abs": round(worst, 4), "tensor": where,
                   "overflow": worst > FP16_LARGEST, "power": power, "power_overflow": worst ** power > FP16_LARGEST}
    return out
