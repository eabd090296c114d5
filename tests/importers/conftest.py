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
