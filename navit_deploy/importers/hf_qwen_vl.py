"""Hugging Face Qwen2.5-VL and Qwen2-VL vision towers -> the project's NaViT (output: merged visual tokens).

A pair of pure functions, as every importer: :func:`detect` from the files, :func:`convert` to a model
config (front end included) and a state dict. Reads the directory of a whole VLM (``config.json`` with
``model_type`` ``qwen2_5_vl`` / ``qwen2_vl`` and its ``vision_config``; keys ``model.visual.*`` as
transformers 5 saves them, or ``visual.*`` as the published checkpoints have them; the language model is
never read) or of a vision tower alone (``model_type`` ``qwen2_5_vl_vision`` / ``qwen2_vl_vision``, keys
unprefixed), single file or sharded, with its ``preprocessor_config.json``.

What the conversion has to get right (each checked against transformers by a test that makes the mistake):

* patch embedding: a bias-free Conv3d over ``(c, t, py, px)`` whose kernel equals its stride, so one linear
  with the weight reshaped ``[dim, c*t*p*p]``; the front end flattens patches in that same order.
* 2D rotary embedding from each token's (row, col) (``pos_mode="rope2d"``): rows in the first quarter of
  the head dim's frequencies, columns in the second, repeated for ``rotate_half``'s other half.
* Qwen2.5-VL: RMSNorm (eps 1e-6), gated SiLU MLP with biases, window attention in every block except
  ``fullatt_block_indexes`` (windows of ``window_size`` pixels). Qwen2-VL: LayerNorm, quick-GELU MLP
  (fc1/fc2), full attention everywhere.
* the merger: its norm (``ln_q``, eps 1e-6) on each token, then an MLP over each 2x2 merge block's four
  contiguous tokens to ``out_hidden_size`` (Qwen2-VL: ``hidden_size``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from navit_deploy.errors import CheckpointError, ConfigError
from navit_deploy.frontend.config import FrontendConfig
from navit_deploy.importers.base import (PREPROCESSOR, ImportedModel, load_tensors, processor_pixels, read_json,
                                         require, safetensors_keys, weight_files, weights_digest)
from navit_deploy.model.config import NaViTConfig

FULL_TYPES = ("qwen2_5_vl", "qwen2_vl")
VISION_TYPES = ("qwen2_5_vl_vision", "qwen2_vl_vision")
PREFIXES = ("model.visual.", "visual.", "")
MAX_GRID = 1 << 14  # rotary positions: no table bounds the grid
_ACTS = {"silu": "silu", "quick_gelu": "quick", "gelu": "exact", "gelu_pytorch_tanh": "tanh"}
# transformers' Qwen2_5_VLVisionConfig / Qwen2VLVisionConfig defaults
_DEFAULTS_25 = {"depth": 32, "hidden_size": 3584, "hidden_act": "silu", "intermediate_size": 3420, "num_heads": 16,
                "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                "window_size": 112, "out_hidden_size": 3584, "fullatt_block_indexes": [7, 15, 23, 31]}
_DEFAULTS_2 = {"depth": 32, "embed_dim": 1280, "hidden_size": 3584, "hidden_act": "quick_gelu", "mlp_ratio": 4,
               "num_heads": 16, "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}


def _model_type(src: Path) -> str | None:
    cfg = src / "config.json"
    if not cfg.is_file():
        return None
    t = read_json(cfg).get("model_type")
    return t if t in FULL_TYPES + VISION_TYPES else None


def detect(src: str | Path) -> bool:
    """A directory with a Qwen2-VL / Qwen2.5-VL (or vision tower) ``config.json`` and safetensors weights."""
    try:
        return _model_type(Path(src)) is not None and bool(weight_files(Path(src)))
    except CheckpointError:
        return False


def variant(cfg: dict[str, Any]) -> str:
    """``"qwen2.5-vl"`` or ``"qwen2-vl"``."""
    return "qwen2.5-vl" if str(cfg.get("model_type", "")).startswith("qwen2_5_vl") else "qwen2-vl"


def vision_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The vision tower's config with transformers' defaults filled in (``num_heads``/``depth``/``in_channels``
    also read under their aliases; the published configs say ``in_chans``)."""
    vc = dict(cfg.get("vision_config") or {}) if cfg.get("model_type") in FULL_TYPES else dict(cfg)
    for alias, name in (("num_attention_heads", "num_heads"), ("num_hidden_layers", "depth"), ("in_chans", "in_channels")):
        if alias in vc and name not in vc:
            vc[name] = vc[alias]
    return {**(_DEFAULTS_25 if variant(cfg) == "qwen2.5-vl" else _DEFAULTS_2), **vc}


def _pixels(pre: dict[str, Any]) -> tuple[int, int]:
    size = pre.get("size") or {}
    if not isinstance(size, dict) or (size and not {"shortest_edge", "longest_edge"} <= set(size)):
        # transformers refuses such a file too ("size dict must contain 'shortest_edge' and 'longest_edge'")
        raise CheckpointError(f"{PREPROCESSOR}: 'size' must hold 'shortest_edge' and 'longest_edge' (min and max "
                              f"pixels), got {size!r}")
    lo = pre.get("min_pixels", size.get("shortest_edge", 56 * 56))
    hi = pre.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280))
    return int(lo), int(hi)


def frontend_config(pre: dict[str, Any], vision_cfg: dict[str, Any]) -> FrontendConfig:
    """``Qwen2VLImageProcessor``'s preprocessing as a front-end config: ``smart_resize`` (sides multiples of
    patch x merge, pixels within ``[min_pixels, max_pixels]``), PIL resampling, rescale and CLIP mean/std from
    the file, the temporal patch of a still image repeated, merge blocks contiguous; EXIF transpose then
    ``convert("RGB")`` as ``transformers.image_utils.load_image``; no JPEG draft decoding (it changes pixels)."""
    vc = vision_cfg
    for key, name in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size"),
                      ("temporal_patch_size", "temporal_patch_size")):
        if key in pre and int(pre[key]) != int(vc[name]):
            raise CheckpointError(f"{PREPROCESSOR} has {key} {pre[key]}, the model's config {vc[name]}")
    pixels = processor_pixels(pre, resample=3, mean=[0.48145466, 0.4578275, 0.40821073],  # CLIP's mean/std
                              std=[0.26862954, 0.26130258, 0.27577711],
                              resize_why="Qwen-VL images must be resized to whole merge blocks")
    if int(vc["in_channels"]) != 3:
        raise ConfigError(f"Qwen-VL with {vc['in_channels']} channels is not supported (RGB only)")
    lo, hi = _pixels(pre)
    return FrontendConfig(patch_size=int(vc["patch_size"]), channels=3, budget="pixels", min_pixels=lo, max_pixels=hi,
                          max_grid=MAX_GRID, temporal_patch_size=int(vc["temporal_patch_size"]),
                          merge_size=int(vc["spatial_merge_size"]), **pixels)


def navit_config(cfg: dict[str, Any], frontend: FrontendConfig) -> NaViTConfig:
    """The NaViT options that express the vision tower of ``cfg`` (a whole VLM's config or the tower's)."""
    vc, kind = vision_config(cfg), variant(cfg)
    act = _ACTS.get(vc["hidden_act"])
    if act is None:
        raise ConfigError(f"Qwen-VL hidden_act {vc['hidden_act']!r} is not supported ({sorted(_ACTS)})")
    rope = vc.get("rope_parameters") or {}
    theta = float(rope.get("rope_theta", vc.get("rope_theta", 10000.0)))
    heads, depth = int(vc["num_heads"]), int(vc["depth"])
    common = dict(depth=depth, heads=heads, num_classes=0, pos_mode="rope2d", rope_theta=theta, qk_norm="none",
                  pool_heads=heads, norm_eps=1e-6, gelu=act, patch_norm_out=False, patch_bias=False,
                  head_norm=False, embedding="pooled", output="tokens", frontend=frontend)
    if kind == "qwen2.5-vl":
        dim = int(vc["hidden_size"])
        return NaViTConfig(dim=dim, mlp_dim=int(vc["intermediate_size"]), norm="rmsnorm", mlp="gated",
                           window_size=int(vc["window_size"]), fullatt_blocks=tuple(vc["fullatt_block_indexes"]),
                           out_dim=int(vc["out_hidden_size"]), family="qwen-vl", **common)
    dim = int(vc["embed_dim"])
    return NaViTConfig(dim=dim, mlp_dim=int(dim * float(vc["mlp_ratio"])), norm="layernorm", mlp="plain",
                       out_dim=int(vc["hidden_size"]), family="qwen-vl", **common)


def _prefix(keys: list[str]) -> str:
    for p in PREFIXES:
        if f"{p}patch_embed.proj.weight" in keys:
            return p
    raise CheckpointError("no Qwen-VL vision tower in the weights (no 'visual.patch_embed.proj.weight', "
                          "'model.visual.patch_embed.proj.weight' or 'patch_embed.proj.weight')")


def filter_state_dict(src: dict[str, Any], cfg: NaViTConfig) -> dict[str, Any]:
    """Remap a Qwen-VL vision state dict (prefix stripped) to NaViT's keys; a pure function of its inputs."""
    w = src["patch_embed.proj.weight"]
    if w.ndim != 5 or w.shape[0] != cfg.dim or int(w[0].numel()) != cfg.patch_dim:
        raise CheckpointError(f"patch embedding of shape {tuple(w.shape)} is not [{cfg.dim}, C, T, p, p] with "
                              f"C*T*p*p = {cfg.patch_dim}")
    out: dict[str, Any] = {"patch_embed.proj.weight": w.reshape(cfg.dim, -1)}  # columns (c, t, py, px)
    norm_params = ("weight",) if cfg.norm == "rmsnorm" else ("weight", "bias")
    mlp = (("mlp.gate", "mlp.gate_proj"), ("mlp.up", "mlp.up_proj"), ("mlp.down", "mlp.down_proj")) \
        if cfg.mlp == "gated" else (("mlp.0", "mlp.fc1"), ("mlp.2", "mlp.fc2"))
    for i in range(cfg.depth):
        s = f"blocks.{i}."
        for ours, theirs in (("attn.qkv", "attn.qkv"), ("attn.proj", "attn.proj")) + mlp:
            for n in ("weight", "bias"):
                out[f"{s}{ours}.{n}"] = src[f"{s}{theirs}.{n}"]
        for norm in ("norm1", "norm2"):
            for n in norm_params:
                out[f"{s}{norm}.{n}"] = src[f"{s}{norm}.{n}"]
    for n in norm_params:
        out[f"merger.norm.{n}"] = src[f"merger.ln_q.{n}"]
    for layer in ("0", "2"):
        for n in ("weight", "bias"):
            out[f"merger.mlp.{layer}.{n}"] = src[f"merger.mlp.{layer}.{n}"]
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def needed_keys(cfg: NaViTConfig) -> list[str]:
    norm = ("weight",) if cfg.norm == "rmsnorm" else ("weight", "bias")
    mlp = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj") if cfg.mlp == "gated" else ("mlp.fc1", "mlp.fc2")
    keys = ["patch_embed.proj.weight"] + [f"merger.ln_q.{n}" for n in norm]
    keys += [f"merger.mlp.{l}.{n}" for l in ("0", "2") for n in ("weight", "bias")]
    for i in range(cfg.depth):
        keys += [f"blocks.{i}.{m}.{n}" for m in ("attn.qkv", "attn.proj") + mlp for n in ("weight", "bias")]
        keys += [f"blocks.{i}.{m}.{n}" for m in ("norm1", "norm2") for n in norm]
    return keys


def describe(src: str | Path) -> NaViTConfig:
    """The model config (front end included) from ``config.json`` and ``preprocessor_config.json``."""
    src = Path(src)
    cfg = read_json(src / "config.json")
    pre = read_json(src / PREPROCESSOR) if (src / PREPROCESSOR).is_file() else {}
    return navit_config(cfg, frontend_config(pre, vision_config(cfg)))


def convert(src: str | Path) -> ImportedModel:
    """Read a Qwen-VL directory's vision tower into the project's model (see the module docstring)."""
    src = Path(src)
    cfg = describe(src)
    prefix = _prefix(safetensors_keys(src))
    raw = load_tensors(src, lambda k: k.startswith(prefix) and (prefix != "" or not k.startswith(("model.", "lm_head"))))
    state = {k[len(prefix):]: v for k, v in raw.items()}
    require(state, needed_keys(cfg), src)
    out = filter_state_dict(state, cfg)
    notes = [f"{variant(read_json(src / 'config.json'))} vision tower only (keys '{prefix}*'); output: merged visual "
             f"tokens [n/{cfg.frontend.merge_size ** 2}, {cfg.out_dim}] per image in the model's order"]
    if not (src / PREPROCESSOR).is_file():
        notes.append(f"no {PREPROCESSOR}: transformers' defaults (min/max pixels, CLIP mean/std) are used")
    return ImportedModel(cfg, out, "qwen-vl", src, weights_digest(weight_files(src)), notes)
