"""Window attention as packing (Qwen2.5-VL towers). Torch-free.

A windowed block attends within windows of ``window x window`` merged tokens (``window_size`` pixels /
patch / merge; 4 for Qwen2.5-VL's 112 px). That is block-diagonal attention again, over windows instead of
images: the host puts each image's tokens in window order before packing and gives the pack a second pair
of length tensors (``window_segment_ids``, ``window_cu_seqlens``); full-attention blocks keep the images'.
The order is transformers' ``get_vision_window_index``: windows tile the merged grid from its top-left
corner (edge windows are cut, empty ones dropped), raster order over windows, raster order of the merge
blocks within a window; the ``merge x merge`` patches of a block stay contiguous. The model's merged output
comes out in window order; :func:`split_tokens` puts each image's tokens back in the model's own order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from navit_deploy.errors import PackingError


@dataclass(frozen=True)
class WindowSpec:
    """``merge``: the merger's block side in patches; ``window``: a window's side in merged tokens (0: the model
    has no windowed blocks, tokens keep the model order)."""

    merge: int = 2
    window: int = 0

    @property
    def unit(self) -> int:
        """Patches per merged token (``merge**2``): packs hold whole blocks."""
        return self.merge * self.merge


def window_order(grid: tuple[int, int], merge: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """For an image of ``grid`` (rows, cols) patches: the merge blocks in window order (``perm[j]`` is the
    model-order index of the j-th block) and the number of patches of each non-empty window."""
    gh, gw = grid
    if gh % merge or gw % merge:
        raise PackingError(f"grid {gh}x{gw} is not a multiple of the merge size {merge}")
    lh, lw = gh // merge, gw // merge
    index = np.arange(lh * lw).reshape(lh, lw)
    if window <= 0:
        return index.reshape(-1), np.array([gh * gw], dtype=np.int64)
    nh, nw = -(-lh // window), -(-lw // window)
    padded = np.full((nh * window, nw * window), -1, dtype=np.int64)
    padded[:lh, :lw] = index
    tiles = padded.reshape(nh, window, nw, window).transpose(0, 2, 1, 3).reshape(nh * nw, window * window)
    sizes = (tiles >= 0).sum(axis=1)
    flat = tiles.reshape(-1)
    return flat[flat >= 0], sizes[sizes > 0].astype(np.int64) * merge * merge


def to_window_order(patches: np.ndarray, coords: np.ndarray, perm: np.ndarray, unit: int) -> tuple[np.ndarray, np.ndarray]:
    """An image's patches and coords (model order, blocks of ``unit`` contiguous patches) in window order."""
    n = patches.shape[0]
    idx = (perm[:, None] * unit + np.arange(unit)[None, :]).reshape(-1)
    if idx.shape[0] != n:
        raise PackingError(f"{n} patches are not the {idx.shape[0]} of the image's window order")
    return patches[idx], coords[idx]


def split_tokens(tokens: np.ndarray, cu_seqlens: np.ndarray, unit: int,
                 block_order: list[np.ndarray] | None) -> list[np.ndarray]:
    """Each image's merged tokens ``[n_b / unit, D]`` from a pack's output ``[L / unit, D]``, in the model's own
    order: ``block_order[b]`` (the window permutation of image b, None when the pack has no windows) is undone."""
    out = []
    for b in range(cu_seqlens.shape[0] - 1):
        s, e = int(cu_seqlens[b]) // unit, int(cu_seqlens[b + 1]) // unit
        rows = tokens[s:e]
        if block_order is not None:
            restored = np.empty_like(rows)
            restored[block_order[b]] = rows
            rows = restored
        out.append(rows)
    return out
