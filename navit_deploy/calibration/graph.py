"""What the nodes of an exported NaViT graph are, so quantization can choose what stays in higher precision.

Every node is tagged with the PyTorch module it came from (the exporter's ``pkg.torch.onnx.name_scopes``
node metadata, e.g. ``blocks.3.attn.qkv`` or ``pool``; graphs without it fall back to the name of the
weight initializer a node reads, e.g. ``pool.kv.weight``) and with the *groups* it belongs to:

``attention-scores``
    MatMul / Gemm / Einsum nodes whose operands are *both* activations: ``Q @ K^T`` and ``P @ V`` of the
    ``dense`` lowering (inside ``scaled_dot_product_attention``) and the pooling einsum. Detected
    structurally (no constant operand), so it does not depend on node names.
``pool``
    The masked attention-pooling head (module ``pool``: ``kv``/``proj``/``mlp`` linears, score softmax,
    einsum).
``head``
    The classifier (modules ``head`` and ``head_norm``).
``patch-embed``
    The patch projection stem (module ``patch_embed``).
``norm`` / ``softmax``
    ``LayerNormalization`` (and the ReduceMean/Sqrt pieces of a decomposed one) / ``Softmax`` nodes.
``custom``
    Nodes of a non-standard domain (``navit.NavitPackedAttention``, ``trt.TRT_Attention``, ...).

A *keep* list (``--keep-fp32``) may name groups, op types (``Softmax``), module prefixes (``blocks.0``,
``pool.kv``) or node names (``node_Gemm_204``); :func:`match_keep` resolves it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import onnx

from navit_deploy.errors import ConfigError

LINEAR_OPS = frozenset({"MatMul", "Gemm"})
SCORE_OPS = frozenset({"MatMul", "Gemm", "Einsum"})
NORM_OPS = frozenset({"LayerNormalization", "ReduceMean", "Sqrt", "Reciprocal"})
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
GROUPS = ("attention-scores", "pool", "head", "patch-embed", "norm", "rms-norm", "softmax", "custom")
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearMatMul", "QLinearConv",
                           "MatMulInteger", "ConvInteger", "QGemm", "QAttention", "MatMulIntegerToFloat",
                           "DynamicQuantizeMatMul", "MatMulNBits"})
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_CLASSES_KEY = "pkg.torch.onnx.class_hierarchy"


def node_classes(node: onnx.NodeProto) -> tuple[str, ...]:
    """The PyTorch module classes a node was exported from, outermost first, by their short names (the
    exporter's ``class_hierarchy``; empty when the graph does not say)."""
    for p in node.metadata_props:
        if p.key == _CLASSES_KEY:
            try:
                classes = json.loads(p.value.replace("'", '"'))
            except json.JSONDecodeError:
                return ()
            return tuple(str(c).rsplit(".", 1)[-1] for c in classes[:-1])
    return ()


@dataclass(frozen=True)
class NodeInfo:
    """One node of the graph: its name, op type, source module and groups."""

    name: str
    op_type: str
    domain: str
    module: str
    groups: frozenset[str]
    has_constant_operand: bool


def constant_names(model: onnx.ModelProto) -> set[str]:
    """Names of tensors that are initializers or outputs of ``Constant`` nodes."""
    names = {i.name for i in model.graph.initializer}
    names.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    return names


def node_module(node: onnx.NodeProto, constants: set[str]) -> str:
    """The PyTorch module path a node was exported from ('' when unknown)."""
    for p in node.metadata_props:
        if p.key == _SCOPES_KEY:
            try:
                scopes = json.loads(p.value.replace("'", '"'))
            except json.JSONDecodeError:
                break
            # [..., module, sub.module, op_name]: the deepest module is the second to last entry
            mods = [s for s in scopes[:-1] if s and not s.startswith("_")]
            return mods[-1] if mods else ""
    for name in node.input:  # fallback: the weight it reads, e.g. "pool.kv.weight" -> "pool.kv"
        if name in constants and name.endswith((".weight", ".bias")):
            return name.rsplit(".", 1)[0]
    return ""


def _in_module(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def classify(model: onnx.ModelProto) -> list[NodeInfo]:
    """:class:`NodeInfo` for every node of the main graph, in graph order."""
    consts = constant_names(model)
    out = []
    for n in model.graph.node:
        module = node_module(n, consts)
        has_const = any(i in consts for i in n.input if i)
        groups = set()
        if n.op_type in SCORE_OPS and n.domain in STANDARD_DOMAINS and not has_const:
            groups.add("attention-scores")
        if _in_module(module, "pool"):
            groups.add("pool")
        if _in_module(module, "head") or _in_module(module, "head_norm"):
            groups.add("head")
        if _in_module(module, "patch_embed"):
            groups.add("patch-embed")
        if n.op_type in NORM_OPS:
            groups.add("norm")
        if "RMSNorm" in node_classes(n):  # Qwen2.5-VL's norms, decomposed: Pow, ReduceMean, Add, Sqrt, ...
            groups.update(("norm", "rms-norm"))
        if n.op_type == "Softmax":
            groups.add("softmax")
        if n.domain not in STANDARD_DOMAINS:
            groups.add("custom")
        out.append(NodeInfo(n.name, n.op_type, n.domain, module, frozenset(groups), has_const))
    return out


def match_keep(infos: Sequence[NodeInfo], keep: Iterable[str], known_op_types: Iterable[str] = ()) -> dict[str, str]:
    """``{node name: why it is kept}`` for the keep list ``keep`` (groups, op types, module prefixes, node names).

    An entry that matches nothing known raises :class:`ConfigError` (a typo should not silently
    quantize what the user meant to protect). Op types of ``known_op_types`` are accepted even when
    this graph has none (e.g. ``Softmax`` for a graph without one).
    """
    keep = list(keep)
    names = {i.name for i in infos}
    ops = {i.op_type for i in infos} | set(known_op_types)
    modules = {i.module for i in infos}
    kept: dict[str, str] = {}
    for k in keep:
        hit = False
        for i in infos:
            why = None
            if k in GROUPS and k in i.groups:
                why = f"group {k}"
            elif k == i.op_type:
                why = f"op {k}"
            elif k == i.name:
                why = "named"
            elif i.module and _in_module(i.module, k):
                why = f"module {k}"
            if why:
                hit = True
                kept.setdefault(i.name, why)
        if not hit and k not in GROUPS and k not in ops and k not in names and not any(_in_module(m, k) for m in modules if m):
            raise ConfigError(f"--keep-fp32 entry {k!r} matches no group ({', '.join(GROUPS)}), op type, module or node "
                              "of this graph")
    return kept


def quantization_state(model: onnx.ModelProto) -> str | None:
    """Why ``model`` is not a plain FP32 graph (``None`` if it is)."""
    ops = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS})
    if ops:
        return f"it already has quantized operators ({', '.join(ops)})"
    f16 = [i.name for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)]
    if f16:
        return f"it already has FP16 weights ({len(f16)} initializers, e.g. {f16[0]!r})"
    vi = [v.name for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
          if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16]
    if vi:
        return f"it already computes in FP16 (e.g. tensor {vi[0]!r})"
    return None
