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
