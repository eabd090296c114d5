"""A fake of the TensorRT ONNX parser and of Polygraphy's build loaders, for ``compile_engine`` without TensorRT.

It mirrors only what :func:`navit_deploy.compile.engine.compile_engine` calls, with the documented shapes of
the results (``IParserError.node_operator()/node_name()/desc()``, network inputs with ``is_shape_tensor``,
``CreateConfig`` lazily called by ``EngineBytesFromNetwork``). ``FakeBuild.install(monkeypatch)`` wires it
into ``navit_deploy.compile`` (TensorRT module, GPU query, Polygraphy); the test then calls ``compile_engine``.
This checks our error classification and bookkeeping, not TensorRT: the real check is the GPU end-to-end test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

from tests.compile.conftest import FAKE_GPU

NETWORK_INPUTS = ("patches", "coords", "segment_ids", "cu_seqlens")
NETWORK_OUTPUTS = ("embeddings", "logits")


class FakePolygraphyException(Exception):
    """Stands in for ``polygraphy.exception.PolygraphyException``."""


@dataclass
class FakeParserError:
    op: str
    node: str
    message: str

    def node_operator(self) -> str:
        return self.op

    def node_name(self) -> str:
        return self.node

    def desc(self) -> str:
        return self.message


class FakeNetwork:
    """Starts as the pooled NaViT's I/O; the fake parser replaces it with the parsed ONNX file's, as TensorRT's
    parser populates the network (less ``dropped`` inputs, which TensorRT removes when the graph does not use them)."""

    def __init__(self) -> None:
        self.inputs = [SimpleNamespace(name=n, is_shape_tensor=False) for n in NETWORK_INPUTS]
        self.outputs = [SimpleNamespace(name=n) for n in NETWORK_OUTPUTS]

    def populate(self, path: str, dropped: tuple[str, ...] = ()) -> None:
        import onnx

        graph = onnx.load(path, load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        self.inputs = [SimpleNamespace(name=i.name, is_shape_tensor=False) for i in graph.input
                       if i.name not in inits and i.name not in dropped]
        self.outputs = [SimpleNamespace(name=o.name) for o in graph.output]

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))

    def get_input(self, i: int) -> Any:
        return self.inputs[i]

    def get_output(self, i: int) -> Any:
        return self.outputs[i]


@dataclass
class FakeBuild:
    """One fake TensorRT + Polygraphy installation.

    ``parser_errors``: what the ONNX parser reports; ``build_raises``: an exception the lazy build raises
    (as Polygraphy's ``CreateConfig`` would from inside ``EngineBytesFromNetwork``).
    """

    trt_version: str = "10.3.0.30"
    polygraphy_version: str = "0.53.6"
    parser_errors: list[FakeParserError] = field(default_factory=list)
    build_raises: BaseException | None = None
    configs: list[dict] = field(default_factory=list)
    dropped_inputs: tuple[str, ...] = ()

    def tensorrt(self) -> Any:
        outer = self

        class OnnxParser:
            def __init__(self, network: FakeNetwork, logger: Any) -> None:
                self.num_errors = 0
                self._errors: list[FakeParserError] = []
                self.network = network

            def parse_from_file(self, path: str) -> bool:
                self.network.populate(path, outer.dropped_inputs)
                self._errors = list(outer.parser_errors)
                self.num_errors = len(self._errors)
                return not self._errors

            def get_error(self, i: int) -> FakeParserError:
                return self._errors[i]

        return SimpleNamespace(__version__=self.trt_version, OnnxParser=OnnxParser,
                               MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"))

    def polygraphy_trt(self) -> Any:
        outer = self

        class Profile(dict):
            def add(self, name: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - Polygraphy's names
                self[name] = (min, opt, max)

        def create_config(**kwargs: Any) -> Callable[[], dict]:
            outer.configs.append(kwargs)
            return lambda: kwargs

        def engine_bytes(network: tuple, config: Callable[[], dict], save_timing_cache: Any = None):
            def build() -> bytes:
                config()
                if outer.build_raises is not None:
                    raise outer.build_raises
                return b"fake serialized engine"

            return build

        return SimpleNamespace(create_network=lambda strongly_typed=False: (object(), FakeNetwork()),
                               get_trt_logger=lambda: object(), Profile=Profile, CreateConfig=create_config,
                               EngineBytesFromNetwork=engine_bytes)

    def install(self, monkeypatch: Any) -> FakeBuild:
        from navit_deploy.compile import engine, trt_env

        monkeypatch.setattr(trt_env, "_TRT", self.tensorrt())
        monkeypatch.setattr(trt_env, "gpu_info", lambda device=0: FAKE_GPU)
        poly = engine.PolygraphyApi(self.polygraphy_trt(), FakePolygraphyException, self.polygraphy_version)
        monkeypatch.setattr(engine, "_polygraphy", lambda: poly)
        return self
