"""Host-side packing of prepared images into fixed-length sequences. Torch-free."""

from navit_deploy.packing.packer import PAD_SEGMENT, PackedBatch, Packer, build_pack, first_fit_decreasing, padding_fraction

from navit_deploy.packing.policy import BucketedPacker, recommended_packing  # noqa: E402

__all__ = ["BucketedPacker", "recommended_packing", "PAD_SEGMENT", "PackedBatch", "Packer", "build_pack", "first_fit_decreasing", "padding_fraction"]
