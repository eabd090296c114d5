"""A small fake of the TensorRT Python API and of cuda-python's runtime, for the runner's logic without a GPU.

It mirrors only the calls :class:`TensorRTRunner` makes, with the documented semantics (name-based I/O,
profile 0 by default, shapes validated against the active profile, input shapes invalidated by a profile
switch). "Device" memory is host memory allocated by ``cudaMalloc``, so ``cudaMemcpyAsync`` is a memmove.
The engine computes ``embeddings[b] = mean of image b's patch rows (first D columns)`` and
``logits = embeddings[:, :C]``; :class:`OnnxEngine` instead executes an exported ONNX model with ONNX Runtime on
the inputs read back from "device" memory (a VLM tower's merged tokens, say), with its output shapes computed
from the input shapes as TensorRT would. This tests our bookkeeping, not TensorRT: the real check is the GPU test.
"""

from __future__ import annotations

import ctypes
import enum
from types import SimpleNamespace

import numpy as np

from navit_deploy.compile.profiles import PackProfile

INPUTS = {"patches": np.float32, "coords": np.int64, "segment_ids": np.int64, "cu_seqlens": np.int32}
OUTPUTS = {"embeddings": np.float32, "logits": np.float32}


def reference(feed: dict[str, np.ndarray], dim: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    cu = feed["cu_seqlens"]
    emb = np.stack([feed["patches"][cu[b]:cu[b + 1], :dim].mean(axis=0) for b in range(len(cu) - 1)])
    return emb.astype(np.float32), emb[:, :classes].astype(np.float32)


# ---------------------------------------------------------------------------------------------------- cudart


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class FakeStream:
    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __int__(self) -> int:
        return self.handle


class FakeCudart:
    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind

    def __init__(self, name: str = "NVIDIA Fake GPU", cc: tuple[int, int] = (8, 7), devices: int = 1) -> None:
        self.props = SimpleNamespace(name=name.encode(), major=cc[0], minor=cc[1])
        self.devices = devices
        self.memory: dict[int, ctypes.Array] = {}
        self.mallocs = 0
        self.frees = 0
        self.streams = 0
        self.current = None

    def cudaGetDeviceCount(self):
        return cudaError_t.cudaSuccess, self.devices

    def cudaSetDevice(self, device):
        self.current = device
        return (cudaError_t.cudaSuccess,)

    def cudaGetDeviceProperties(self, device):
        return cudaError_t.cudaSuccess, self.props

    def cudaGetErrorName(self, err):
        return cudaError_t.cudaSuccess, cudaError_t(err).name.encode()

    def cudaStreamCreate(self):
        self.streams += 1
        return cudaError_t.cudaSuccess, FakeStream(1000 + self.streams)

    def cudaStreamSynchronize(self, stream):
        assert isinstance(stream, FakeStream)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamDestroy(self, stream):
        self.streams -= 1
        return (cudaError_t.cudaSuccess,)

    def cudaMalloc(self, size):
        buf = ctypes.create_string_buffer(int(size))
        self.memory[ctypes.addressof(buf)] = buf
        self.mallocs += 1
        return cudaError_t.cudaSuccess, ctypes.addressof(buf)

    def cudaFree(self, ptr):
        del self.memory[int(ptr)]
        self.frees += 1
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        assert isinstance(dst, int) and isinstance(src, int) and isinstance(stream, FakeStream)
        device = dst if kind == cudaMemcpyKind.cudaMemcpyHostToDevice else src
        assert any(a <= device and device + count <= a + len(b) for a, b in self.memory.items()), "not device memory"
        ctypes.memmove(dst, src, count)
        return (cudaError_t.cudaSuccess,)


# ---------------------------------------------------------------------------------------------------- tensorrt


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.profile = 0
        self.profile_switches: list[int] = []
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.executions = 0
        self.fed: list[dict[str, np.ndarray]] = []  # what each execution read from its inputs' device memory

    def set_optimization_profile_async(self, index, stream_handle):
        assert isinstance(stream_handle, int)
        if not 0 <= index < len(self.engine.profiles):
            return False
        self.profile = index
        self.profile_switches.append(index)
        self.shapes = {}  # a switch invalidates the input shapes
        return True

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.get_tensor_profile_shape(name, self.profile)
        shape = tuple(shape)
        if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name, ptr):
        assert isinstance(ptr, int)
        self.addresses[name] = ptr
        return True

    def infer_shapes(self):
        return [n for n in self.engine.inputs if n not in self.shapes]

    def get_tensor_shape(self, name):
        if name in self.engine.inputs:
            return self.shapes.get(name, (-1,))
        if self.infer_shapes():  # TensorRT: -1 where an output depends on an input shape not set yet
            return (-1, -1)
        return self.engine.output_shape(name, self.shapes)

    def _array(self, name, dtype, shape):
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = (ctypes.c_char * n).from_address(self.addresses[name])
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def execute_async_v3(self, stream_handle):
        assert isinstance(stream_handle, int)
        if self.infer_shapes():
            return False
        engine = self.engine
        feed = {n: self._array(n, engine.get_tensor_dtype(n), self.shapes[n]).copy() for n in engine.inputs}
        self.fed.append(feed)
        for name, value in engine.compute(feed).items():
            want = tuple(engine.output_shape(name, self.shapes))
            assert value.shape == want, f"{name}: computed {value.shape}, TensorRT would report {want}"
            self._array(name, engine.get_tensor_dtype(name), value.shape)[...] = value
        self.executions += 1
        return True


class FakeEngine:
    def __init__(self, profiles, patch_dim=768, dim=128, classes=4, inputs=tuple(INPUTS)) -> None:
        self.profiles = list(profiles)
        self.patch_dim, self.dim, self.classes = patch_dim, dim, classes
        self.inputs = list(inputs)
        self.names = self.inputs + list(OUTPUTS)
        self.contexts: list[FakeContext] = []

    num_io_tensors = property(lambda self: len(self.names))
    num_optimization_profiles = property(lambda self: len(self.profiles))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return {**INPUTS, **OUTPUTS}[name]

    def output_shape(self, name, shapes):
        b = shapes["cu_seqlens"][0] - 1
        return (b, self.dim) if name == "embeddings" else (b, self.classes)

    def compute(self, feed):
        emb, logits = reference(feed, self.dim, self.classes)
        return {"embeddings": emb, "logits": logits}

    def is_shape_inference_io(self, name):
        return False

    def get_tensor_profile_shape(self, name, index):
        p: PackProfile = self.profiles[index]
        return [list(s) for s in p.shapes(self.patch_dim)[name]]

    def create_execution_context(self):
        ctx = FakeContext(self)
        self.contexts.append(ctx)
        return ctx


ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32}


def unused_inputs(onnx_path) -> tuple[str, ...]:
    """Graph inputs no node reads: TensorRT's builder drops them ("Unused Input"), so its engine lacks them."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    read = {i for n in [*model.graph.node, *(n for f in model.functions for n in f.node)] for i in n.input}
    return tuple(i.name for i in model.graph.input if i.name not in read)


class OnnxEngine(FakeEngine):
    """A fake engine that runs an exported model with ONNX Runtime: its I/O names and dtypes are the model's,
    less the inputs no node reads (TensorRT drops them; ONNX Runtime still wants them, so they get zeros, which
    also shows they are unused), its profiles those given. Output shapes: ``tokens [T / unit, D]``,
    ``embeddings``/``logits`` ``[B, .]``."""

    def __init__(self, onnx_path, profiles, unit: int = 1, reference_ops: bool = False) -> None:
        from navit_deploy.runtime.onnx_runner import OnnxRunner

        runner = OnnxRunner(onnx_path, reference_ops=reference_ops).activate()
        self.session = runner.session
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        self.dropped = unused_inputs(onnx_path)
        super().__init__(profiles, patch_dim=int(ins[0].shape[1]),
                         inputs=[i.name for i in ins if i.name not in self.dropped])
        self.dtypes = {v.name: ORT_TYPES[v.type] for v in [*ins, *outs]}
        self.widths = {o.name: int(o.shape[1]) for o in outs}
        self.dropped_shapes = {i.name: tuple(d if isinstance(d, int) else 2 for d in i.shape) for i in ins
                               if i.name in self.dropped}
        self.names = self.inputs + [o.name for o in outs]
        self.unit = unit

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def output_shape(self, name, shapes):
        rows = shapes["patches"][0] // self.unit if name == "tokens" else shapes["cu_seqlens"][0] - 1
        return (rows, self.widths[name])

    def compute(self, feed):
        names = self.names[len(self.inputs):]
        zeros = {n: np.zeros(self.dropped_shapes[n], dtype=self.dtypes[n]) for n in self.dropped}
        return dict(zip(names, self.session.run(names, {**feed, **zeros})))


class FakeRegistry:
    def __init__(self, registers: bool = True) -> None:
        self.loaded: list[str] = []
        self.registers = registers

    def load_library(self, path):
        self.loaded.append(path)
        return object() if self.registers else None

    def get_creator(self, name, version, namespace):
        return object() if self.registers and self.loaded else None


class FakeTensorRT:
    """Stands in for the ``tensorrt`` module."""

    TensorIOMode = TensorIOMode

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    def __init__(self, version: str, engine: FakeEngine | None, registry: FakeRegistry | None = None) -> None:
        self.__version__ = version
        self.engine = engine
        self.registry = registry or FakeRegistry()
        self.deserialized: list[bytes] = []
        outer = self

        class Runtime:
            def __init__(self, logger):
                self.logger = logger

            def deserialize_cuda_engine(self, data):
                outer.deserialized.append(bytes(data))
                return outer.engine

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype):
        return dtype

    def get_plugin_registry(self):
        return self.registry
