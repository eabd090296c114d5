"""First-fit-decreasing packing of prepared images into fixed-length token sequences. Torch-free.

The packer decides everything data-dependent (how many images, how many tokens each) on the host, so
the model forward sees only flat tensors and can be exported with dynamic axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol, Sequence

import numpy as np

from navit_deploy.errors import PackingError
from navit_deploy.packing.windows import WindowSpec, to_window_order, window_order

PAD_SEGMENT = -1


class Packable(Protocol):
    """Anything with patches ``[n, D]`` and coords ``[n, 2]`` (e.g. :class:`PreparedImage`)."""

    patches: np.ndarray
    coords: np.ndarray

    @property
    def num_tokens(self) -> int: ...


@dataclass(frozen=True)
class PackedBatch:
    """One fixed-length pack of images: the model's inputs plus the map back to the caller's order.

    ``patches [L, C*p*p]`` float32, ``coords [L, 2]`` int64 (row, col), ``segment_ids [L]`` int64 with
    ``-1`` on padding, ``cu_seqlens [B+1]`` int32, ``valid [L]`` bool, ``image_index [B]`` int64 giving,
    for the b-th image of the pack, its position in the caller's input sequence. Images occupy
    contiguous token ranges ``cu_seqlens[b]:cu_seqlens[b+1]``; padding sits at the end.

    Packs for a VLM tower (see :mod:`navit_deploy.packing.windows`): ``unit`` patches per merged token;
    with windows, each image's tokens are in window order, ``window_segment_ids [L]`` / ``window_cu_seqlens
    [W+1]`` are the windows' segment ids and lengths, and ``block_order[b]`` is image b's window permutation.
    """

    patches: np.ndarray
    coords: np.ndarray
    segment_ids: np.ndarray
    cu_seqlens: np.ndarray
    valid: np.ndarray
    image_index: np.ndarray
    window_segment_ids: np.ndarray | None = None
    window_cu_seqlens: np.ndarray | None = None
    block_order: tuple[np.ndarray, ...] | None = None
    unit: int = 1

    @property
    def pack_len(self) -> int:
        return int(self.patches.shape[0])

    @property
    def num_images(self) -> int:
        return int(self.cu_seqlens.shape[0] - 1)

    @property
    def num_valid(self) -> int:
        return int(self.cu_seqlens[-1])

    @property
    def seqlens(self) -> np.ndarray:
        return np.diff(self.cu_seqlens)

    def model_inputs(self) -> dict[str, np.ndarray]:
        """The tensors the model takes, by their ONNX input names (four, six with windows)."""
        feed = {
            "patches": self.patches,
            "coords": self.coords,
            "segment_ids": self.segment_ids,
            "cu_seqlens": self.cu_seqlens,
        }
        if self.window_cu_seqlens is not None:
            feed["window_segment_ids"] = self.window_segment_ids
            feed["window_cu_seqlens"] = self.window_cu_seqlens
        return feed


def build_pack(items: Sequence[Packable], image_index: Sequence[int], pack_len: int | None = None,
               windows: WindowSpec | None = None) -> PackedBatch:
    """Concatenate ``items`` into one pack, zero-padded to ``pack_len`` (no padding when None).

    ``windows``: a VLM tower's pack (tokens in whole merge blocks; with ``windows.window``, each image in window
    order with the window lengths), see :mod:`navit_deploy.packing.windows`."""
    if not items:
        raise PackingError("cannot build a pack with no images")
    lengths = np.array([it.num_tokens for it in items], dtype=np.int64)
    if np.any(lengths <= 0):
        raise PackingError("every image in a pack needs at least one token")
    total = int(lengths.sum())
    length = total if pack_len is None else int(pack_len)
    if total > length:
        raise PackingError(f"{total} tokens do not fit a pack of length {length}")
    unit = windows.unit if windows is not None else 1
    if length % unit:
        raise PackingError(f"a pack of {length} tokens does not hold whole {unit}-token merge blocks; "
                           f"use a pack length that is a multiple of {unit}")
    dim = items[0].patches.shape[1]
    patches = np.zeros((length, dim), dtype=np.float32)
    coords = np.zeros((length, 2), dtype=np.int64)
    segment_ids = np.full((length,), PAD_SEGMENT, dtype=np.int64)
    cu = np.zeros(len(items) + 1, dtype=np.int32)
    cu[1:] = np.cumsum(lengths)
    win_sizes: list[np.ndarray] = []
    orders: list[np.ndarray] = []
    for b, it in enumerate(items):
        if it.patches.shape[1] != dim:
            raise PackingError(f"patch width mismatch in pack: {it.patches.shape[1]} vs {dim}")
        s, e = int(cu[b]), int(cu[b + 1])
        if windows is not None and windows.window > 0:
            perm, sizes = window_order(tuple(it.grid), windows.merge, windows.window)  # type: ignore[attr-defined]
            patches[s:e], coords[s:e] = to_window_order(it.patches, it.coords, perm, unit)
            orders.append(perm)
            win_sizes.append(sizes)
        else:
            if (e - s) % unit:
                raise PackingError(f"an image of {e - s} tokens is not whole {unit}-token merge blocks")
            patches[s:e] = it.patches
            coords[s:e] = it.coords
        segment_ids[s:e] = b
    valid = segment_ids >= 0
    index = np.asarray(image_index, dtype=np.int64)
    if not orders:
        return PackedBatch(patches, coords, segment_ids, cu, valid, index, unit=unit)
    sizes = np.concatenate(win_sizes)
    wcu = np.zeros(sizes.shape[0] + 1, dtype=np.int32)
    wcu[1:] = np.cumsum(sizes)
    wseg = np.full((length,), PAD_SEGMENT, dtype=np.int64)
    wseg[:total] = np.repeat(np.arange(sizes.shape[0], dtype=np.int64), sizes)
    return PackedBatch(patches, coords, segment_ids, cu, valid, index, wseg, wcu, tuple(orders), unit)


def first_fit_decreasing(lengths: Sequence[int], pack_len: int, max_images: int) -> list[list[int]]:
    """Assign item indices to bins of capacity ``pack_len`` holding at most ``max_images`` items.

    Items are placed longest first into the first bin with room. Within a bin, items keep their
    input order (so results are stable). Raises :class:`PackingError` for an item longer than a pack.
    """
    if pack_len <= 0 or max_images <= 0:
        raise PackingError(f"pack_len and max_images must be positive, got {pack_len}, {max_images}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        if n > pack_len:
            raise PackingError(f"image {i} has {n} tokens, more than the pack length {pack_len}")
        for b in range(len(bins)):
            if room[b] >= n and len(bins[b]) < max_images:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(pack_len - n)
    return [sorted(b) for b in bins]


@dataclass(frozen=True)
class Packer:
    """Packs prepared images into fixed-length :class:`PackedBatch` es.

    ``pack_len`` is the token length of every pack; ``max_images`` caps images per pack (it bounds the
    image axis of the exported model and the TensorRT profile).
    """

    pack_len: int = 1024
    max_images: int = 64
    windows: WindowSpec | None = field(default=None, kw_only=True)  # a VLM tower's merge blocks and windows

    def build(self, items: Sequence[Packable], indices: Sequence[int]) -> PackedBatch:
        """One pack of ``items`` (at most ``pack_len`` tokens and ``max_images`` images), padded to ``pack_len``."""
        return build_pack(items, indices, self.pack_len, self.windows)

    def pack(self, items: Sequence[Packable], indices: Sequence[int] | None = None) -> list[PackedBatch]:
        """Pack all ``items``; ``indices`` (default ``0..n-1``) are the caller's positions reported back."""
        if indices is None:
            indices = range(len(items))
        indices = list(indices)
        bins = first_fit_decreasing([it.num_tokens for it in items], self.pack_len, self.max_images)
        return [self.build([items[i] for i in b], [indices[i] for i in b]) for b in bins]

    def stream(self, items: Iterable[tuple[int, Packable]], buffer: int = 64, min_fill: float = 0.98,
               max_delay: int | None = None) -> Iterator[PackedBatch]:
        """Pack an unbounded stream of ``(index, item)`` pairs holding at most ``buffer`` items at a time.

        A pack runs once it is filled to ``min_fill``, or when one of its items has waited for ``max_delay``
        later items (default ``buffer``), or when ``buffer`` items wait; everything left is flushed when the
        stream ends. So memory stays bounded, and no item waits indefinitely for pack-mates. For a live
        feed with time bounds, see :meth:`navit_deploy.runtime.Pipeline.stream`.
        """
        from navit_deploy.packing.streaming import StreamPolicy, stream_packs

        yield from stream_packs(self, items, StreamPolicy(buffer, min_fill, max_delay))


def padding_fraction(packs: Sequence[PackedBatch]) -> float:
    """Fraction of computed tokens that are padding across ``packs``."""
    total = sum(p.pack_len for p in packs)
    return 0.0 if total == 0 else 1.0 - sum(p.num_valid for p in packs) / total
