"""``navit export``: NaViT -> ONNX with dynamic token and image axes and the chosen attention lowering."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from navit_deploy.console import without_torchvision_warning
from navit_deploy.compile.plugin_lib import SUPPORTED_HEAD_DIMS
from navit_deploy.errors import ArtifactMismatchError, ConfigError
from navit_deploy.export import ops  # noqa: F401  (registers navit::packed_attention and the packed-op impl)
from navit_deploy.export.lowerings import get_lowering, translation_table
from navit_deploy.export.segment_loop import expand_segment_attention
from navit_deploy.frontend import grid_coords
from navit_deploy.model.navit import NaViT
from navit_deploy.packing import build_pack
from navit_deploy.runtime.artifact import METADATA_KEY, DeploymentArtifact, write_sidecar
from navit_deploy.runtime.external_data import ARTIFACT_KEY, EXTERNAL_DATA_THRESHOLD, data_file_name, \
    needs_external_data, save_onnx

# Opset 20 has a single ``Gelu`` node (ONNX Runtime CPU/CUDA, TensorRT >= 10.0); 17-19 spell it out in
# eight elementwise ops (about 10% of ONNX Runtime CPU model time), for older consumers.
DEFAULT_OPSET = 20
OPSETS = range(17, 21)  # LayerNormalization needs 17


@dataclass(frozen=True)
class ExportResult:
    path: Path
    artifact: DeploymentArtifact
    seconds: float


def example_pack(model: NaViT, grids: tuple[tuple[int, int], ...] | None = None):
    """A small pack used to trace the model (its sizes are not baked in: axes are dynamic). A VLM tower's has
    grids of whole merge blocks, several windows per image and whole blocks of padding."""
    rng = np.random.default_rng(0)
    from navit_deploy.frontend import PreparedImage

    c = model.config
    tokens = c.output == "tokens"
    merge = c.frontend.merge_size if tokens else 1
    grids = grids or (((10, 14), (4, 4), (2, 6)) if tokens else ((5, 7), (3, 3), (1, 4)))
    items = [PreparedImage(rng.standard_normal((h * w, c.patch_dim)).astype(np.float32),
                           grid_coords(h, w, merge), (h, w), (w, h), (w, h)) for h, w in grids]
    pad = merge * merge if tokens else 3
    return build_pack(items, list(range(len(items))), pack_len=sum(h * w for h, w in grids) + pad, windows=c.windows)


def export_onnx(model: NaViT, out: str | Path, *, lowering: str = "dense", weights_sha256: str = "",
                pack_len: int = 1024, max_images: int = 64, opset: int = DEFAULT_OPSET,
                window_slots: bool = True, external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> ExportResult:
    """Export ``model`` to ``out`` and write the artifact metadata + sidecar.

    ``out`` is one self-contained .onnx unless the weights exceed ``external_data_threshold`` bytes (protobuf
    files stop at 2 GB): then they go to ONE file beside it, ``<out name>.data`` (ONNX external data, location
    relative to the model), named in the artifact's ``extra["external_data"]``; keep the two files together.

    ``window_slots``: with the dense lowering, windowed blocks compute each window in a fixed slot (the default)
    rather than with a mask over the whole pack (kept for measuring what the slots save)."""
    low = get_lowering(lowering)
    if opset not in OPSETS:
        raise ConfigError(f"ONNX opset {opset} is not supported; choose {OPSETS.start}-{OPSETS.stop - 1} "
                          f"(default {DEFAULT_OPSET}; TensorRT 10 parses up to 20)")
    cfg = model.config
    if low.name == "trt-plugin" and cfg.head_dim not in SUPPORTED_HEAD_DIMS:
        raise ConfigError(f"the NavitPackedAttention plugin supports head dims {SUPPORTED_HEAD_DIMS}; this model's "
                          f"head dim is {cfg.head_dim} ({cfg.heads} heads). Export with --attention dense (any "
                          "TensorRT) or trt-native (TensorRT >= 11.1) instead")
    start = time.time()
    model = model.eval().set_attention(low.attention_impl, window_slots=window_slots)
    pack = example_pack(model)
    args = tuple(torch.from_numpy(a) for a in pack.model_inputs().values())
    images = torch.export.Dim("images", min=1, max=1 << 16)
    if cfg.output == "tokens":  # whole merge blocks: the merger reshapes tokens into blocks
        tokens = cfg.frontend.merge_size ** 2 * torch.export.Dim("blocks", min=1, max=1 << 18)
    else:
        tokens = torch.export.Dim("tokens", min=2, max=1 << 20)
    dynamic: tuple[dict[int, object], ...] = ({0: tokens}, {0: tokens}, {0: tokens}, {0: images + 1})
    if cfg.windowed:
        dynamic += ({0: tokens}, {0: torch.export.Dim("windows", min=1, max=1 << 18) + 1})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), without_torchvision_warning():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=dynamic, input_names=list(cfg.inputs),
                                    output_names=list(cfg.outputs), opset_version=opset,
                                    custom_translation_table=translation_table(low, cfg.heads, cfg.head_dim),
                                    report=False, verbose=False)
    proto = program.model_proto
    _finalize(proto, low.name)
    unit = cfg.frontend.tokens_per_merged_token if cfg.output == "tokens" else 1
    artifact = DeploymentArtifact(frontend=cfg.frontend, labels=cfg.label_names(), lowering=low.name, precision="fp32",
                                  weights_sha256=weights_sha256, dim=cfg.dim, num_heads=cfg.heads,
                                  head_dim=cfg.head_dim, pack_len=-(-pack_len // unit) * unit, max_images=max_images,
                                  opset=opset, outputs=cfg.outputs, family=cfg.family,
                                  output_kind=cfg.output, inputs=cfg.inputs,
                                  window=cfg.window_merged, token_dim=cfg.out_dim if cfg.output == "tokens" else 0,
                                  extra={"window_slots": bool(window_slots and cfg.windowed and low.name == "dense")}
                                  if cfg.windowed else {})
    if needs_external_data(proto, external_data_threshold):
        artifact = artifact.with_(extra={**artifact.extra, ARTIFACT_KEY: data_file_name(out)})
    set_metadata(proto, artifact)
    save_onnx(proto, out, external_data_threshold)
    check_model(out)
    write_sidecar(out, artifact)
    return ExportResult(out, artifact, time.time() - start)


def set_metadata(proto: onnx.ModelProto, artifact: DeploymentArtifact) -> None:
    """Store the artifact description in the model's metadata (replacing an older one)."""
    keep = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    proto.metadata_props.add(key=METADATA_KEY, value=artifact.to_json())
    proto.producer_name = "navit-deploy"


def _finalize(proto: onnx.ModelProto, lowering: str) -> None:
    """Readable dynamic dim names; distinct query/kv length tensors for TRT_Attention."""
    names = {"cu_seqlens": "images_plus_1", "window_cu_seqlens": "windows_plus_1"}
    for vi in proto.graph.input:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = names.get(vi.name, "tokens")
    for vi in proto.graph.output:
        dim = vi.type.tensor_type.shape.dim[0]
        dim.dim_param = "blocks" if vi.name == "tokens" else "images"
    if lowering == "ort-mha":
        expand_segment_attention(proto)
    if lowering == "trt-native":
        # TensorRT requires query_lengths and kv_lengths to be different tensors.
        for i, node in enumerate(list(proto.graph.node)):
            if node.op_type == "TRT_Attention" and len(node.input) >= 6 and node.input[4] == node.input[5]:
                copy = f"{node.name or 'trt_attention'}_{i}_kv_lengths"
                proto.graph.node.insert(list(proto.graph.node).index(node),
                                        onnx.helper.make_node("Identity", [node.input[4]], [copy], name=copy + "_copy"))
                node.input[5] = copy


def check_model(path: str | Path) -> None:
    """ONNX checker plus strict shape inference on the saved file."""
    try:
        onnx.checker.check_model(str(path), full_check=False)
        onnx.shape_inference.infer_shapes_path(str(path), strict_mode=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ArtifactMismatchError(f"{path}: exported model fails the ONNX checker ({exc})") from exc
