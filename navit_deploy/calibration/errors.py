"""Typed errors of the quantization tools (all :class:`~navit_deploy.errors.NavitError` subclasses)."""

from __future__ import annotations

from navit_deploy.errors import ArtifactMismatchError, ConfigError, ImageError


class CalibrationDataError(ConfigError):
    """The calibration set is unusable: too few images survive the front end (at least 8 are needed)."""


class CalibrationImagesUnreadableError(CalibrationDataError, ImageError):
    """Every calibration image failed to load or to fit the model's budget / pack length."""


class AlreadyQuantizedError(ArtifactMismatchError):
    """The input model is already INT8 (Q/DQ or quantized operators) or FP16; quantize the FP32 export instead."""
