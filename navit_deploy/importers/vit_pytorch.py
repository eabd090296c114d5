"""vit-pytorch's ``NaViT`` (lucidrains, ``vit_pytorch/na_vit.py``) -> the project's NaViT.

The directory holds the model's ``state_dict`` as ``model.safetensors`` and its constructor arguments as
``config.json``; a user writes them with::

    from safetensors.torch import save_file; import json
    save_file(model.state_dict(), "navit/model.safetensors"); json.dump(dict(image_size=256, patch_size=32, num_classes=1000, dim=1024, depth=6, heads=16, mlp_dim=2048), open("navit/config.json", "w"))

(the arguments the model was built with; ``dim_head`` and ``channels`` too when not the defaults). An
optional ``"preprocess"`` object in ``config.json`` gives the normalization the model was trained with
(``{"mean": [...], "std": [...]}``, default: pixels in [0, 1], as ``torchvision.transforms.ToTensor``) and
the token budget (``"max_patches"``, default: the whole position table). vit-pytorch has no processor of its
own, so the project's front end (native-aspect resize to the budget) feeds it.

What vit-pytorch's architecture needs, and how it maps (each checked against ``na_vit.py`` by a test):
LayerNorm without bias (its ``beta`` buffers are zero) and eps 1e-5; a LayerNorm on the raw patch, then the
projection, then a LayerNorm; no bias in q/k/v and the output projection; q and k L2-normalized per head,
times ``sqrt(dim_head)`` and a learned per-head gamma, and attention scale 1; exact GELU; separate row and
column position tables sized ``image_size / patch_size``; attention pooling with one learned query whose
normalized q projection is a constant (folded into the pooling query) and whose residual is added after the
output projection (folded into its bias); logits from LayerNorm then a bias-free linear. The embedding is
the pooled vector before that head (vit-pytorch's ``to_latent``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from navit_deploy.errors import CheckpointError, ConfigError
from navit_deploy.frontend.config import FrontendConfig
from navit_deploy.importers.base import ImportedModel, load_tensors, read_json, require, weight_files, weights_digest
from navit_deploy.model.config import NaViTConfig

REQUIRED_ARGS = ("image_size", "patch_size", "num_classes", "dim", "depth", "heads", "mlp_dim")
KNOWN_ARGS = set(REQUIRED_ARGS) | {"channels", "dim_head", "dropout", "emb_dropout", "token_dropout_prob", "preprocess"}
SIGNATURE_KEYS = ("to_patch_embedding.1.weight", "attn_pool_queries", "pos_embed_height", "pos_embed_width")
EPS = 1e-5  # F.layer_norm's default, which vit-pytorch's LayerNorm uses


def detect(src: str | Path) -> bool:
    """Constructor arguments in ``config.json`` and a state dict with vit-pytorch NaViT's tensors."""
    src = Path(src)
    if not (src / "config.json").is_file():
        return False
    try:
        args = read_json(src / "config.json")
        if not all(k in args for k in REQUIRED_ARGS):
            return False
        from navit_deploy.importers.base import safetensors_keys

        keys = set(safetensors_keys(src))
    except CheckpointError:
        return False
    return all(k in keys for k in SIGNATURE_KEYS)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def navit_config(args: dict[str, Any]) -> NaViTConfig:
    """The NaViT options that express vit-pytorch's NaViT built with ``args``."""
    unknown = sorted(set(args) - KNOWN_ARGS)
    if unknown:
        raise ConfigError(f"unknown vit-pytorch NaViT argument(s) {unknown}; expected {sorted(KNOWN_ARGS)}")
    h, w = _pair(args["image_size"])
    p = int(args["patch_size"])
    if h % p or w % p:
        raise ConfigError(f"image_size {h}x{w} is not divisible by patch_size {p} (vit-pytorch asserts this too)")
    rows, cols = h // p, w // p
    pre = dict(args.get("preprocess") or {})
    channels = int(args.get("channels", 3))
    if channels not in (1, 3):
        raise ConfigError(f"channels={channels} is not supported (1 or 3)")
    fe = FrontendConfig(patch_size=p, channels=channels, budget="max_patches",
                        max_patches=int(pre.pop("max_patches", rows * cols)), max_grid=min(rows, cols),
                        mean=tuple(float(x) for x in pre.pop("mean", [0.0] * channels)),
                        std=tuple(float(x) for x in pre.pop("std", [1.0] * channels)))
    if pre:
        raise ConfigError(f"unknown 'preprocess' key(s) {sorted(pre)}; expected mean, std, max_patches")
    dim, heads, dim_head = int(args["dim"]), int(args["heads"]), int(args.get("dim_head", 64))
    return NaViTConfig(dim=dim, depth=int(args["depth"]), heads=heads, dim_head=dim_head, mlp_dim=int(args["mlp_dim"]),
                       num_classes=int(args["num_classes"]), pos_mode="learned", pos_grid=(rows, cols),
                       qk_norm="l2", attn_scale=1.0, pool_heads=heads, pool_dim_head=dim_head, pool_k_norm="l2",
                       pool_scale=1.0, pool_mlp=False, norm_eps=EPS, norm_bias=False, qkv_bias=False,
                       proj_bias=False, gelu="exact", patch_norm_in=True, head_bias=False, embedding="pooled",
                       family="vit-pytorch", frontend=fe)


def _l2_norm(x: Any, gamma: Any) -> Any:
    """vit-pytorch's RMSNorm: ``F.normalize(x) * sqrt(d) * gamma``."""
    import torch.nn.functional as F

    return F.normalize(x, dim=-1) * math.sqrt(x.shape[-1]) * gamma


def filter_state_dict(src: dict[str, Any], cfg: NaViTConfig) -> dict[str, Any]:
    """Remap a vit-pytorch NaViT state dict to NaViT's keys; a pure function of its inputs."""
    import torch
    import torch.nn.functional as F

    betas = [k for k in src if k.endswith(".beta") and bool(torch.any(src[k] != 0))]
    if betas:
        raise CheckpointError(f"LayerNorm beta buffers are not zero ({betas[:3]}); vit-pytorch's NaViT keeps them "
                              "at zero, so this state dict is not one of its models")
    out: dict[str, Any] = {
        "patch_embed.norm_in.weight": src["to_patch_embedding.0.gamma"],
        "patch_embed.proj.weight": src["to_patch_embedding.1.weight"],
        "patch_embed.proj.bias": src["to_patch_embedding.1.bias"],
        "patch_embed.norm_out.weight": src["to_patch_embedding.2.gamma"],
        "pos_embed.row": src["pos_embed_height"], "pos_embed.col": src["pos_embed_width"],
        "norm.weight": src["transformer.norm.gamma"],
        "head_norm.weight": src["mlp_head.0.gamma"], "head.weight": src["mlp_head.1.weight"],
    }
    h, d = cfg.heads, cfg.head_dim
    for i in range(cfg.depth):
        a, f, o = f"transformer.layers.{i}.0.", f"transformer.layers.{i}.1.", f"blocks.{i}."
        out[o + "norm1.weight"] = src[a + "norm.gamma"]
        out[o + "attn.qkv.weight"] = torch.cat([src[a + "to_q.weight"], src[a + "to_kv.weight"]], 0)  # q, then k, v
        out[o + "attn.q_norm.gamma"] = src[a + "q_norm.gamma"].reshape(h, d)
        out[o + "attn.k_norm.gamma"] = src[a + "k_norm.gamma"].reshape(h, d)
        out[o + "attn.proj.weight"] = src[a + "to_out.0.weight"]
        out[o + "norm2.weight"] = src[f + "0.gamma"]
        out[o + "mlp.0.weight"], out[o + "mlp.0.bias"] = src[f + "1.weight"], src[f + "1.bias"]
        out[o + "mlp.2.weight"], out[o + "mlp.2.bias"] = src[f + "4.weight"], src[f + "4.bias"]
    # Attention pooling: the query is a constant, so its LayerNorm, q projection and q norm are folded in.
    queries = src["attn_pool_queries"]
    q = F.linear(F.layer_norm(queries, (cfg.dim,), src["attn_pool.norm.gamma"], None, EPS), src["attn_pool.to_q.weight"])
    out["pool.query"] = _l2_norm(q.reshape(h, d), src["attn_pool.q_norm.gamma"].reshape(h, d))
    out["pool.kv.weight"] = src["attn_pool.to_kv.weight"]
    out["pool.k_norm.gamma"] = src["attn_pool.k_norm.gamma"].reshape(h, d)
    out["pool.proj.weight"] = src["attn_pool.to_out.0.weight"]
    out["pool.proj.bias"] = queries  # `attn_pool(queries, ...) + queries`: the residual is a constant too
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def needed_keys(cfg: NaViTConfig) -> list[str]:
    keys = ["to_patch_embedding.0.gamma", "to_patch_embedding.1.weight", "to_patch_embedding.1.bias",
            "to_patch_embedding.2.gamma", "pos_embed_height", "pos_embed_width", "transformer.norm.gamma",
            "mlp_head.0.gamma", "mlp_head.1.weight", "attn_pool_queries", "attn_pool.norm.gamma",
            "attn_pool.to_q.weight", "attn_pool.to_kv.weight", "attn_pool.q_norm.gamma", "attn_pool.k_norm.gamma",
            "attn_pool.to_out.0.weight"]
    for i in range(cfg.depth):
        a, f = f"transformer.layers.{i}.0.", f"transformer.layers.{i}.1."
        keys += [a + n for n in ("norm.gamma", "to_q.weight", "to_kv.weight", "q_norm.gamma", "k_norm.gamma",
                                 "to_out.0.weight")]
        keys += [f + n for n in ("0.gamma", "1.weight", "1.bias", "4.weight", "4.bias")]
    return keys


def describe(src: str | Path) -> NaViTConfig:
    """The model config (front end included) from the constructor arguments in ``config.json``."""
    return navit_config(read_json(Path(src) / "config.json"))


def convert(src: str | Path) -> ImportedModel:
    """Read a vit-pytorch NaViT directory into the project's model (see the module docstring)."""
    src = Path(src)
    cfg = describe(src)
    state = load_tensors(src, lambda k: True)
    require(state, needed_keys(cfg), src)
    out = filter_state_dict(state, cfg)
    rows, cols = cfg.pos_grid or (0, 0)
    if tuple(out["pos_embed.row"].shape) != (rows, cfg.dim) or tuple(out["pos_embed.col"].shape) != (cols, cfg.dim):
        raise CheckpointError(f"{src}: position tables {tuple(out['pos_embed.row'].shape)}, "
                              f"{tuple(out['pos_embed.col'].shape)} do not match image_size/patch_size ({rows}, {cols})")
    notes = ["vit-pytorch has no image processor: the project's front end feeds it (normalization from "
             "config.json 'preprocess', default pixels in [0, 1])"]
    return ImportedModel(cfg, out, "vit-pytorch", src, weights_digest(weight_files(src)), notes)
