"""ONNX operator schemas for the custom nodes our lowerings emit, registered with ``onnx.defs`` once.

Registration lets the exporter build the nodes and the ONNX checker validate their inputs and attributes.
The schemas state exactly the node forms documented in plugins/packed_attention/README.md, ONNX
Runtime's contrib-op documentation (PackedMultiHeadAttention), the ort-mha lowering's placeholder and TensorRT's custom-op schemas
(TRT_Attention).
"""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema

from navit_deploy.export.lowerings import MS_DOMAIN, PLUGIN_DOMAIN, PLUGIN_OP, SEGMENT_DOMAIN, SEGMENT_OP, TRT_DOMAIN

_F = ["tensor(float)", "tensor(float16)"]
_A = OpSchema.AttrType


def _param(name: str, type_str: str, optional: bool = False) -> OpSchema.FormalParameter:
    option = OpSchema.FormalParameterOption.Optional if optional else OpSchema.FormalParameterOption.Single
    return OpSchema.FormalParameter(name, type_str, "", param_option=option)


SCHEMAS = [
    OpSchema(PLUGIN_OP, PLUGIN_DOMAIN, 1, doc="Packed variable-length attention (navit TensorRT plugin).",
             inputs=[_param("q", "T"), _param("k", "T"), _param("v", "T"), _param("cu_seqlens", "tensor(int32)")],
             outputs=[_param("out", "T")], type_constraints=[("T", _F, "")],
             attributes=[OpSchema.Attribute("num_heads", _A.INT, "", required=True),
                         OpSchema.Attribute("head_dim", _A.INT, "", required=True),
                         OpSchema.Attribute("scale", _A.FLOAT, "", required=False),
                         OpSchema.Attribute("plugin_version", _A.STRING, "", required=False),
                         OpSchema.Attribute("plugin_namespace", _A.STRING, "", required=False)]),
    OpSchema("PackedMultiHeadAttention", MS_DOMAIN, 1, doc="ONNX Runtime contrib op (CUDA provider).",
             inputs=[_param("query", "T"), _param("key", "T", True), _param("value", "T", True),
                     _param("bias", "T", True), _param("token_offset", "tensor(int32)"),
                     _param("cumulative_sequence_length", "tensor(int32)"),
                     _param("attention_bias", "T", True)],
             outputs=[_param("output", "T")], type_constraints=[("T", _F, "")],
             attributes=[OpSchema.Attribute("num_heads", _A.INT, "", required=True),
                         OpSchema.Attribute("scale", _A.FLOAT, "", required=False),
                         OpSchema.Attribute("mask_filter_value", _A.FLOAT, "", required=False)]),
    OpSchema(SEGMENT_OP, SEGMENT_DOMAIN, 1, doc="Placeholder of the ort-mha lowering, replaced after export by a "
             "Loop of com.microsoft.MultiHeadAttention (navit_deploy.export.segment_loop).",
             inputs=[_param("q", "T"), _param("k", "T"), _param("v", "T"), _param("cu_seqlens", "tensor(int32)")],
             outputs=[_param("out", "T")], type_constraints=[("T", _F, "")],
             attributes=[OpSchema.Attribute("num_heads", _A.INT, "", required=True),
                         OpSchema.Attribute("scale", _A.FLOAT, "", required=False)]),
    OpSchema("TRT_Attention", TRT_DOMAIN, 1, doc="TensorRT 11 native attention (IAttention).",
             inputs=[_param("Q", "T"), _param("K", "T"), _param("V", "T"), _param("attn_mask", "M", True),
                     _param("query_lengths", "tensor(int32)", True), _param("kv_lengths", "tensor(int32)", True)],
             outputs=[_param("Y", "T")],
             type_constraints=[("T", _F + ["tensor(bfloat16)"], ""), ("M", _F + ["tensor(bool)"], "")],
             attributes=[OpSchema.Attribute("query_form", _A.STRING, "", required=False),
                         OpSchema.Attribute("kv_form", _A.STRING, "", required=False),
                         OpSchema.Attribute("causal_kind", _A.STRING, "", required=False),
                         OpSchema.Attribute("TRT_decomposable", _A.INT, "", required=False),
                         OpSchema.Attribute("TRT_normalization_op", _A.STRING, "", required=False),
                         OpSchema.Attribute("nb_rank", _A.INT, "", required=False)]),
]


def register_schemas() -> None:
    """Register the custom schemas with ``onnx.defs`` (idempotent)."""
    for schema in SCHEMAS:
        if not onnx.defs.has(schema.name, schema.since_version, schema.domain):
            onnx.defs.register_schema(schema)
