"""INT8 and FP16 quantization of exported NaViT models, calibrated on the deployment front end and packer.

Entry points: :func:`quantize_model` (what ``navit quantize`` runs) and :func:`accuracy_report`.
Needs the ``torch`` extra's ``onnx`` (and ``onnxconverter-common`` for FP16); the runtime stays torch-free.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AccuracyReport", "CalibrationReader", "QuantizeResult", "accuracy_report", "quantize_model"]


def __getattr__(name: str) -> Any:  # lazy: importing the package must not pull in onnx / onnxruntime.quantization
    if name in ("quantize_model", "QuantizeResult"):
        from navit_deploy.calibration import quantize

        return getattr(quantize, name)
    if name in ("accuracy_report", "AccuracyReport"):
        from navit_deploy.calibration import report

        return getattr(report, name)
    if name == "CalibrationReader":
        from navit_deploy.calibration.reader import CalibrationReader

        return CalibrationReader
    raise AttributeError(name)
