"""Hugging Face SigLIP 2 (NaFlex) vision tower -> the project's NaViT.

A pair of pure functions, as every importer: :func:`detect` from the files, :func:`convert` to a model
config, a state dict and a front-end config. Reads either layout a user has on disk: the full
``Siglip2Model`` (``model_type: siglip2``, keys ``vision_model.*`` beside ``text_model.*``, ``logit_scale``,
``logit_bias``; the text tower is never loaded) or a vision-only ``Siglip2VisionModel.save_pretrained``
(``model_type: siglip2_vision_model``, keys ``embeddings.*``), single file or sharded.

What the conversion has to get exactly right (each checked by a test that makes the mistake):

* the patch vector: SigLIP 2 flattens a patch as ``(py, px, c)``; the project's front end as
  ``(c, py, px)``. The patch projection's columns are permuted here, so one front end serves every model.
* attention: ``q_proj``, ``k_proj``, ``v_proj`` stacked in that order into one ``qkv`` (rows q, k, v); the
  MAP head's ``nn.MultiheadAttention`` packs them the same way in ``in_proj_weight``.
* the MAP head's probe goes through the q projection: ``query = probe @ W_q^T + b_q`` is a constant,
  folded here into the pooling query.
* the 16x16 position table is resized to each image's grid with bilinear, antialiased weights
  (``pos_mode="resized"``, computed in the model as transformers does).
* GELU with the tanh approximation, LayerNorm eps from the config, embedding = ``pooler_output``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from navit_deploy.errors import CheckpointError, ConfigError
from navit_deploy.frontend.config import FrontendConfig
from navit_deploy.importers.base import (
    PREPROCESSOR,
    ImportedModel,
    load_tensors,
    processor_pixels,
    read_json,
    require,
    weight_files,
    weights_digest,
)
from navit_deploy.model.config import NaViTConfig

MODEL_TYPES = ("siglip2", "siglip2_vision_model")
RESIZED_MAX_GRID = 1 << 14
VISION_PREFIX = "vision_model."
_ACTS = {"gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu": "exact"}


def detect(src: str | Path) -> bool:
    """A directory with a SigLIP 2 ``config.json`` and safetensors weights."""
    cfg = Path(src) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return read_json(cfg).get("model_type") in MODEL_TYPES and bool(weight_files(Path(src)))
    except CheckpointError:
        return False


def vision_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The vision tower's config, with transformers' ``Siglip2VisionConfig`` defaults filled in."""
    vc = cfg.get("vision_config", {}) if cfg.get("model_type") == "siglip2" else cfg
    defaults = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                "num_channels": 3, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
                "num_patches": 256, "vision_use_head": True}
    return {**defaults, **(vc or {})}


def frontend_config(pre: dict[str, Any], vc: dict[str, Any]) -> FrontendConfig:
    """``Siglip2ImageProcessor``'s preprocessing as a front-end config: the NaFlex resize rule, PIL
    resampling, rescale and mean/std from the file, EXIF transpose then ``convert("RGB")`` as
    ``transformers.image_utils.load_image`` does, no JPEG draft decoding (it changes pixels)."""
    patch = int(pre.get("patch_size", vc["patch_size"]))
    if patch != int(vc["patch_size"]):
        raise CheckpointError(f"{PREPROCESSOR} has patch_size {patch}, the model {vc['patch_size']}")
    pixels = processor_pixels(pre, resample=2, mean=[0.5] * 3, std=[0.5] * 3,
                              resize_why="NaFlex images must be resized to whole patches")
    max_patches = int(pre.get("max_num_patches", 256))
    channels = int(vc["num_channels"])
    if channels != 3:
        raise ConfigError(f"SigLIP 2 with {channels} channels is not supported (RGB only)")
    # The position table is resized to any grid, so no grid side is out of range (max_grid only guards the
    # indexed tables of other families).
    return FrontendConfig(patch_size=patch, channels=3, budget="naflex", max_patches=max_patches,
                          max_grid=RESIZED_MAX_GRID, **pixels)


def navit_config(vc: dict[str, Any], frontend: FrontendConfig) -> NaViTConfig:
    """The NaViT options that express the SigLIP 2 vision tower."""
    act = _ACTS.get(vc["hidden_act"])
    if act is None:
        raise ConfigError(f"SigLIP 2 hidden_act {vc['hidden_act']!r} is not supported ({sorted(_ACTS)})")
    if not vc.get("vision_use_head", True):
        raise ConfigError("this SigLIP 2 vision tower has no MAP head (vision_use_head=false): it has no pooled "
                          "embedding to deploy")
    side = int(round(int(vc["num_patches"]) ** 0.5))
    if side * side != int(vc["num_patches"]):
        raise ConfigError(f"num_patches={vc['num_patches']} is not a square position table")
    dim, heads = int(vc["hidden_size"]), int(vc["num_attention_heads"])
    return NaViTConfig(dim=dim, depth=int(vc["num_hidden_layers"]), heads=heads, mlp_dim=int(vc["intermediate_size"]),
                       num_classes=0, pos_mode="resized", pos_table=side, qk_norm="none", pool_heads=heads,
                       norm_eps=float(vc["layer_norm_eps"]), gelu=act, patch_norm_out=False, head_norm=False,
                       embedding="pooled", family="siglip2", frontend=frontend)


def filter_state_dict(src: dict[str, Any], cfg: NaViTConfig) -> dict[str, Any]:
    """Remap a SigLIP 2 vision state dict (prefix stripped) to NaViT's keys; a pure function of its inputs."""
    import torch

    d, p, c = cfg.dim, cfg.frontend.patch_size, cfg.frontend.channels
    w = src["embeddings.patch_embedding.weight"]
    out: dict[str, Any] = {
        # columns (py, px, c) -> (c, py, px): the project's patch layout
        "patch_embed.proj.weight": w.reshape(d, p, p, c).permute(0, 3, 1, 2).reshape(d, c * p * p).contiguous(),
        "patch_embed.proj.bias": src["embeddings.patch_embedding.bias"],
        "pos_embed.table": src["embeddings.position_embedding.weight"],
        "norm.weight": src["post_layernorm.weight"], "norm.bias": src["post_layernorm.bias"],
    }
    for i in range(cfg.depth):
        s, o = f"encoder.layers.{i}.", f"blocks.{i}."
        att = s + "self_attn."
        out[o + "attn.qkv.weight"] = torch.cat([src[att + f"{n}_proj.weight"] for n in "qkv"], 0)
        out[o + "attn.qkv.bias"] = torch.cat([src[att + f"{n}_proj.bias"] for n in "qkv"], 0)
        for ours, theirs in (("attn.proj", "self_attn.out_proj"), ("norm1", "layer_norm1"), ("norm2", "layer_norm2"),
                             ("mlp.0", "mlp.fc1"), ("mlp.2", "mlp.fc2")):
            out[o + ours + ".weight"], out[o + ours + ".bias"] = src[s + theirs + ".weight"], src[s + theirs + ".bias"]
    in_w, in_b = src["head.attention.in_proj_weight"], src["head.attention.in_proj_bias"]
    probe = src["head.probe"].reshape(1, d)
    query = probe @ in_w[:d].T + in_b[:d]  # the probe's q projection, a constant
    out["pool.query"] = query.reshape(cfg.pool_heads, cfg.pool_head_dim)
    out["pool.kv.weight"], out["pool.kv.bias"] = in_w[d:].contiguous(), in_b[d:].contiguous()
    for ours, theirs in (("pool.proj", "head.attention.out_proj"), ("pool.norm", "head.layernorm"),
                         ("pool.mlp.0", "head.mlp.fc1"), ("pool.mlp.2", "head.mlp.fc2")):
        out[ours + ".weight"], out[ours + ".bias"] = src[theirs + ".weight"], src[theirs + ".bias"]
    return {k: v.float().contiguous() for k, v in out.items()}


def needed_keys(cfg: NaViTConfig) -> list[str]:
    keys = ["embeddings.patch_embedding.weight", "embeddings.patch_embedding.bias",
            "embeddings.position_embedding.weight", "post_layernorm.weight", "post_layernorm.bias", "head.probe",
            "head.attention.in_proj_weight", "head.attention.in_proj_bias"]
    for i in range(cfg.depth):
        s = f"encoder.layers.{i}."
        keys += [s + f"self_attn.{n}_proj.{t}" for n in ("q", "k", "v", "out") for t in ("weight", "bias")]
        keys += [s + f"{n}.{t}" for n in ("layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2") for t in ("weight", "bias")]
    keys += [f"head.{n}.{t}" for n in ("attention.out_proj", "layernorm", "mlp.fc1", "mlp.fc2") for t in ("weight", "bias")]
    return keys


def describe(src: str | Path) -> NaViTConfig:
    """The model config (front end included) from ``config.json`` and ``preprocessor_config.json``."""
    src = Path(src)
    vc = vision_config(read_json(src / "config.json"))
    pre = read_json(src / PREPROCESSOR) if (src / PREPROCESSOR).is_file() else {}
    return navit_config(vc, frontend_config(pre, vc))


def convert(src: str | Path) -> ImportedModel:
    """Read a SigLIP 2 directory into the project's model (see the module docstring)."""
    src = Path(src)
    cfg = describe(src)
    pre = (src / PREPROCESSOR).is_file()

    def vision(key: str) -> bool:
        return not key.startswith(("text_model.", "logit_"))

    raw = load_tensors(src, vision)
    state = {k.removeprefix(VISION_PREFIX): v for k, v in raw.items()}
    require(state, needed_keys(cfg), src)
    notes = [] if pre else [f"no {PREPROCESSOR}: the processor's defaults (max_num_patches 256, bilinear, mean/std "
                            "0.5) were used"]
    return ImportedModel(cfg, filter_state_dict(state, cfg), "siglip2", src, weights_digest(weight_files(src)), notes)
