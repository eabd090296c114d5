"""Shared fixtures: small configs, prepared fake images, and helpers to run a model on a pack."""

from __future__ import annotations

import numpy as np
import pytest

from navit_deploy.frontend import FrontendConfig, PreparedImage, grid_coords


def fake_image(rng: np.random.Generator, gh: int, gw: int, patch_dim: int = 768) -> PreparedImage:
    """A prepared image of a ``gh x gw`` grid with random patch values."""
    return PreparedImage(rng.standard_normal((gh * gw, patch_dim)).astype(np.float32), grid_coords(gh, gw),
                         (gh, gw), (gw * 16, gh * 16), (gw * 16, gh * 16))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def small_frontend() -> FrontendConfig:
    return FrontendConfig(patch_size=8, max_patches=64, max_grid=32)


TINY_FRONTEND = FrontendConfig(patch_size=16, max_patches=64, max_grid=32)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """A small random NaViT saved as safetensors + config (head dim 64, 2 layers)."""
    torch = pytest.importorskip("torch")
    from navit_deploy.model.config import NaViTConfig
    from navit_deploy.model.navit import NaViT
    from navit_deploy.model.weights import save_model

    torch.manual_seed(0)
    cfg = NaViTConfig(dim=128, depth=2, heads=2, pool_heads=2, num_classes=4, labels=("a", "b", "c", "d"),
                      frontend=TINY_FRONTEND)
    return save_model(NaViT(cfg).eval(), tmp_path_factory.mktemp("tiny_model"))


_EXPORTS: dict = {}


@pytest.fixture(scope="session")
def exported(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory):
    """``exported(lowering)`` -> path of the tiny model exported with that lowering (cached per session)."""
    from navit_deploy.export.onnx_export import export_onnx
    from navit_deploy.model.weights import load_model, weights_hash

    def get(lowering: str, pack_len: int = 512):
        key = (lowering, pack_len)
        if key not in _EXPORTS:
            out = tmp_path_factory.mktemp("onnx") / f"tiny.{lowering}.onnx"
            export_onnx(load_model(tiny_model_dir), out, lowering=lowering, pack_len=pack_len,
                        weights_sha256=weights_hash(tiny_model_dir / "model.safetensors"))
            _EXPORTS[key] = out
        return _EXPORTS[key]

    return get
