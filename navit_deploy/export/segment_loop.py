"""The ``ort-mha`` lowering's graph pass: attention within each segment as a ``Loop`` over segments, each step one
``com.microsoft.MultiHeadAttention`` on that segment alone.

Export emits a placeholder ``navit.lowering::SegmentAttention(q, k, v, cu_seqlens)`` per layer (``q, k, v
[T, H*D]``, ``cu_seqlens [B+1]`` int32; attributes ``num_heads``, ``scale``); :func:`expand_segment_attention`
replaces each with::

    Loop over i < B:  seq.append(MultiHeadAttention(q[s_i:e_i], k[s_i:e_i], v[s_i:e_i]))   # no mask
    out = Pad(ConcatFromSequence(seq), rows cu_seqlens[-1] .. T -> 0)

so every segment (an image, or a window of a windowed block) is computed at its own length with ONNX Runtime's
fused kernel (CPU and CUDA providers): no ``T x T`` mask over the pack, and no padding of short segments to the
longest one. Measured on 2 CPU cores, 4 heads of 80 (README, "Attention lowerings"): one 3,038-token image 34 ms against
55 ms for the dense lowering's masked ops; four images of 1,500-238 tokens 12 ms against 48 ms. A step costs
about 40 us of its own, which is what a pack of many thumbnails pays.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from navit_deploy.export.lowerings import MS_DOMAIN, SEGMENT_DOMAIN, SEGMENT_OP

NODE_PREFIX = "segment_attention_"


def _i64(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=name,
                            value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values))


def _loop_nodes(node: onnx.NodeProto, tag: str) -> list[onnx.NodeProto]:
    """The nodes replacing one placeholder; every value name carries ``tag`` (unique per placeholder)."""
    q, k, v, cu = node.input
    (out,) = node.output
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    n = lambda name: f"{tag}/{name}"  # noqa: E731
    body = [
        _i64(n("b_zero"), [0]), _i64(n("b_one"), [1]),
        helper.make_node("Unsqueeze", [n("i"), n("b_zero")], [n("i1")]),
        helper.make_node("Add", [n("i1"), n("b_one")], [n("i2")]),
        helper.make_node("Slice", [n("cu64"), n("i1"), n("i2")], [n("start")]),
        helper.make_node("Add", [n("i2"), n("b_one")], [n("i3")]),
        helper.make_node("Slice", [n("cu64"), n("i2"), n("i3")], [n("end")]),
    ]
    for name in ("q", "k", "v"):  # the body reads the Identity copies below (outer scope)
        body += [helper.make_node("Slice", [n(name + "_in"), n("start"), n("end")], [n(name + "_rows")]),
                 helper.make_node("Unsqueeze", [n(name + "_rows"), n("b_zero")], [n(name + "_3d")])]
    body += [
        helper.make_node("MultiHeadAttention", [n("q_3d"), n("k_3d"), n("v_3d")], [n("o_3d")], domain=MS_DOMAIN,
                         name=n("mha"), num_heads=int(attrs["num_heads"]), scale=float(attrs["scale"])),
        helper.make_node("Squeeze", [n("o_3d"), n("b_zero")], [n("o_rows")]),
        helper.make_node("SequenceInsert", [n("seq_in"), n("o_rows")], [n("seq_out")]),
        helper.make_node("Identity", [n("cond_in")], [n("cond_out")]),
    ]
    graph = helper.make_graph(
        _named(body, f"{tag}/body"), n("body"),
        [helper.make_tensor_value_info(n("i"), TensorProto.INT64, []),
         helper.make_tensor_value_info(n("cond_in"), TensorProto.BOOL, []),
         onnx.ValueInfoProto(name=n("seq_in"))],
        [helper.make_tensor_value_info(n("cond_out"), TensorProto.BOOL, []),
         onnx.ValueInfoProto(name=n("seq_out"))])
    # Identity copies of q, k, v (the values the body reads from the outer scope): the placeholder's inputs stay
    # readable from the expanded nodes (see contract_segment_attention).
    return [
        *(helper.make_node("Identity", [x], [n(name + "_in")]) for x, name in ((q, "q"), (k, "k"), (v, "v"))),
        helper.make_node("Cast", [cu], [n("cu64")], to=TensorProto.INT64),
        _i64(n("zero"), [0]), _i64(n("one"), [1]), _i64(n("last"), [-1]), _i64(n("big"), [2**62]),
        helper.make_node("Shape", [n("cu64")], [n("b_plus_1")]),
        helper.make_node("Sub", [n("b_plus_1"), n("one")], [n("b")]),
        helper.make_node("Squeeze", [n("b"), n("zero")], [n("trips")]),
        # The sequence starts with q's zero-row slice: it carries q's dtype (fp32 or fp16) and adds no rows.
        helper.make_node("Slice", [q, n("zero"), n("zero")], [n("no_rows")]),
        helper.make_node("SequenceConstruct", [n("no_rows")], [n("seq0")]),
        helper.make_node("Loop", [n("trips"), "", n("seq0")], [n("seq")], name=n("loop"), body=graph),
        helper.make_node("ConcatFromSequence", [n("seq")], [n("valid_rows")], axis=0),
        helper.make_node("Slice", [n("cu64"), n("last"), n("big")], [n("valid")]),
        helper.make_node("Shape", [q], [n("t")], start=0, end=1),
        helper.make_node("Sub", [n("t"), n("valid")], [n("pad_rows")]),
        helper.make_node("Concat", [n("zero"), n("zero"), n("pad_rows"), n("zero")], [n("pads")], axis=0),
        helper.make_node("Pad", [n("valid_rows"), n("pads")], [out], name=n("pad")),
    ]


def contract_segment_attention(proto: onnx.ModelProto) -> int:
    """The inverse of :func:`expand_segment_attention`: each expanded group back to its placeholder (in place).

    For passes that rewrite types but not a ``Loop``'s body consistently (FP16 conversion): contract, convert with
    the placeholders kept in FP32, expand again."""
    graph = proto.graph
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if is_segment_attention(node):
            groups.setdefault(node.name.split("/", 1)[0], []).append(node)
    if not groups:
        return 0
    out: list[onnx.NodeProto] = []
    for node in graph.node:
        if not is_segment_attention(node):
            out.append(node)
            continue
        tag = node.name.split("/", 1)[0]
        nodes = groups.pop(tag, None)
        if nodes is None:  # the group is already replaced
            continue
        by_out = {o: x for x in nodes for o in x.output}
        q, k, v = (by_out[f"{tag}/{name}_in"].input[0] for name in ("q", "k", "v"))
        cu = by_out[f"{tag}/cu64"].input[0]
        loop = next(x for x in nodes if x.op_type == "Loop")
        mha = next(x for x in loop.attribute[0].g.node if x.op_type == "MultiHeadAttention")
        attrs = {a.name: helper.get_attribute_value(a) for a in mha.attribute}
        pad = next(x for x in nodes if x.op_type == "Pad")
        out.append(helper.make_node(SEGMENT_OP, [q, k, v, cu], list(pad.output), name=tag, domain=SEGMENT_DOMAIN,
                                    num_heads=int(attrs["num_heads"]), scale=float(attrs["scale"])))
    del graph.node[:]
    graph.node.extend(out)
    inner = [vi for vi in graph.value_info if not vi.name.startswith(NODE_PREFIX)]  # the groups' own values
    del graph.value_info[:]
    graph.value_info.extend(inner)
    if not any(o.domain == SEGMENT_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(SEGMENT_DOMAIN, 1))
    return len([n for n in out if n.domain == SEGMENT_DOMAIN])


def _named(nodes: list[onnx.NodeProto], tag: str) -> list[onnx.NodeProto]:
    for i, node in enumerate(nodes):
        if not node.name:
            node.name = f"{tag}/{node.op_type}_{i}"
    return nodes


def is_segment_attention(node: onnx.NodeProto) -> bool:
    """A node of an expanded ``SegmentAttention`` (named ``segment_attention_<k>/...``)."""
    tag, sep, _ = node.name.partition("/")
    return bool(sep) and tag.startswith(NODE_PREFIX) and tag[len(NODE_PREFIX):].isdigit()


def expand_segment_attention(proto: onnx.ModelProto) -> int:
    """Replace every ``SegmentAttention`` placeholder of ``proto`` in place; returns how many were replaced."""
    graph = proto.graph
    nodes = list(graph.node)
    out: list[onnx.NodeProto] = []
    count = 0
    for node in nodes:
        if node.domain == SEGMENT_DOMAIN and node.op_type == SEGMENT_OP:
            tag = f"{NODE_PREFIX}{count}"
            out += _named(_loop_nodes(node, tag), tag)
            count += 1
        else:
            out.append(node)
    if count:
        del graph.node[:]
        graph.node.extend(out)
        keep = [o for o in proto.opset_import if o.domain != SEGMENT_DOMAIN]
        del proto.opset_import[:]
        proto.opset_import.extend(keep)
        if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return count
