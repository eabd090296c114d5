"""The table of attention lowerings: what each emits, where it runs, and how it is translated to ONNX.

Chosen in one place: the model's attention implementation for export and, for the packed op, the
onnxscript translation that turns ``navit::packed_attention`` into the target's node.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

from navit_deploy.compile.plugin_lib import ONNX_DOMAIN as PLUGIN_DOMAIN
from navit_deploy.compile.plugin_lib import PLUGIN_NAME as PLUGIN_OP
from navit_deploy.compile.plugin_lib import PLUGIN_NAMESPACE, PLUGIN_VERSION
from navit_deploy.errors import ConfigError

TRT_DOMAIN = "trt"
MS_DOMAIN = "com.microsoft"
SEGMENT_DOMAIN, SEGMENT_OP = "navit.lowering", "SegmentAttention"  # ort-mha's placeholder (export/segment_loop.py)


@dataclass(frozen=True)
class Lowering:
    """One way to express attention confined to each image in ONNX."""

    name: str
    description: str
    attention_impl: str  # the model attention implementation used while exporting
    custom_node: tuple[str, str] | None  # (domain, op_type) of the node it emits, if any
    providers: tuple[str, ...]  # ONNX Runtime providers that run it natively
    tensorrt: str  # which TensorRT consumes it
    opset_imports: dict[str, int] = field(default_factory=dict)


LOWERINGS: dict[str, Lowering] = {
    "dense": Lowering("dense", "standard ONNX ops; block-diagonal mask built in the graph from segment ids",
                      "dense-bias", None, ("cpu", "cuda"), "TensorRT 10.x/11.x, no plugin"),
    "trt-plugin": Lowering("trt-plugin", f"one {PLUGIN_OP} node per layer (our IPluginV3, packed Q/K/V + cu_seqlens)",
                           "packed-op", (PLUGIN_DOMAIN, PLUGIN_OP), (), "TensorRT 10.x/11.x with libnavit_packed_attention_plugin.so",
                           {PLUGIN_DOMAIN: 1}),
    "ort-packed": Lowering("ort-packed", "com.microsoft.PackedMultiHeadAttention (ONNX Runtime CUDA provider only)",
                           "packed-op", (MS_DOMAIN, "PackedMultiHeadAttention"), ("cuda",), "not for TensorRT",
                           {MS_DOMAIN: 1}),
    "ort-mha": Lowering("ort-mha", "a Loop over the pack's images (windows in windowed blocks), each one "
                        "com.microsoft.MultiHeadAttention at its own length (ONNX Runtime CPU and CUDA, fused kernels)",
                        "packed-op", (MS_DOMAIN, "MultiHeadAttention"), ("cpu", "cuda"), "not for TensorRT",
                        {SEGMENT_DOMAIN: 1}),
    "trt-native": Lowering("trt-native", "TensorRT 11 TRT_Attention with packed_nhd Q/K/V and INT32 cumulative lengths",
                           "packed-op", (TRT_DOMAIN, "TRT_Attention"), (), "TensorRT >= 11.1 (native IAttention)",
                           {TRT_DOMAIN: 1}),
}


def get_lowering(name: str) -> Lowering:
    """Validate a lowering name up front, suggesting the closest one on a typo."""
    if name not in LOWERINGS:
        close = difflib.get_close_matches(name, LOWERINGS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown attention lowering {name!r}{hint} Choose one of {sorted(LOWERINGS)}")
    return LOWERINGS[name]


def translation_table(lowering: Lowering, num_heads: int, head_dim: int) -> dict[Callable, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export``: how ``navit::packed_attention`` becomes ONNX."""
    if lowering.custom_node is None:
        return {}
    import torch

    from navit_deploy.export import onnx_translations as tr

    fn = {"trt-plugin": tr.plugin_translation, "ort-packed": tr.ort_packed_translation,
          "ort-mha": tr.ort_mha_translation,
          "trt-native": tr.trt_native_translation}[lowering.name]
    return {torch.ops.navit.packed_attention.default: fn(num_heads, head_dim)}
