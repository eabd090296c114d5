"""Host-side packing of prepared images into fixed-length sequences. Torch-free."""

from navit_deploy.packing.packer import PAD_SEGMENT, PackedBatch, Packer, build_pack, first_fit_decreasing, padding_fraction
from navit_deploy.packing.policy import BucketedPacker, recommended_packing
from navit_deploy.packing.streaming import StreamPacker, StreamPolicy, stream_packs
from navit_deploy.packing.windows import WindowSpec, split_tokens, window_order

__all__ = ["BucketedPacker", "PAD_SEGMENT", "PackedBatch", "Packer", "StreamPacker", "StreamPolicy", "build_pack",
           "first_fit_decreasing", "padding_fraction", "recommended_packing", "stream_packs", "WindowSpec", "split_tokens", "window_order"]
