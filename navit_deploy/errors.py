"""Typed errors raised across navit_deploy.

Every error names the problem and, where possible, what to do about it. Errors that concern one
image (decode, budget) are caught by the pipeline and reported for that image only.
"""

from __future__ import annotations


class NavitError(Exception):
    """Base class of every error this package raises on purpose."""


class ImageError(NavitError):
    """A single input image could not be used. The other images of a batch are unaffected."""


class ImageDecodeError(ImageError):
    """The file or buffer is missing, empty, truncated, corrupt, not an image, or of an unsupported mode."""


class UnsupportedInputError(ImageDecodeError):
    """The input is not something the front end takes (None, a number, a list, ...): not an image at all."""


class ImageTooLargeError(ImageError):
    """The image exceeds the decompression-bomb pixel limit."""


class BudgetError(ImageError):
    """The image cannot be resized to fit the token budget (e.g. an extreme aspect ratio)."""


class ConfigError(NavitError):
    """A model/deployment config is invalid or inconsistent."""


class CheckpointError(NavitError):
    """A checkpoint is missing, unreadable, or does not match its config."""


class PackingError(NavitError):
    """Images cannot be packed with the given pack length / images-per-pack limits."""


class ArtifactMismatchError(NavitError):
    """A deployment artifact (ONNX, engine, sidecar) does not match the model, config, or backend."""


class InputValidationError(NavitError):
    """Tensors fed to a runner have wrong names, dtypes, shapes, or non-finite values."""


class BackendUnavailableError(NavitError):
    """A requested backend (onnxruntime provider, TensorRT, CUDA) is not installed or not usable here."""


class PluginError(NavitError):
    """The TensorRT plugin library is missing, fails to load, or was built for another TensorRT."""


class OutputKindError(ArtifactMismatchError):
    """A command needs one kind of output (one pooled embedding per image) and the model gives another
    (merged visual tokens of a VLM tower), or the reverse."""
