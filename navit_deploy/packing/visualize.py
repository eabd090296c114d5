"""A picture of how images were packed: one row per pack, one colour per image, grey padding, token ticks.
Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from navit_deploy.packing.packer import PackedBatch

# No grey in the palette: grey is the padding.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (188, 189, 34), (23, 190, 207)]
PADDING = (210, 210, 210)
_TICK_STEPS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def segment_colour(position: int) -> tuple[int, int, int]:
    """The colour of the image at ``position`` in its pack: consecutive images never share one."""
    return PALETTE[position % len(PALETTE)]


def token_ticks(length: int, most: int = 9) -> list[int]:
    """Tick positions (tokens) for an axis of ``length`` tokens: 0 and multiples of a power-of-two step, at most
    ``most`` intervals, ``length`` itself last."""
    step = next((s for s in _TICK_STEPS if length / s <= most), _TICK_STEPS[-1])
    ticks = list(range(0, length, step))
    if length - ticks[-1] < step / 2 and len(ticks) > 1:
        ticks.pop()  # keep the last label clear of the end label
    return ticks + [length]


def draw_packs(packs: Sequence[PackedBatch], path: str | Path, names: Sequence[str] | None = None,
               width: int = 1024, row_h: int = 28, title: str | None = None, capacity: int | None = None) -> Path:
    """Write a PNG with one bar per pack: each image's tokens in its own colour (neighbours always differ),
    padding grey, a token axis with ticks under the packs. ``title`` names what was packed (workload,
    packing); ``capacity`` sets the axis length in tokens (default: the longest pack), so that packs cut to
    their fill show shorter."""
    rows = max(1, len(packs))
    axis_len = capacity or max((p.pack_len for p in packs), default=1)
    left, top = 4, 40
    img = Image.new("RGB", (width + 150, top + rows * (row_h + 8) + 40), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 4), title or f"{len(packs)} packs", fill="black")
    d.text((left, 18), "x: token position in the pack; colour: one image; grey: padding", fill="black")
    scale = width / axis_len
    y_axis = top + rows * (row_h + 8)
    ticks = token_ticks(axis_len)
    for t in ticks:  # faint guides between the rows, under the bars
        d.line([left + t * scale, top - 2, left + t * scale, y_axis], fill=(225, 225, 225))
    for r, pack in enumerate(packs):
        y = top + r * (row_h + 8)
        cu = pack.cu_seqlens.tolist()
        for b in range(pack.num_images):
            x0, x1 = left + cu[b] * scale, left + cu[b + 1] * scale
            d.rectangle([x0, y, max(x0, x1 - 1), y + row_h], fill=segment_colour(b))
            if names is not None and x1 - x0 > 40:
                d.text((x0 + 2, y + 8), str(names[int(pack.image_index[b])])[:int((x1 - x0) / 7)], fill="white")
        xp, xe = left + cu[-1] * scale, left + pack.pack_len * scale
        if xp < xe:
            d.rectangle([xp, y, xe, y + row_h], fill=PADDING)
        pad = 1.0 - pack.num_valid / pack.pack_len
        d.text((width + 12, y + 8), f"{pack.num_images} img, {pad:.1%} pad", fill="black")
    d.line([left, y_axis, left + width, y_axis], fill="black")
    for t in ticks:
        x = left + t * scale
        d.line([x, y_axis, x, y_axis + 4], fill="black")
        label = str(t)
        d.text((min(max(left, x - 3 * len(label)), left + width - 6 * len(label) + 6), y_axis + 6), label, fill="black")
    d.text((width + 12, y_axis + 6), "tokens", fill="black")
    out = Path(path)
    img.save(out)
    return out
