"""Pack length and bucketing: how long packs are, and how much padding they carry. Torch-free.

The dense-mask lowering computes ``pack_len**2`` attention scores per layer whatever the pack holds, so
its cost per image grows with the pack length; per-image kernels (the torch segment loop, the TensorRT
plugin, ONNX Runtime's PackedMultiHeadAttention) only pay ``sum L_i**2``. Two knobs keep the dense mask
near the per-image ideal:

* *capacity*: the most tokens first-fit-decreasing puts in one pack;
* *bucket*: packs are cut to their fill rounded up to a multiple of ``bucket`` tokens instead of padded
  to the capacity (ONNX Runtime takes any length; a TensorRT profile wants few distinct shapes, so a
  coarser bucket there). ``bucket=0`` pads every pack to the capacity (the plain :class:`Packer`).

:func:`recommended_packing` is the default the benchmark measures as ``packed``; choose it from
``navit bench --sweep-pack-len`` data (images/s against capacity and bucketing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from navit_deploy.packing.packer import Packable, PackedBatch, Packer
from navit_deploy.packing.windows import WindowSpec

MIN_PACK_TOKENS = 2  # the exported graphs' smallest token axis


def trim_pack(pack: PackedBatch, bucket: int) -> PackedBatch:
    """``pack`` cut to its valid tokens rounded up to a multiple of ``bucket`` (padding sits at the end)."""
    if bucket <= 0:
        return pack
    bucket = math.lcm(bucket, pack.unit)  # whole merge blocks
    n = max(MIN_PACK_TOKENS, math.ceil(pack.num_valid / bucket) * bucket)
    if n >= pack.pack_len:
        return pack
    wseg = pack.window_segment_ids[:n] if pack.window_segment_ids is not None else None
    return replace(pack, patches=pack.patches[:n], coords=pack.coords[:n], segment_ids=pack.segment_ids[:n],
                   valid=pack.valid[:n], window_segment_ids=wseg)


@dataclass(frozen=True)
class BucketedPacker(Packer):
    """A :class:`Packer` whose packs hold at most ``pack_len`` tokens (the capacity) and are cut to a
    multiple of ``bucket`` tokens (``1``: no padding at all; ``0``: padded to ``pack_len``)."""

    bucket: int = 1

    def build(self, items: Sequence[Packable], indices: Sequence[int]) -> PackedBatch:
        return trim_pack(super().build(items, indices), self.bucket)

    def describe(self) -> str:
        how = "padded" if self.bucket <= 0 else ("cut to fill" if self.bucket == 1 else f"cut to x{self.bucket}")
        return f"capacity {self.pack_len}, {how}, <= {self.max_images} img"


# Capacity of a pack for the dense mask, in tokens, when nothing else forces it: long enough that the
# per-call overhead and the GEMM shapes stay efficient, short enough that the masked-away cross-image
# scores stay a small share of the work (attention/linear FLOP ratio ~ pack_len / (6 * dim)).
DENSE_MIN_CAPACITY = 256
VARLEN_CAPACITY = 2048


def recommended_packing(budget: int, lowering: str = "dense", provider: str = "cpu",
                        max_images: int = 64, windows: "WindowSpec | None" = None) -> BucketedPacker:
    """The default packing for a per-image token ``budget`` and an attention lowering.

    Dense mask: capacity ``max(budget, DENSE_MIN_CAPACITY)``: a budget-sized image gets a pack of its
    own (attention exactly per image), small images share packs of up to 256 tokens (few model calls,
    cross-image attention work at most ~4-5x the ideal on a share of the FLOPs that is small at 256
    tokens). Measured with ``--sweep-pack-len 64,128,256,512,1024,2048`` on ONNX Runtime CPU: fastest
    or tied for every workload; 1024/2048 lose 1.5-4x on small images. Packs are cut to their fill
    (ONNX Runtime: any length) or to multiples of 64 tokens (TensorRT: few profile shapes).
    Per-image attention (segment loop, plugin, packed kernels): long packs (``VARLEN_CAPACITY``), cut.
    """
    bucket = 64 if provider == "tensorrt" else 1
    if lowering == "dense":
        capacity = max(budget, DENSE_MIN_CAPACITY)
    else:
        capacity = max(budget, VARLEN_CAPACITY)
    if windows is not None:
        capacity = math.ceil(capacity / windows.unit) * windows.unit
    return BucketedPacker(capacity, max_images, bucket, windows=windows)


def describe_packer(packer: Packer) -> str:
    if isinstance(packer, BucketedPacker):
        return packer.describe()
    return f"pack_len {packer.pack_len} padded, <= {packer.max_images} img"


def attention_waste(packs: Sequence[PackedBatch], lowering: str) -> float:
    """Executed / ideal attention work: ``sum pack_len**2 / sum L_i**2`` for the dense mask, 1 otherwise."""
    ideal = sum(int((p.seqlens.astype('int64') ** 2).sum()) for p in packs)
    if not ideal:
        return 1.0
    if lowering != "dense":
        return 1.0
    return sum(p.pack_len ** 2 for p in packs) / ideal
