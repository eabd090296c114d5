"""Open the right runner for an artifact path (``.onnx`` -> ONNX Runtime, ``.engine``/``.plan`` -> TensorRT)."""

from __future__ import annotations

from pathlib import Path

from navit_deploy.errors import ArtifactMismatchError
from navit_deploy.frontend import FrontendConfig
from navit_deploy.frontend.loading import ChannelOrder
from navit_deploy.packing import Packer, recommended_packing
from navit_deploy.runtime.artifact import DeploymentArtifact
from navit_deploy.runtime.pipeline import Pipeline
from navit_deploy.runtime.runner import Runner

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def open_runner(path: str | Path, provider: str = "cpu", reference_ops: bool = False,
                threads: int | None = None, plugin: str | Path | None = None,
                device: int = 0) -> tuple[Runner, DeploymentArtifact]:
    """A runner for an exported model or a compiled engine, and the artifact description it carries.

    ``provider``/``reference_ops``/``threads`` apply to ONNX models; ``plugin``/``device`` to engines.
    """
    p = Path(path)
    if p.suffix == ".onnx":
        from navit_deploy.runtime.onnx_runner import OnnxRunner

        runner = OnnxRunner(p, provider=provider, threads=threads, reference_ops=reference_ops)
        return runner, runner.artifact
    if p.suffix in ENGINE_SUFFIXES:
        from navit_deploy.runtime.tensorrt_runner import TensorRTRunner

        trt_runner = TensorRTRunner(p, plugin=plugin, device=device)
        return trt_runner, trt_runner.artifact
    raise ArtifactMismatchError(f"{p}: expected an .onnx model or a TensorRT engine ({', '.join(ENGINE_SUFFIXES)})")


def pipeline_for(runner: Runner, artifact: DeploymentArtifact, frontend: FrontendConfig | None = None,
                 pack_len: int | None = None, channel_order: ChannelOrder = "RGB") -> Pipeline:
    """The pipeline for an artifact: its front end, and the measured default packing for its lowering and
    backend (see :func:`navit_deploy.packing.recommended_packing`) unless ``pack_len`` fixes padded packs.

    ``channel_order`` is the order of numpy frames given to the pipeline ("BGR" for OpenCV frames)."""
    fe = frontend or artifact.frontend
    if pack_len:
        packer: Packer = Packer(pack_len, artifact.max_images)
    else:
        backend = getattr(runner, "provider", runner.name)
        packer = recommended_packing(fe.max_tokens_per_image, artifact.lowering, backend, artifact.max_images)
    return Pipeline(runner, fe, packer, channel_order=channel_order)
