"""vit-pytorch's NaViT imported from its state dict and constructor arguments: parity against na_vit.py itself,
and a failing test for each mistake a port commonly makes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from navit_deploy.errors import CheckpointError, ConfigError
from navit_deploy.frontend import PreparedImage, grid_coords
from navit_deploy.importers import detect_family, import_checkpoint
from navit_deploy.model.navit import NaViT
from navit_deploy.model.weights import load_model, load_state
from navit_deploy.packing import build_pack

torch = pytest.importorskip("torch")

P = 16
GRIDS = [(4, 6), (1, 1), (8, 2), (3, 5), (8, 6)]  # (rows, cols) within the 8x6 tables


def _case(seed=0):
    rng = np.random.default_rng(seed)
    images = [torch.from_numpy(rng.standard_normal((3, h * P, w * P)).astype(np.float32)) for h, w in GRIDS]
    items = []
    for im, (h, w) in zip(images, GRIDS):
        x = im.reshape(3, h, P, w, P).permute(1, 3, 0, 2, 4).reshape(h * w, -1).numpy()
        items.append(PreparedImage(x, grid_coords(h, w), (h, w), (w * P, h * P), (w * P, h * P)))
    return images, items


def _reference(model, images):
    latent = {}
    hook = model.to_latent.register_forward_hook(lambda _m, _i, out: latent.__setitem__("x", out))
    with torch.no_grad():
        logits = model([images])
    hook.remove()
    return latent["x"].numpy(), logits.numpy()


def _ours(net, items):
    pack = build_pack(items, list(range(len(items))), pack_len=sum(i.num_tokens for i in items) + 5)
    with torch.no_grad():
        emb, logits = net(*(torch.from_numpy(a) for a in pack.model_inputs().values()))
    return emb.numpy(), logits.numpy()


@pytest.fixture(scope="module")
def case(vit_dir):
    path, reference = vit_dir
    images, items = _case()
    return path, items, _reference(reference, images)


def test_logits_and_embeddings_match_vit_pytorch(case):
    path, items, (ref_emb, ref_logits) = case
    assert detect_family(path) == "vit-pytorch"
    net = load_model(path, attention="segment")
    emb, logits = _ours(net, items)
    assert np.abs(logits - ref_logits).max() <= 1e-4 and np.abs(emb - ref_emb).max() <= 1e-4
    assert np.abs(ref_logits).max() > 0.1 and np.abs(ref_emb).max() > 1.0
    assert (logits.argmax(1) == ref_logits.argmax(1)).all()


def test_config_and_front_end(vit_dir):
    path, _ = vit_dir
    cfg = load_model(path).config
    assert cfg.pos_rows_cols == (8, 6) and cfg.head_dim == 32 and cfg.heads * cfg.head_dim != cfg.dim
    assert cfg.norm_eps == 1e-5 and not cfg.norm_bias and cfg.gelu == "exact" and cfg.qk_norm == "l2"
    fe = cfg.frontend
    assert fe.max_patches == 48 and fe.max_grid == 6 and fe.mean == (0.5,) * 3 and fe.std == (0.25,) * 3


def test_packing_invariance(case):
    path, items, _ = case
    net = load_model(path, attention="dense")
    together, _ = _ours(net, items)
    for i, it in enumerate(items):
        np.testing.assert_allclose(_ours(net, [it])[0][0], together[i], atol=1e-5, rtol=0)


def _with(imp, cfg=None, drop=(), **state):
    net = NaViT(cfg or imp.config)
    load_state(net, {k: v for k, v in {**imp.state, **state}.items() if k not in drop})
    return net.set_attention("segment").eval()


def _gap(net, case):
    _, items, (ref_emb, ref_logits) = case
    emb, logits = _ours(net, items)
    return max(float(np.abs(emb - ref_emb).max()), float(np.abs(logits - ref_logits).max()))


def test_each_porting_mistake_is_caught(case):
    path, _, _ = case
    imp = import_checkpoint(path)
    s, c = imp.state, imp.config
    inner = c.heads * c.head_dim
    q, k, v = s["blocks.0.attn.qkv.weight"].split(inner)
    assert _gap(_with(imp), case) <= 1e-4
    mistakes = {
        "k and v swapped (to_kv chunks)": _with(imp, **{"blocks.0.attn.qkv.weight": torch.cat([q, v, k])}),
        "attention scale 1/sqrt(d) (RMSNorm already scales)": _with(imp, replace(c, attn_scale=None)),
        "qk norm without sqrt(d)": _with(imp, **{"blocks.0.attn.q_norm.gamma": s["blocks.0.attn.q_norm.gamma"] / c.head_dim ** 0.5}),
        "pooling residual dropped": _with(imp, **{"pool.proj.bias": torch.zeros_like(s["pool.proj.bias"])}),
        "tanh GELU instead of exact": _with(imp, replace(c, gelu="tanh")),
        "no LayerNorm on the raw patch": _with(imp, replace(c, patch_norm_in=False), drop=("patch_embed.norm_in.weight",)),
    }
    for what, net in mistakes.items():  # twice the fp32 parity threshold at least
        assert _gap(net, case) > 2e-4, f"{what} was not caught"


def test_a_state_dict_with_nonzero_beta_is_refused(vit_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    path, _ = vit_dir
    d = tmp_path / "beta"
    shutil.copytree(path, d)
    state = load_file(str(d / "model.safetensors"))
    state["transformer.norm.beta"] = torch.ones_like(state["transformer.norm.beta"])
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="beta"):
        import_checkpoint(d)


def test_bad_constructor_arguments(vit_dir, tmp_path):
    path, _ = vit_dir
    d = tmp_path / "args"
    shutil.copytree(path, d)
    args = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**args, "depht": 2}))
    with pytest.raises(ConfigError, match="depht"):
        load_model(d)
    (d / "config.json").write_text(json.dumps({**args, "image_size": 100}))
    with pytest.raises(ConfigError, match="divisible"):
        load_model(d)


def test_flop_count_follows_the_imported_shape(vit_dir):
    from navit_deploy.bench.flops import ModelShape

    net = load_model(vit_dir[0])
    shape = ModelShape.from_config(net.config)
    per_token = net.patch_embed.proj.weight.numel() + net.pool.kv.weight.numel() + sum(
        m.weight.numel() for b in net.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp[0], b.mlp[2]))
    assert shape.inner == 96 and shape.weights_per_token == per_token
