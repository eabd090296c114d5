"""Qwen2.5-VL and Qwen2-VL vision towers imported from transformers checkpoints: parity against transformers' own
``Qwen2_5_VisionTransformerPretrainedModel`` / ``Qwen2VisionTransformerPretrainedModel`` from the identical pixels
of its ``Qwen2VLImageProcessor``, packing invariance, and a failing test for each mistake a port commonly makes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from navit_deploy.errors import CheckpointError, PackingError
from navit_deploy.frontend import PreparedImage, grid_coords
from navit_deploy.importers import detect_family, import_checkpoint
from navit_deploy.model import layers
from navit_deploy.model.navit import NaViT
from navit_deploy.model.weights import load_model, model_digest
from navit_deploy.packing import WindowSpec, build_pack, split_tokens, window_order
from tests.importers.conftest import qwen_processor

torch = pytest.importorskip("torch")

# (w, h): wide, square, a strip, the smallest image, tall: merged grids with whole and cut edge windows.
SIZES = [(300, 200), (100, 100), (500, 90), (56, 56), (200, 400)]
TOL = 1e-4


def _images(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def reference_pixels(images, processor=None):
    """transformers' processor output and, per image, the same rows as a PreparedImage (merge-block order)."""
    inp = (processor or qwen_processor())(images=images, return_tensors="pt")
    items, start = [], 0
    for t, gh, gw in inp["image_grid_thw"].tolist():
        n = t * gh * gw
        x = inp["pixel_values"][start:start + n].numpy()
        items.append(PreparedImage(x, grid_coords(gh, gw, 2), (gh, gw), (gw * 14, gh * 14), (gw * 14, gh * 14)))
        start += n
    return inp, items


def reference_tokens(tower, inp) -> list[np.ndarray]:
    """transformers' merged tokens (``pooler_output``), split per image."""
    with torch.no_grad():
        out = tower(inp["pixel_values"], grid_thw=inp["image_grid_thw"]).pooler_output.numpy()
    sizes = [int(t * h * w) // 4 for t, h, w in inp["image_grid_thw"].tolist()]
    return np.split(out, np.cumsum(sizes)[:-1])


def ours(net: NaViT, items, restore: bool = True) -> list[np.ndarray]:
    c = net.config
    spec = WindowSpec(c.frontend.merge_size, c.window_merged)
    pack = build_pack(items, list(range(len(items))), pack_len=sum(i.num_tokens for i in items) + 8, windows=spec)
    with torch.no_grad():
        out = net(*(torch.from_numpy(a) for a in pack.model_inputs().values()))[0].numpy()
    return split_tokens(out, pack.cu_seqlens, spec.unit, pack.block_order if restore else None)


def max_abs(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def case(qwen_dirs):
    path, tower = qwen_dirs["2.5"]
    inp, items = reference_pixels(_images())
    return path, tower, inp, items, reference_tokens(tower, inp)


@pytest.mark.parametrize("name", ["2.5", "2.5-vision", "2.5-sharded", "2", "2.5-hd80"])
def test_identical_pixels_match_transformers(qwen_dirs, name):
    path, tower = qwen_dirs[name]
    inp, items = reference_pixels(_images())
    ref = reference_tokens(tower, inp)
    assert detect_family(path) == "qwen-vl"
    net = load_model(path, attention="segment")
    c = net.config
    assert c.output == "tokens" and c.outputs == ("tokens",) and c.windowed == (name != "2")
    assert c.head_dim == (80 if name == "2.5-hd80" else 32)
    got = ours(net, items)
    err = max_abs(got, ref)
    print(f"qwen {name}: identical pixels max abs {err:.2e}")
    assert err <= TOL, err
    assert max(float(np.abs(r).max()) for r in ref) > 0.5  # outputs are not trivially small


@pytest.mark.parametrize("slots", [True, False])
@pytest.mark.parametrize("attention", ["dense", "dense-bias"])
def test_every_attention_implementation_and_packing_invariance(case, attention, slots):
    path, _, _, items, ref = case
    net = load_model(path).set_attention(attention, window_slots=slots)
    assert [b.attn.slot for b in net.blocks] == ([64, 0, 64, 0] if slots else [0] * 4)
    packed = ours(net, items)
    alone = [ours(net, [it])[0] for it in items]
    assert max_abs(packed, ref) <= TOL
    inv = max_abs(packed, alone)
    print(f"{attention}: invariance {inv:.2e}")
    assert inv <= 1e-5, inv


@pytest.mark.parametrize("grids", [None, [(8, 8), (2, 2), (16, 6), (10, 34), (8, 16)]])
def test_window_order_is_transformers(case, grids):
    """The processor's grids, and grids of exactly whole windows, of one block, and of cut edges."""
    from transformers.vision_utils import get_vision_window_index

    _, _, inp, items, _ = case
    grids = grids or [it.grid for it in items]
    thw = torch.tensor([(1, h, w) for h, w in grids])
    index, cu = get_vision_window_index(thw, 2, 112, 14)
    perms, sizes, offset = [], [], 0
    for grid in grids:
        p, s = window_order(grid, 2, 4)
        perms.append(p + offset)
        sizes.append(s)
        offset += grid[0] * grid[1] // 4
    assert np.array_equal(np.concatenate(perms), index.numpy())
    assert np.array_equal(np.concatenate([[0], np.cumsum(np.concatenate(sizes))]), cu.numpy())


def test_the_language_model_is_never_read(qwen_dirs):
    path, _ = qwen_dirs["2.5"]
    imported = import_checkpoint(path)
    assert imported.family == "qwen-vl" and all(k.startswith(("patch_embed", "blocks", "merger")) for k in imported.state)
    assert imported.digest == model_digest(path)


def test_a_checkpoint_without_the_vision_tower_is_refused(qwen_dirs, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    src, _ = qwen_dirs["2.5"]
    for f in ("config.json", "preprocessor_config.json"):
        shutil.copy(src / f, tmp_path / f)
    state = {k: v for k, v in load_file(str(src / "model.safetensors")).items() if "visual" not in k}
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no Qwen-VL vision tower"):
        import_checkpoint(tmp_path)


def test_packs_hold_whole_merge_blocks(case):
    _, _, _, items, _ = case
    with pytest.raises(PackingError, match="multiple of 4"):
        build_pack(items[:1], [0], pack_len=items[0].num_tokens + 2, windows=WindowSpec(2, 4))


# --- each mistake a port commonly makes must fail the parity above --------------------------------------------

def test_mistake_rotary_on_the_wrong_half(case, monkeypatch):
    path, _, _, items, ref = case

    def swapped(self, coords):
        freqs = coords.to(torch.float32).unsqueeze(-1) * self.inv_freq
        half = torch.cat([freqs[:, 1], freqs[:, 0]], dim=-1)  # columns first
        emb = torch.cat([half, half], dim=-1).unsqueeze(1)
        return emb.cos(), emb.sin()

    monkeypatch.setattr(layers.Rotary2D, "forward", swapped)
    err = max_abs(ours(load_model(path, attention="segment"), items), ref)
    print(f"mistake rotary half: {err:.3f}")
    assert err > 100 * TOL


def test_mistake_window_order_not_restored(case):
    path, _, _, items, ref = case
    err = max_abs(ours(load_model(path, attention="segment"), items, restore=False), ref)
    print(f"mistake window order: {err:.3f}")
    assert err > 100 * TOL


def test_mistake_merge_blocks_in_raster_order(case):
    path, _, _, items, ref = case
    raster = []
    for it in items:  # the same pixels, patches row-major over the grid as a plain ViT orders them
        gh, gw = it.grid
        order = np.lexsort((it.coords[:, 1], it.coords[:, 0]))
        raster.append(PreparedImage(it.patches[order], grid_coords(gh, gw), it.grid, it.resized_size, it.original_size))
    err = max_abs(ours(load_model(path, attention="segment"), raster), ref)
    print(f"mistake raster merge: {err:.3f}")
    assert err > 100 * TOL


def test_mistake_full_attention_in_windowed_blocks(case):
    path, _, _, items, ref = case
    net = load_model(path, attention="segment")
    for block in net.blocks:
        block.windowed = False
    err = max_abs(ours(net, items), ref)
    print(f"mistake full attention: {err:.3f}")
    assert err > 100 * TOL


def test_the_published_layout_visual_prefix(qwen_dirs, case, tmp_path):
    """Published Qwen2.5-VL checkpoints name the tower ``visual.*`` (transformers 5 saves ``model.visual.*``)."""
    import shutil

    from safetensors.torch import load_file, save_file

    src, _ = qwen_dirs["2.5"]
    _, _, _, items, ref = case
    for f in ("config.json", "preprocessor_config.json"):
        shutil.copy(src / f, tmp_path / f)
    state = {k.replace("model.visual.", "visual.", 1): v for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    assert max_abs(ours(load_model(tmp_path, attention="segment"), items), ref) <= TOL


def test_a_real_qwen25_vl_config_describes_without_weights(tmp_path):
    """Qwen2.5-VL-7B's vision config: 32 blocks of 1280 with 16 heads of 80, full attention in 7/15/23/31."""
    import json

    from navit_deploy.importers.hf_qwen_vl import describe

    vision = dict(depth=32, hidden_act="silu", hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3,
                  out_hidden_size=3584, patch_size=14, spatial_merge_size=2, spatial_patch_size=14, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, temporal_patch_size=2)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "vision_config": vision}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2,
         "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    c = describe(tmp_path)
    assert (c.dim, c.depth, c.heads, c.head_dim, c.mlp_hidden, c.out_dim) == (1280, 32, 16, 80, 3420, 3584)
    assert c.fullatt_blocks == (7, 15, 23, 31) and c.window_merged == 4 and c.norm == "rmsnorm" and c.mlp == "gated"
    fe = c.frontend
    assert (fe.min_pixels, fe.max_pixels, fe.patch_dim, fe.merge_size, fe.budget) == (3136, 12845056, 1176, 2, "pixels")


@pytest.mark.parametrize("size", [{"min_pixels": 6272, "max_pixels": 50176}, {"shortest_edge": 3136}, [3136, 50176]])
def test_a_malformed_size_in_the_preprocessor_file_is_refused(qwen_dirs, tmp_path, size):
    """transformers refuses a ``size`` without ``shortest_edge``/``longest_edge``; silently falling back to the
    defaults would give another grid than the user's processor (58x86 instead of 12x18 on a 1500x1000 image)."""
    import json
    import shutil

    src, _ = qwen_dirs["2.5-vision"]
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    pre = json.loads((src / "preprocessor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({**pre, "size": size}))
    with pytest.raises(CheckpointError, match="'size' must hold 'shortest_edge' and 'longest_edge'"):
        import_checkpoint(tmp_path)


def test_the_reference_loads_without_transformers_progress_bars(qwen_dirs, capfd):
    """``navit parity``/``deploy`` draw their own progress: transformers' ``Loading weights`` bar and config
    warnings stay off while the reference loads, and its settings are restored afterwards."""
    from transformers.utils import logging as tf_logging

    from navit_deploy.importers.reference_qwen import QwenVLReference

    path, _ = qwen_dirs["2.5"]
    tf_logging.enable_progress_bar()
    capfd.readouterr()
    QwenVLReference(path)
    err = capfd.readouterr().err
    assert "Loading weights" not in err and tf_logging.is_progress_bar_enabled()
