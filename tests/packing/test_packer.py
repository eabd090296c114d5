import numpy as np
import pytest

from navit_deploy.bench.workloads import make_workload
from navit_deploy.errors import PackingError
from navit_deploy.frontend import FrontendConfig, target_size
from navit_deploy.packing import Packer, build_pack, first_fit_decreasing, padding_fraction
from tests.conftest import fake_image


@pytest.mark.parametrize("grids", [[(16, 16), (24, 24), (27, 27), (32, 32)], [(1, 1)], [(3, 5), (1, 1), (12, 21)]])
def test_pack_structure(rng, grids):
    imgs = [fake_image(rng, *g) for g in grids]
    pack = build_pack(imgs, list(range(len(imgs))), pack_len=4096)
    n = [g[0] * g[1] for g in grids]
    assert pack.cu_seqlens.dtype == np.int32 and pack.cu_seqlens.tolist() == [0, *np.cumsum(n).tolist()]
    assert pack.valid.sum() == sum(n) and not pack.valid[sum(n):].any()
    assert (pack.segment_ids[~pack.valid] == -1).all()
    for b, img in enumerate(imgs):
        s, e = pack.cu_seqlens[b], pack.cu_seqlens[b + 1]
        np.testing.assert_array_equal(pack.patches[s:e], img.patches)
        np.testing.assert_array_equal(pack.coords[s:e], img.coords)
        assert (pack.segment_ids[s:e] == b).all()


def test_block_mask_of_the_seed_example(rng):
    torch = pytest.importorskip("torch")
    from navit_deploy.model.attention import block_diagonal_mask

    imgs = [fake_image(rng, *g, patch_dim=4) for g in [(16, 16), (24, 24), (27, 27), (32, 32)]]
    pack = build_pack(imgs, [0, 1, 2, 3])
    mask = block_diagonal_mask(torch.from_numpy(pack.segment_ids))
    assert tuple(mask.shape) == (2585, 2585)
    assert int(mask.sum()) == 256**2 + 576**2 + 729**2 + 1024**2


@pytest.mark.parametrize("pack_len,max_images", [(64, 3), (100, 64), (1024, 2)])
def test_ffd_respects_limits_and_covers_everything(pack_len, max_images):
    lengths = list(np.random.default_rng(0).integers(1, pack_len + 1, size=200))
    bins = first_fit_decreasing(lengths, pack_len, max_images)
    assert sorted(i for b in bins for i in b) == list(range(200))
    for b in bins:
        assert sum(lengths[i] for i in b) <= pack_len and len(b) <= max_images


def test_item_longer_than_pack_is_an_error():
    with pytest.raises(PackingError, match="more than the pack length"):
        first_fit_decreasing([10, 2000], 1024, 8)


def test_mixed_workload_padding_below_two_percent():
    wl = make_workload("mixed", 1000)
    fe = FrontendConfig(max_patches=wl.max_patches, upscale=wl.upscale)
    tokens = [(w // 16) * (h // 16) for w, h in (target_size(*s, fe) for s in wl.sizes)]
    bins = first_fit_decreasing(tokens, 1024, 64)
    pad = 1 - sum(tokens) / (len(bins) * 1024)
    assert pad < 0.02, pad


def test_packer_maps_back_to_caller_order(rng):
    imgs = [fake_image(rng, int(rng.integers(1, 20)), int(rng.integers(1, 20)), 8) for _ in range(50)]
    packs = Packer(512, 8).pack(imgs, indices=[100 + i for i in range(50)])
    seen = sorted(int(i) for p in packs for i in p.image_index)
    assert seen == [100 + i for i in range(50)]
    for p in packs:
        for b, idx in enumerate(p.image_index):
            s = p.cu_seqlens[b]
            np.testing.assert_array_equal(p.patches[s], imgs[idx - 100].patches[0])


def test_stream_is_bounded_and_complete(rng):
    held = []

    def gen():
        for i in range(300):
            held.append(i)
            yield i, fake_image(rng, int(rng.integers(2, 16)), int(rng.integers(2, 16)), 4)

    packer = Packer(256, 16)
    got = []
    for pack in packer.stream(gen(), buffer=32):
        got.extend(pack.image_index.tolist())
        # never more than the buffer (plus the one being added) waiting for a pack
        assert len(held) - len(got) <= 33
    assert sorted(got) == list(range(300))
    assert padding_fraction([]) == 0.0
