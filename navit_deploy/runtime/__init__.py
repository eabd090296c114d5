"""Torch-free runtime: runners (torch reference, ONNX Runtime, TensorRT) and the image pipeline."""

from navit_deploy.runtime.pipeline import Pipeline, PipelineStats
from navit_deploy.runtime.results import ImageResult
from navit_deploy.runtime.runner import INPUT_NAMES, OUTPUT_NAMES, PackLimits, Runner, RunnerOutput, validate_inputs

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "ImageResult", "PackLimits", "Pipeline", "PipelineStats", "Runner",
           "RunnerOutput", "validate_inputs"]
