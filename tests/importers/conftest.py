"""Small random-weight checkpoints built with the source libraries themselves (nothing is downloaded).

Default inits hide porting mistakes (zero biases, unit LayerNorms, a weak position table), so every bias and
norm parameter is perturbed and position tables are drawn with std 0.5.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="parity against SigLIP 2 needs transformers (test extra)")

SIGLIP_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
                     num_patches=256, layer_norm_eps=1e-6)
SIGLIP_TEXT = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                   max_position_embeddings=16)
MAX_PATCHES = 64


def perturb(model: "torch.nn.Module", seed: int = 0) -> "torch.nn.Module":
    """Biases ~ N(0, 0.5), norm weights ~ N(1, 0.5), position tables ~ N(0, 0.5), so mistakes show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif ("norm" in name and name.endswith("weight")) or name.endswith("gamma"):
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.5)
            elif "position_embedding" in name or name.startswith("pos_embed"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def siglip_processor(max_patches: int = MAX_PATCHES):
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    return Siglip2ImageProcessorPil(max_num_patches=max_patches)


def build_siglip(out: Path, layout: str, shard: bool = False) -> "torch.nn.Module":
    """A SigLIP 2 checkpoint in ``layout`` "vision" (Siglip2VisionModel) or "full" (Siglip2Model); returns
    its vision tower (the reference)."""
    from transformers import Siglip2Config, Siglip2Model, Siglip2VisionConfig, Siglip2VisionModel

    torch.manual_seed(0)
    if layout == "vision":
        model = perturb(Siglip2VisionModel(Siglip2VisionConfig(**SIGLIP_VISION)))
        vision = model
    else:
        model = perturb(Siglip2Model(Siglip2Config(vision_config=SIGLIP_VISION, text_config=SIGLIP_TEXT)))
        vision = model.vision_model
    model.save_pretrained(out, max_shard_size="200KB" if shard else "5GB")
    siglip_processor().save_pretrained(out)
    return vision


@pytest.fixture(scope="session")
def siglip_dirs(tmp_path_factory):
    """``{"vision"|"full"|"sharded": (dir, reference vision model)}``; the same weights in every layout."""
    out = {}
    for name, layout, shard in (("vision", "vision", False), ("full", "full", False), ("sharded", "full", True)):
        d = tmp_path_factory.mktemp(f"siglip2_{name}")
        out[name] = (d, build_siglip(d, layout, shard))
    return out


def load_na_vit() -> ModuleType:
    """``vit_pytorch.na_vit`` (without the package ``__init__``, which imports torchvision)."""
    from navit_deploy.errors import BackendUnavailableError
    from navit_deploy.importers.reference import load_na_vit as load

    try:
        return load()
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))


VIT_ARGS = dict(image_size=(128, 96), patch_size=16, num_classes=5, dim=64, depth=2, heads=3, dim_head=32,
                mlp_dim=128)


@pytest.fixture(scope="session")
def vit_dir(tmp_path_factory):
    """(dir, reference) for a vit-pytorch NaViT with a non-square table and dim_head * heads != dim."""
    from safetensors.torch import save_file

    na = load_na_vit()
    torch.manual_seed(0)
    model = perturb(na.NaViT(**VIT_ARGS))
    with torch.no_grad():  # logits of a trained classifier's scale (a few units), so small mistakes show in them
        model.mlp_head[1].weight.mul_(20.0)
    d = tmp_path_factory.mktemp("vit_pytorch_navit")
    save_file(model.state_dict(), str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({**VIT_ARGS, "preprocess": {"mean": [0.5] * 3, "std": [0.25] * 3}}))
    return d, model


# Qwen2.5-VL / Qwen2-VL vision towers: small configs, windows on (112 px = 4 merged tokens per side) with
# full attention in blocks 1 and 3, head dims 32 and 80 (the real models' 1280 / 16).
QWEN25_VISION = dict(depth=4, hidden_size=64, intermediate_size=96, num_heads=2, out_hidden_size=96,
                     fullatt_block_indexes=[1, 3], window_size=112, patch_size=14, spatial_merge_size=2,
                     temporal_patch_size=2)
QWEN2_VISION = dict(depth=4, embed_dim=64, hidden_size=96, mlp_ratio=2, num_heads=2, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2)
QWEN_TEXT = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, max_position_embeddings=64,
                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 56 * 56, 28 * 28 * 160


def qwen_processor(min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS):
    """transformers' own ``Qwen2VLImageProcessor`` (the PIL backend: no torchvision here)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


def perturb_qwen(model: "torch.nn.Module", seed: int = 0) -> "torch.nn.Module":
    """:func:`perturb`, plus the merger's norm (``ln_q``), and q/k/v weights of a trained model's scale (x8: attention
    logits of a few units instead of ~0.02, so positions and windows matter; much more makes fp32 softmax the
    limit of parity)."""
    perturb(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_q" in name and name.endswith("weight"):
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("attn.qkv.weight"):
                p.mul_(8.0)
    return model.eval()


def build_qwen(out: Path, kind: str = "2.5", layout: str = "full", shard: bool = False,
               vision: dict | None = None) -> "torch.nn.Module":
    """A Qwen2.5-VL (``kind="2.5"``) or Qwen2-VL (``"2"``) checkpoint saved with ``save_pretrained``: the whole
    VLM (``layout="full"``, keys ``model.visual.*``) or the vision tower alone (``"vision"``). Returns the tower."""
    import transformers as tf

    torch.manual_seed(0)
    vc = {**(QWEN25_VISION if kind == "2.5" else QWEN2_VISION), **(vision or {})}
    cfg_cls, model_cls = ((tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration) if kind == "2.5"
                          else (tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration))
    model = model_cls(cfg_cls(vision_config=vc, text_config=QWEN_TEXT)).eval()
    tower = perturb_qwen(model.model.visual)
    saved = model if layout == "full" else tower
    saved.save_pretrained(out, max_shard_size="100KB" if shard else "5GB")
    qwen_processor().save_pretrained(out)
    return tower


@pytest.fixture(scope="session")
def qwen_dirs(tmp_path_factory):
    """``{name: (dir, reference tower)}``: Qwen2.5-VL whole, vision-only and sharded (the same weights),
    Qwen2-VL, and Qwen2.5-VL with head dim 80."""
    out = {}
    for name, kind, layout, shard, vision in (("2.5", "2.5", "full", False, None), ("2.5-vision", "2.5", "vision", False, None),
                                              ("2.5-sharded", "2.5", "full", True, None), ("2", "2", "full", False, None),
                                              ("2.5-hd80", "2.5", "full", False, dict(hidden_size=160, num_heads=2,
                                                                                      intermediate_size=128))):
        d = tmp_path_factory.mktemp(f"qwen_{name}")
        out[name] = (d, build_qwen(d, kind, layout, shard, vision))
    return out
