"""The pack picture: neighbours in a pack never share a colour, a token axis with ticks, a title."""

import numpy as np
from PIL import Image

from navit_deploy.packing import Packer
from navit_deploy.packing.visualize import PADDING, draw_packs, token_ticks
from tests.conftest import fake_image


def test_neighbours_differ_and_ticks_are_drawn(tmp_path):
    rng = np.random.default_rng(0)
    # 12 images in one pack whose caller indices are 0, 10, 20, ...: a colour chosen by index modulo the
    # palette's length would give neighbours the same colour.
    items = [fake_image(rng, 2, 2, patch_dim=4) for _ in range(12)]
    packs = Packer(64, 64).pack(items, indices=[10 * i for i in range(12)])
    assert len(packs) == 1
    path = draw_packs(packs, tmp_path / "p.png", title="workload test")
    pic = np.asarray(Image.open(path).convert("RGB"))
    cu = packs[0].cu_seqlens.tolist()
    scale = 1024 / packs[0].pack_len
    y = 40 + 14  # middle of the first row
    colours = [tuple(pic[y, int(4 + (cu[b] + cu[b + 1]) / 2 * scale)]) for b in range(packs[0].num_images)]
    assert all(a != b for a, b in zip(colours, colours[1:]))
    assert PADDING not in colours  # no image is drawn in the padding's grey
    # The axis under the row: a black tick at every tick position.
    y_axis = 40 + 1 * (28 + 8)
    for t in token_ticks(packs[0].pack_len):
        x = min(int(4 + t * scale), 4 + 1023)
        assert (pic[y_axis + 2, x - 1:x + 2] < 60).all(axis=1).any(), f"no tick at {t}"


def test_token_ticks():
    assert token_ticks(1024) == [0, 128, 256, 384, 512, 640, 768, 896, 1024]
    assert token_ticks(256)[:3] == [0, 32, 64] and token_ticks(256)[-1] == 256
    assert token_ticks(100) == [0, 16, 32, 48, 64, 80, 100]
