import json

import numpy as np
import pytest
import torch

from navit_deploy.errors import CheckpointError, ConfigError
from navit_deploy.frontend import FrontendConfig
from navit_deploy.model.attention import available_attention, get_attention
from navit_deploy.model.config import NaViTConfig
from navit_deploy.model.navit import NaViT
from navit_deploy.model.weights import load_model, save_model
from navit_deploy.packing import Packer, build_pack
from tests.conftest import fake_image

FE = FrontendConfig(patch_size=4, max_patches=256, max_grid=48)
GRIDS = [(12, 21), (3, 5), (1, 1), (16, 16), (7, 2), (1, 40)]


def _model(pos_mode: str = "learned", heads: int = 2) -> NaViT:
    torch.manual_seed(0)
    cfg = NaViTConfig(dim=64, depth=2, heads=heads, pool_heads=2, num_classes=5, pos_mode=pos_mode, frontend=FE)
    return NaViT(cfg).eval()


def _run(model: NaViT, pack) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        e, logit = model(*(torch.from_numpy(a) for a in pack.model_inputs().values()))
    return e.numpy(), logit.numpy()


@pytest.mark.parametrize("pos_mode", ["learned", "fractional"])
@pytest.mark.parametrize("attention", ["dense", "dense-bias", "segment"])
def test_packing_invariance(rng, pos_mode, attention):
    """An image's embedding is the same alone, packed with others, and in any order (fp32, <= 1e-5)."""
    model = _model(pos_mode).set_attention(attention)
    imgs = [fake_image(rng, *g, patch_dim=FE.patch_dim) for g in GRIDS]
    alone = [_run(model, build_pack([im], [0], pack_len=im.num_tokens + 7))[0][0] for im in imgs]
    for perm_seed in range(3):
        order = np.random.default_rng(perm_seed).permutation(len(imgs)).tolist()
        for pack in Packer(pack_len=600, max_images=4).pack([imgs[i] for i in order], order):
            emb, _ = _run(model, pack)
            for row, idx in enumerate(pack.image_index.tolist()):
                np.testing.assert_allclose(emb[row], alone[idx], atol=1e-5, rtol=0)


def test_padding_does_not_leak(rng):
    model = _model()
    im = fake_image(rng, 5, 6, FE.patch_dim)
    short = build_pack([im], [0], pack_len=30)
    long = build_pack([im], [0], pack_len=300)
    noisy = long.patches.copy()
    noisy[30:] = 1e3  # garbage in padding must change nothing
    a = _run(model, short)[0]
    b = _run(model, type(long)(noisy, long.coords, long.segment_ids, long.cu_seqlens, long.valid, long.image_index))[0]
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("impl", ["dense", "dense-bias"])
@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("lengths", [[1], [1, 1, 1], [5, 300, 2], [64, 64, 64, 64]])
def test_dense_matches_segment_reference(impl, heads, lengths):
    g = torch.Generator().manual_seed(0)
    t, d = sum(lengths) + 3, 16
    q, k, v = (torch.randn(t, heads, d, generator=g) for _ in range(3))
    cu = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32)
    seg = torch.full((t,), -1, dtype=torch.int64)
    for b in range(len(lengths)):
        seg[cu[b]:cu[b + 1]] = b
    ref = get_attention("segment")(q, k, v, seg, cu, 0.25)
    out = get_attention(impl)(q, k, v, seg, cu, 0.25)
    valid = int(cu[-1])
    torch.testing.assert_close(out[:valid], ref[:valid], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()  # padding rows attend to padding: no empty softmax rows, no NaN


def test_attention_switch_is_validated():
    assert {"dense", "dense-bias", "segment", "varlen"} <= set(available_attention())
    with pytest.raises(ConfigError, match="unknown attention"):
        _model().set_attention("flash-magic")


def test_forward_is_traceable_without_data_dependent_python(rng):
    """torch.export with dynamic token/image axes succeeds: no .item(), no Python loop over images."""
    model = _model().set_attention("dense")
    pack = build_pack([fake_image(rng, 3, 4, FE.patch_dim), fake_image(rng, 2, 2, FE.patch_dim)], [0, 1], 20)
    args = tuple(torch.from_numpy(a) for a in pack.model_inputs().values())
    tokens, images = torch.export.Dim("tokens", min=2, max=4096), torch.export.Dim("images", min=1, max=256)
    ep = torch.export.export(model, args, dynamic_shapes=({0: tokens}, {0: tokens}, {0: tokens}, {0: images + 1}))
    out = ep.module()(*args)
    torch.testing.assert_close(out[0], model(*args)[0])


def test_save_load_round_trip(tmp_path, rng):
    model = _model()
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    pack = build_pack([fake_image(rng, 4, 4, FE.patch_dim)], [0])
    np.testing.assert_array_equal(_run(model, pack)[0], _run(loaded, pack)[0])
    assert (tmp_path / "model.safetensors").read_bytes()[:8] != b"\x80\x02\x8a\n"  # not a pickle


def test_checkpoint_config_mismatch_is_an_error(tmp_path):
    save_model(_model(), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["dim"] = 96
    cfg["heads"] = 3
    cfg["pool_heads"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(tmp_path)


@pytest.mark.parametrize("content,match", [("{not json", "not a valid"), ('{"dim": 64, "bogus": 1}', "unknown")])
def test_bad_config_files(tmp_path, content, match):
    save_model(_model(), tmp_path)
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=match):
        load_model(tmp_path)


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope")
    save_model(_model(), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(tmp_path)


def test_invalid_model_config():
    with pytest.raises(ConfigError):
        NaViTConfig(dim=100, heads=3)
    with pytest.raises(ConfigError):
        NaViTConfig(num_classes=3, labels=("a", "b"))
