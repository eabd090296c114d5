"""Image front end: load, budget, resize at native aspect, normalize, patchify. Torch-free."""

from navit_deploy.frontend.budget import target_size
from navit_deploy.frontend.config import FrontendConfig
from navit_deploy.frontend.loading import ImageSource, describe_source, load_image
from navit_deploy.frontend.patchify import PreparedImage, grid_coords, patchify, prepare_image, prepare_pil

__all__ = [
    "FrontendConfig",
    "ImageSource",
    "PreparedImage",
    "describe_source",
    "grid_coords",
    "load_image",
    "patchify",
    "prepare_image",
    "prepare_pil",
    "target_size",
]
