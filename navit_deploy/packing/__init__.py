"""Host-side packing of prepared images into fixed-length sequences. Torch-free."""

from navit_deploy.packing.packer import PAD_SEGMENT, PackedBatch, Packer, build_pack, first_fit_decreasing, padding_fraction

__all__ = ["PAD_SEGMENT", "PackedBatch", "Packer", "build_pack", "first_fit_decreasing", "padding_fraction"]
