"""TensorRT runner: runs an engine built by ``navit compile`` behind the :class:`Runner` interface. Torch-free.

Importing this module imports neither TensorRT nor CUDA; :class:`TensorRTRunner` imports them when
constructed and raises :class:`~navit_deploy.errors.BackendUnavailableError` with install guidance when they
are missing.

Before anything is deserialized the runner reads the engine's sidecar (``<engine>.json``) and refuses, with
:class:`~navit_deploy.errors.ArtifactMismatchError` and the ``navit compile`` command that fixes it, an engine
built with another TensorRT (major.minor), for another GPU (compute capability, and by default its name), from
other weights or another ONNX export than the caller expects, or an engine file its sidecar does not describe.

Execution follows TensorRT's name-based I/O API (TensorRT >= 10): per pack it picks the smallest optimization
profile that covers the pack's tokens, images and (windowed VLM towers) windows
(``set_optimization_profile_async`` when it changes), sets every input's shape (``set_input_shape``) and
address (``set_tensor_address``), sizes each output from ``get_tensor_shape`` once all input shapes are set,
enqueues with ``execute_async_v3`` on the runner's own CUDA stream, and copies the outputs back as float32 numpy
arrays. Device buffers are per tensor and grow only. One runner is not meant to be used from several threads at
once.

A VLM tower's engine (artifact ``output_kind`` "tokens") takes the pack's window inputs too and returns the
pack's merged tokens ``[T / merge**2, D]`` in window order, as :class:`~navit_deploy.runtime.onnx_runner.OnnxRunner`
does; ``windows`` tells the pipeline how to pack for it and how to restore each image's token order.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from navit_deploy.compile.compat import EngineInfo, check_engine, check_io_names, sha256_file
from navit_deploy.compile.profiles import PackProfile, choose_profile, limits_for
from navit_deploy.errors import ArtifactMismatchError, BackendUnavailableError, InputValidationError, NavitError
from navit_deploy.frontend.config import budget_flag
from navit_deploy.runtime.artifact import DeploymentArtifact, read_artifact, sidecar_path
from navit_deploy.runtime.runner import Runner, RunnerOutput, tokens_output


class TensorRTExecutionError(NavitError):
    """TensorRT refused a shape or failed to enqueue (details in TensorRT's log)."""


class TensorRTRunner(Runner):
    """Runs a TensorRT engine built by ``navit compile``.

    ``plugin``: the NavitPackedAttention library for ``trt-plugin`` engines (default: ``$NAVIT_PLUGIN_LIB``,
    then the path recorded at build time, then ``plugins/packed_attention/build``). ``device``: CUDA device
    index. ``expected_weights_sha256`` / ``expected_onnx_sha256``: refuse an engine built from anything else.
    ``check_gpu_name``: also refuse another GPU model of the same compute capability (default).
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike[str], plugin: str | os.PathLike[str] | None = None,
                 device: int = 0, expected_weights_sha256: str | None = None,
                 expected_onnx_sha256: str | None = None, check_gpu_name: bool = True) -> None:
        self.path = Path(engine_path)
        if not self.path.is_file():
            raise ArtifactMismatchError(f"TensorRT engine not found: {self.path}")
        if not sidecar_path(self.path).is_file():
            raise ArtifactMismatchError(f"{self.path} has no sidecar {sidecar_path(self.path).name}: it was not built "
                                        "by `navit compile`, which records what the engine needs. Build it with "
                                        f"`navit compile --onnx MODEL.onnx --out {self.path}`")
        self.artifact: DeploymentArtifact = read_artifact(self.path)
        self.info = EngineInfo.from_artifact(self.artifact, self.path)
        self.device = int(device)
        # Checks that need neither TensorRT nor a GPU come first.
        check_engine(self.path, self.info, engine_sha256=sha256_file(self.path),
                     expected_weights_sha256=expected_weights_sha256,
                     artifact_weights_sha256=self.artifact.weights_sha256, expected_onnx_sha256=expected_onnx_sha256)
        from navit_deploy.compile import trt_env

        self._env = trt_env
        self._trt = trt_env.import_tensorrt()
        self._cudart = trt_env.import_cudart()
        self.tensorrt_version = str(self._trt.__version__)
        self.gpu = trt_env.gpu_info(self.device)
        check_engine(self.path, self.info, trt_version=self.tensorrt_version, gpu=self.gpu,
                     check_gpu_name=check_gpu_name)
        self.plugin_path = self._resolve_plugin(plugin) if self.artifact.lowering == "trt-plugin" else None
        self.profiles: tuple[PackProfile, ...] = self.info.profiles
        self.precision = self.artifact.precision
        super().__init__(self.artifact.frontend.patch_dim, limits=limits_for(self.profiles))
        self.max_grid = self.artifact.frontend.max_grid
        self.input_names = tuple(self.artifact.inputs)
        self.output_kind = self.artifact.output_kind
        self.windows = self.artifact.windows
        self.last_profile: int | None = None
        self._profile_set: int | None = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: dict[str, list[int]] = {}  # name -> [device pointer, capacity in bytes]
        self._engine_inputs: list[str] = []
        self._engine_outputs: list[str] = []

    def _resolve_plugin(self, plugin: str | os.PathLike[str] | None) -> Path:
        from navit_deploy.compile.plugin_lib import PLUGIN_LIB_ENV, find_plugin_library

        explicit = plugin
        if explicit is None and not os.environ.get(PLUGIN_LIB_ENV):
            recorded = self.info.plugin_path
            explicit = recorded if recorded and Path(recorded).is_file() else None
        path = find_plugin_library(explicit)
        if self.info.plugin_sha256 and sha256_file(path) != self.info.plugin_sha256:
            warnings.warn(f"{path} is not the plugin library {self.path.name} was built with (sha256 differs); it "
                          "must be the same NavitPackedAttention version built for this TensorRT", stacklevel=3)
        return path

    # -- lifecycle -------------------------------------------------------------------------------------------

    def _activate(self) -> None:
        try:
            self._load()
        except BaseException:
            self._deactivate()  # release whatever was created before the failure
            raise

    def _load(self) -> None:
        trt, env, cudart = self._trt, self._env, self._cudart
        env.set_device(self.device)
        if self.plugin_path is not None:
            env.load_plugin(self.plugin_path)  # before deserializing: the engine references the plugin creator
        self._runtime = trt.Runtime(env.get_logger())
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            why = (f"the engine was built with TensorRT {self.info.tensorrt_version}, this is {self.tensorrt_version}"
                   if self.info.tensorrt_version != self.tensorrt_version else "see TensorRT's log above")
            hint = (f"; it needs the {self.plugin_path.name} plugin built for this TensorRT"
                    if self.plugin_path is not None else "")
            raise ArtifactMismatchError(f"TensorRT could not deserialize {self.path} ({why}{hint}). Rebuild it here: "
                                        f"navit compile --onnx {self.info.source_onnx} --out {self.path}")
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._engine_inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._engine_outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        check_io_names(self._engine_inputs, self._engine_outputs, str(self.path), self.artifact)
        self._check_engine_profiles()
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendUnavailableError(f"TensorRT could not create an execution context for {self.path} (out of "
                                          "GPU memory?); see TensorRT's log above")
        self._stream = env.cuda_call(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.last_profile = None
        self._profile_set = 0 if engine.num_optimization_profiles == 1 else None

    def _check_engine_profiles(self) -> None:
        """The engine's profiles must be the ones its sidecar lists (the runner selects by the sidecar)."""
        engine = self._engine
        found = [{n: tuple(tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(n, i))
                  for n in self._engine_inputs} for i in range(engine.num_optimization_profiles)]
        # Only the inputs the engine kept have profile shapes (TensorRT drops unused ones).
        want = [{n: s for n, s in p.shapes(self.patch_dim).items() if n in self._engine_inputs} for p in self.profiles]
        if found != want:
            raise ArtifactMismatchError(f"{self.path}: the engine's optimization profiles {found} are not those of its "
                                        f"sidecar {[p.describe() for p in self.profiles]}; rebuild it with "
                                        f"`navit compile --onnx {self.info.source_onnx} --out {self.path}`")

    def _deactivate(self) -> None:
        cudart, env = self._cudart, self._env
        if self._stream is not None:
            env.cuda_call(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        for ptr, _ in self._buffers.values():
            env.cuda_call(cudart.cudaFree(ptr), "cudaFree")
        self._buffers = {}
        if self._stream is not None:
            env.cuda_call(cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None
        # Release in dependency order: context, engine, runtime.
        self._context = None
        self._engine = None
        self._runtime = None

    # -- inference -------------------------------------------------------------------------------------------

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for ``name``; reused, grown (never shrunk) as needed."""
        cudart, env = self._cudart, self._env
        entry = self._buffers.get(name)
        if entry is None or entry[1] < nbytes:
            if entry is not None:
                env.cuda_call(cudart.cudaFree(entry[0]), "cudaFree")
                del self._buffers[name]
            size = max(int(nbytes), 256)
            ptr = int(env.cuda_call(cudart.cudaMalloc(size), f"cudaMalloc({size})"))
            entry = self._buffers[name] = [ptr, size]
        return entry[0]

    def _set_profile(self, index: int) -> None:
        if self._profile_set != index:
            ok = self._context.set_optimization_profile_async(index, int(self._stream))
            if not ok:
                raise TensorRTExecutionError(f"TensorRT refused optimization profile {index} of {self.path}")
            self._profile_set = index
        self.last_profile = index

    def _infer(self, feed: dict[str, np.ndarray]) -> RunnerOutput:
        trt, cudart, env, ctx = self._trt, self._cudart, self._env, self._context
        if int(feed["coords"].max(initial=0)) >= self.max_grid:
            raise InputValidationError(f"patch coordinate {int(feed['coords'].max())} is outside the model's "
                                       f"{self.max_grid}x{self.max_grid} positional table; lower the budget "
                                       f"({budget_flag(self.artifact.frontend)})")
        tokens, images = int(feed["patches"].shape[0]), int(feed["cu_seqlens"].shape[0]) - 1
        windows = int(feed["window_cu_seqlens"].shape[0]) - 1 if "window_cu_seqlens" in feed else None
        index = choose_profile(self.profiles, tokens, images, windows)
        self._set_profile(index)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        keep = []  # host arrays must live until the stream is synchronized
        for name in self._engine_inputs:
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            host = np.ascontiguousarray(feed[name], dtype=dtype)
            keep.append(host)
            if not ctx.set_input_shape(name, host.shape):
                raise InputValidationError(f"TensorRT rejects shape {list(host.shape)} for {name!r} with profile "
                                           f"{index} ({self.profiles[index].describe()})")
            if self._engine.is_shape_inference_io(name):
                ptr = host.ctypes.data  # shape tensors are read by TensorRT from host memory
            else:
                ptr = self._device_buffer(name, host.nbytes)
                env.cuda_call(cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, self._stream),
                              f"cudaMemcpyAsync({name})")
            if not ctx.set_tensor_address(name, ptr):
                raise TensorRTExecutionError(f"TensorRT refused the address of input {name!r}")
        try:
            missing = ctx.infer_shapes()
        except RuntimeError as exc:
            raise TensorRTExecutionError(f"TensorRT shape inference failed for this pack: {exc}") from exc
        if missing:
            raise TensorRTExecutionError(f"TensorRT cannot infer output shapes; unspecified inputs: {list(missing)}")
        results = {}
        for name in self._engine_outputs:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise TensorRTExecutionError(f"output {name!r} has unresolved shape {shape}")
            out = np.empty(shape, dtype=np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))))
            ptr = self._device_buffer(name, out.nbytes)
            if not ctx.set_tensor_address(name, ptr):
                raise TensorRTExecutionError(f"TensorRT refused the address of output {name!r}")
            results[name] = (out, ptr)
        if not ctx.execute_async_v3(int(self._stream)):
            raise TensorRTExecutionError(f"TensorRT failed to enqueue {self.path.name} (see TensorRT's log above)")
        for name, (out, ptr) in results.items():
            if out.nbytes:
                env.cuda_call(cudart.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, d2h, self._stream),
                              f"cudaMemcpyAsync({name})")
        env.cuda_call(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        del keep
        return self._output({name: out for name, (out, _) in results.items()})

    def _output(self, arrays: dict[str, np.ndarray]) -> RunnerOutput:
        """The engine's outputs as the ONNX runner returns them (merged tokens, or embeddings and logits)."""
        art = self.artifact
        if self.output_kind == "tokens":
            return tokens_output(arrays["tokens"], art.token_dim, self.path, "rebuild the engine")
        emb = np.asarray(arrays["embeddings"], dtype=np.float32)
        logits = np.asarray(arrays["logits"], dtype=np.float32) if "logits" in arrays else None
        return RunnerOutput(emb, logits)

    @property
    def engine_inputs(self) -> tuple[str, ...]:
        """Inputs the engine kept (TensorRT drops inputs the network does not use); a subset of the artifact's."""
        return tuple(self._engine_inputs) if self._engine_inputs else tuple(self.input_names)


__all__ = ["TensorRTExecutionError", "TensorRTRunner"]
