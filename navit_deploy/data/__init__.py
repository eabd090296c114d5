"""Datasets: a procedural camera/document classification set, users' image folders, builtin samples.

Torch-free: images are PIL images, labels ints; scikit-image is imported only when a procedural or
builtin sample is rendered.
"""

from navit_deploy.data.image_folder import IMAGE_EXTENSIONS, ImageFolderDataset, list_images
from navit_deploy.data.procedural import (
    CLASSES,
    KINDS,
    THEMES,
    ProceduralDataset,
    SampleInfo,
    render_sample,
    unit_size,
)
from navit_deploy.data.sample_images import builtin_sample_images, write_builtin_samples

__all__ = [
    "CLASSES",
    "IMAGE_EXTENSIONS",
    "KINDS",
    "THEMES",
    "ImageFolderDataset",
    "ProceduralDataset",
    "SampleInfo",
    "builtin_sample_images",
    "list_images",
    "render_sample",
    "unit_size",
    "write_builtin_samples",
]
