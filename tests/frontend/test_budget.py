import pytest

from navit_deploy.errors import BudgetError, ConfigError
from navit_deploy.frontend import FrontendConfig, target_size

SIZES = [(1280, 720), (1920, 1080), (3024, 4032), (1275, 1650), (400, 1200), (540, 1170), (96, 64), (32, 32),
         (2000, 500), (500, 2000), (17, 999), (4000, 1000), (1, 1)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("max_patches", [16, 64, 256, 1024])
def test_max_patches_fits_and_is_largest(size, max_patches):
    cfg = FrontendConfig(max_patches=max_patches)
    ratio = max(size) / min(size)
    if ratio > 2 * max_patches:  # cannot be represented without distortion: must be refused, not squashed
        with pytest.raises(BudgetError):
            target_size(*size, cfg)
        return
    w, h = target_size(*size, cfg)
    gw, gh = w // 16, h // 16
    assert w % 16 == 0 and h % 16 == 0
    assert gw * gh <= max_patches
    # Largest: growing the scale by one more patch on the long side would break the budget or the aspect.
    aspect = size[0] / size[1]
    grown = (gw + 1, max(1, round((gw + 1) / aspect))) if aspect >= 1 else (max(1, round((gh + 1) * aspect)), gh + 1)
    assert grown[0] * grown[1] > max_patches or max(grown) > cfg.max_grid


@pytest.mark.parametrize("size", SIZES)
def test_aspect_ratio_moves_by_at_most_one_patch(size):
    cfg = FrontendConfig(max_patches=256)
    w, h = target_size(*size, cfg)
    # At the scale set by the long side, the short side is within one patch of its exact native value.
    if size[0] >= size[1]:
        assert abs(h - size[1] * (w / size[0])) <= 16 + 1e-6
    else:
        assert abs(w - size[0] * (h / size[1])) <= 16 + 1e-6
    assert (w >= h) == (size[0] >= size[1]) or w == h


def test_no_upscale_keeps_small_images_small():
    cfg = FrontendConfig(max_patches=256, upscale=False)
    assert target_size(96, 64, cfg) == (96, 64)
    assert target_size(20, 20, cfg) == (16, 16)
    assert target_size(1920, 1080, cfg) == target_size(1920, 1080, cfg.replace(upscale=True))


def test_upscale_fills_budget():
    w, h = target_size(96, 64, FrontendConfig(max_patches=256))
    assert (w // 16) * (h // 16) > 200


def test_extreme_aspect_ratio_is_a_clear_error():
    with pytest.raises(BudgetError, match="aspect"):
        target_size(10000, 10, FrontendConfig(max_patches=64))


def test_grid_capped_at_positional_table():
    w, h = target_size(4000, 250, FrontendConfig(max_patches=1024, max_grid=64))
    assert w // 16 <= 64


@pytest.mark.parametrize("size", [(1920, 1080), (640, 480), (100, 3000), (28, 28)])
def test_pixel_budget_like_qwen2vl(size):
    cfg = FrontendConfig(budget="pixels", min_pixels=56 * 56, max_pixels=448 * 448, max_grid=256)
    w, h = target_size(*size, cfg)
    assert w % 16 == 0 and h % 16 == 0
    assert cfg.min_pixels <= w * h <= cfg.max_pixels or (w * h <= cfg.max_pixels and min(size) < 56)


def test_pixel_budget_rejects_absurd_aspect():
    with pytest.raises(BudgetError, match="200:1"):
        target_size(100000, 100, FrontendConfig(budget="pixels"))


def test_square_grid_front_end():
    assert target_size(1920, 1080, FrontendConfig(square_grid=16)) == (256, 256)


@pytest.mark.parametrize("bad", [dict(budget="tokens"), dict(max_patches=0), dict(min_pixels=10, max_pixels=5),
                                 dict(mean=(0.5,)), dict(std=(0.5, 0.0, 0.5)), dict(square_grid=999)])
def test_invalid_config(bad):
    with pytest.raises(ConfigError):
        FrontendConfig(**bad)


def test_config_round_trip():
    cfg = FrontendConfig(max_patches=100, upscale=False, mean=(0.1, 0.2, 0.3))
    assert FrontendConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        FrontendConfig.from_dict({**cfg.to_dict(), "bogus": 1})
