"""Token counts of AnyRes tiling (LLaVA-NeXT): the image cut into square tiles plus one thumbnail. Torch-free.

LLaVA-NeXT picks, among a list of grid "pinpoints" (multiples of the encoder's square input), the
resolution that keeps the most of the image's pixels (ties: the least wasted canvas), resizes the image
into it at its aspect ratio (padding the rest), cuts it into tiles, and also encodes the whole image
resized to one tile. The vision encoder computes ``(tiles + 1) * tile_tokens`` tokens, whatever the
image's size: a 96x64 thumbnail costs as much as a 4032x3024 photo in the same pinpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# LLaVA-NeXT's image_grid_pinpoints in units of tiles: 1x2, 2x1, 2x2, 3x1, 1x3 (336 px tiles).
LLAVA_NEXT_GRIDS: tuple[tuple[int, int], ...] = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))


def select_best_resolution(size: tuple[int, int], candidates: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """LLaVA-NeXT's choice among ``candidates`` (width, height) for an image of ``size`` (width, height)."""
    w, h = size
    best, best_eff, best_waste = candidates[0], -1, math.inf
    for cw, ch in candidates:
        scale = min(cw / w, ch / h)
        dw, dh = int(w * scale), int(h * scale)
        effective = min(dw * dh, w * h)
        waste = cw * ch - effective
        if effective > best_eff or (effective == best_eff and waste < best_waste):
            best, best_eff, best_waste = (cw, ch), effective, waste
    return best


@dataclass(frozen=True)
class AnyResCount:
    tiles: int  # tiles of the chosen grid, thumbnail excluded
    grid: tuple[int, int]  # (columns, rows) of tiles
    tokens: int  # tokens the vision encoder computes: (tiles + thumbnail) * tile_grid**2


def anyres_tokens(width: int, height: int, tile_grid: int, patch: int = 16,
                  grids: Sequence[tuple[int, int]] = LLAVA_NEXT_GRIDS, thumbnail: bool = True) -> AnyResCount:
    """Tokens AnyRes spends on a ``width x height`` image with square tiles of ``tile_grid`` patches a side.

    ``grids`` are (columns, rows) pinpoints in tiles. With ``tile_grid=24, patch=14`` (336 px) this is
    LLaVA-NeXT's count: a 1280x720 frame picks 2x2 tiles and costs ``(4 + 1) * 576 = 2880`` tokens.
    """
    tile_px = tile_grid * patch
    candidates = [(c * tile_px, r * tile_px) for c, r in grids]
    cw, ch = select_best_resolution((width, height), candidates)
    cols, rows = cw // tile_px, ch // tile_px
    tiles = cols * rows
    return AnyResCount(tiles, (cols, rows), (tiles + int(thumbnail)) * tile_grid * tile_grid)


def square_grid_for(budget: int) -> int:
    """Side (in patches) of the square whose area is closest to ``budget`` without exceeding it."""
    return max(1, math.isqrt(budget))
