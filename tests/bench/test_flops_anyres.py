"""FLOP counter against a hand computation, AnyRes token counts, packing policy. No timing."""

import pytest

from navit_deploy.bench.anyres import anyres_tokens, select_best_resolution, square_grid_for
from navit_deploy.bench.flops import ModelShape, model_flops, useful_flops
from navit_deploy.packing.policy import BucketedPacker, attention_waste, recommended_packing, trim_pack
from navit_deploy.packing import Packer, build_pack
from tests.conftest import fake_image

TINY = ModelShape(dim=128, depth=2, hidden=512, patch_dim=768, num_classes=4)


def test_flops_match_hand_computation():
    # Weights applied per token: patch embed 768*128; per block qkv 128*384 + proj 128*128 + mlp 2*128*512;
    # pooling K/V 128*256. Per image: pooling proj 128*128 + MLP 2*128*512, head 128*4.
    per_token = 768 * 128 + 2 * (128 * 384 + 128 * 128 + 2 * 128 * 512) + 128 * 256
    per_image = 128 * 128 + 2 * 128 * 512 + 128 * 4
    assert TINY.weights_per_token == per_token == 524288
    assert TINY.weights_per_image == per_image == 147968

    dense = model_flops(TINY, [10, 20], pack_len=32, attention="dense")
    assert dense["linear"] == 2 * per_token * 32 + 2 * per_image * 2
    assert dense["attention"] == 2 * 4 * 128 * 32 * 32
    assert dense["pool"] == 2 * 128 * 32 * 3
    assert dense["total"] == dense["linear"] + dense["attention"] + dense["pool"]

    varlen = model_flops(TINY, [10, 20], attention="varlen")
    assert varlen["linear"] == 2 * per_token * 30 + 2 * per_image * 2
    assert varlen["attention"] == 2 * 4 * 128 * (10 ** 2 + 20 ** 2)
    assert varlen["pool"] == 4 * 128 * 30
    assert useful_flops(TINY, [10, 20]) == varlen["total"]
    # Packing two images is never cheaper than the per-image ideal; padding and the dense mask only add.
    assert model_flops(TINY, [10, 20], 30, "dense")["total"] > varlen["total"]
    with pytest.raises(ValueError):
        model_flops(TINY, [10, 20], pack_len=16)


def test_flop_shape_matches_the_model(tiny_model_dir):
    torch = pytest.importorskip("torch")  # noqa: F841
    from navit_deploy.model.weights import load_model

    net = load_model(tiny_model_dir)
    shape = ModelShape.from_config(net.config)
    assert shape == TINY
    per_token = net.patch_embed.proj.weight.numel() + net.pool.kv.weight.numel() + sum(
        m.weight.numel() for b in net.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp[0], b.mlp[2]))
    per_image = net.pool.proj.weight.numel() + net.pool.mlp[0].weight.numel() + net.pool.mlp[2].weight.numel() \
        + net.head.weight.numel()
    assert (shape.weights_per_token, shape.weights_per_image) == (per_token, per_image)


def test_anyres_llava_next_counts():
    # LLaVA-NeXT: 336 px tiles (24x24 patches of 14 px), pinpoints 1x2, 2x1, 2x2, 3x1, 1x3.
    assert anyres_tokens(1280, 720, 24, 14).tiles == 4 and anyres_tokens(1280, 720, 24, 14).tokens == 5 * 576
    assert anyres_tokens(336, 336, 24, 14).tokens == 3 * 576  # ties on kept pixels: least canvas wasted (1x2)
    assert anyres_tokens(400, 1200, 24, 14).grid == (1, 3) and anyres_tokens(400, 1200, 24, 14).tokens == 4 * 576
    assert anyres_tokens(96, 64, 16, 16).tokens == 3 * 256  # a thumbnail costs as much as a photo
    assert anyres_tokens(1280, 720, 24, 14, thumbnail=False).tokens == 4 * 576
    assert select_best_resolution((1000, 500), [(100, 100), (1000, 500)]) == (1000, 500)
    assert [square_grid_for(b) for b in (64, 256, 1024, 200)] == [8, 16, 32, 14]


def test_bucketed_packer_cuts_padding(rng):
    items = [fake_image(rng, h, w) for h, w in ((5, 7), (3, 3), (2, 5), (6, 6), (1, 1))]
    total = sum(it.num_tokens for it in items)
    padded = Packer(64, 8).pack(items)
    cut = BucketedPacker(64, 8, 1).pack(items)
    assert [p.image_index.tolist() for p in cut] == [p.image_index.tolist() for p in padded]
    assert sum(p.pack_len for p in cut) == total and all(p.pack_len == p.num_valid for p in cut)
    b16 = BucketedPacker(64, 8, 16).pack(items)
    assert all(p.pack_len % 16 == 0 and p.pack_len - p.num_valid < 16 for p in b16)
    assert all(p.pack_len == 64 for p in BucketedPacker(64, 8, 0).pack(items))
    one = trim_pack(build_pack([items[4]], [0], 16), 1)
    assert one.pack_len == 2 and one.num_valid == 1  # the exported graphs' smallest token axis
    streamed = list(BucketedPacker(64, 8, 1).stream(enumerate(items), buffer=2, min_fill=0.5))
    assert sorted(i for p in streamed for i in p.image_index.tolist()) == list(range(5))
    assert all(p.pack_len == max(2, p.num_valid) for p in streamed)


def test_attention_waste_and_recommendation(rng):
    items = [fake_image(rng, 4, 4) for _ in range(4)]
    pack = build_pack(items, range(4), 64)
    assert attention_waste([pack], "dense") == pytest.approx(64 ** 2 / (4 * 16 ** 2))
    assert attention_waste([pack], "segment") == 1.0
    for budget in (64, 256, 1024):
        rec = recommended_packing(budget, "dense")
        assert rec.pack_len >= budget and rec.bucket == 1
        assert recommended_packing(budget, "trt-plugin").pack_len >= rec.pack_len
    assert recommended_packing(256, "dense", "tensorrt").bucket > 1


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen2_vl"])
def test_flop_shape_of_a_vlm_tower_matches_the_model(kind):
    """Gated MLPs (three matrices), the merger instead of a pooling head, and windowed blocks attending within
    64-token windows: the count is every Linear weight applied per token, and windows cut the attention."""
    torch = pytest.importorskip("torch")  # noqa: F841
    from navit_deploy.frontend.config import FrontendConfig
    from navit_deploy.importers.hf_qwen_vl import navit_config
    from navit_deploy.model.navit import NaViT

    vision = dict(depth=4, hidden_size=64, intermediate_size=96, num_heads=2, out_hidden_size=96,
                  fullatt_block_indexes=[1, 3], window_size=112, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, embed_dim=64, mlp_ratio=2, in_channels=3, hidden_act="silu")
    if kind == "qwen2_vl":
        vision.update(hidden_size=96, hidden_act="quick_gelu")
    fe = FrontendConfig(patch_size=14, channels=3, budget="pixels", min_pixels=3136, max_pixels=125440,
                        temporal_patch_size=2, merge_size=2)
    net = NaViT(navit_config({"model_type": kind, "vision_config": vision}, fe))
    shape = ModelShape.from_config(net.config)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    merger = [m for m in net.merger.modules() if isinstance(m, torch.nn.Linear)]
    per_token = sum(m.weight.numel() for m in linears if not any(m is x for x in merger)) \
        + sum(m.weight.numel() for m in merger) // 4  # the merger runs once per 4 tokens
    assert (shape.weights_per_token, shape.weights_per_image) == (per_token, 0)
    lens = [40, 200]
    flops = model_flops(shape, lens)
    windowed = 2 if kind == "qwen2_5_vl" else 0
    full = 4 - windowed
    assert flops["pool"] == 0
    assert flops["attention"] == 4 * 64 * (full * sum(n * n for n in lens) + windowed * sum(n * min(n, 64) for n in lens))
    assert model_flops(shape, lens, 240, "dense")["attention"] == 4 * 64 * (full * 240 ** 2
                                                                           + windowed * (40 * 40 + 200 * 64))
