"""A picture of how images were packed: one row per pack, one colour per image, grey padding. Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from navit_deploy.packing.packer import PackedBatch

_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (188, 189, 34), (23, 190, 207), (127, 127, 127)]


def draw_packs(packs: Sequence[PackedBatch], path: str | Path, names: Sequence[str] | None = None,
               width: int = 1024, row_h: int = 28) -> Path:
    """Write a PNG with one bar per pack: each image's tokens in its own colour, padding hatched grey."""
    rows = max(1, len(packs))
    img = Image.new("RGB", (width + 140, rows * (row_h + 8) + 30), "white")
    d = ImageDraw.Draw(img)
    d.text((4, 4), "packs (x: token position; colour: image; grey: padding)", fill="black")
    for r, pack in enumerate(packs):
        y = 24 + r * (row_h + 8)
        scale = width / pack.pack_len
        cu = pack.cu_seqlens.tolist()
        for b in range(pack.num_images):
            x0, x1 = 4 + cu[b] * scale, 4 + cu[b + 1] * scale
            d.rectangle([x0, y, max(x0, x1 - 1), y + row_h], fill=_PALETTE[int(pack.image_index[b]) % len(_PALETTE)])
            if names is not None and x1 - x0 > 40:
                d.text((x0 + 2, y + 8), str(names[int(pack.image_index[b])])[:int((x1 - x0) / 7)], fill="white")
        xp = 4 + cu[-1] * scale
        if xp < 4 + width:
            d.rectangle([xp, y, 4 + width, y + row_h], fill=(210, 210, 210))
        pad = 1.0 - pack.num_valid / pack.pack_len
        d.text((width + 10, y + 8), f"{pack.num_images} img, {pad:.1%} pad", fill="black")
    out = Path(path)
    img.save(out)
    return out
