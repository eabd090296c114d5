"""Fixtures for the service tests: the tiny dense export on ONNX Runtime, test images, a runner that holds
its calls until a test lets them go, and servers on 127.0.0.1 (a background thread, any free port)."""

from __future__ import annotations

import io
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed (pip install -e '.[serve]')")
pytest.importorskip("orjson", reason="the serve extra is not installed (pip install -e '.[serve]')")

from navit_deploy.runtime import Pipeline  # noqa: E402
from navit_deploy.runtime.onnx_runner import OnnxRunner  # noqa: E402
from navit_deploy.runtime.open import pipeline_for  # noqa: E402
from navit_deploy.serve import ServeConfig, create_app  # noqa: E402
from navit_deploy.serve.server import ServerThread  # noqa: E402

WAIT_S = 20.0  # upper bound of every wait in these tests


def image_bytes(w: int, h: int, seed: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def wait_until(cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``cond`` (state another thread or process changes, with no event to wait on) until it holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)


@pytest.fixture(scope="module")
def runner(exported):
    with OnnxRunner(exported("dense")) as r:
        yield r


@pytest.fixture(scope="module")
def pipe(runner) -> Pipeline:
    return pipeline_for(runner, runner.artifact)


class Gated:
    """A runner that holds every call until :attr:`open` is set; counts the images it computed."""

    concurrency = 1

    def __init__(self, inner: OnnxRunner) -> None:
        self.inner = inner
        self.open = threading.Event()
        self.entered = threading.Event()
        self.images = 0
        self.name = inner.name

    def activate(self):
        return self.inner.activate()

    def infer(self, pack):
        self.entered.set()
        assert self.open.wait(WAIT_S), "the test never let the model call go"
        self.images += pack.num_images
        return self.inner.infer(pack)


@pytest.fixture
def gated(runner, pipe) -> Iterator[tuple[Gated, Pipeline]]:
    g = Gated(runner)
    try:
        yield g, Pipeline(g, pipe.frontend, pipe.packer)
    finally:
        g.open.set()  # never leave a server waiting on a held call


@contextmanager
def serving(pipeline: Pipeline, labels=(), **config) -> Iterator[ServerThread]:
    """A server for ``pipeline`` with ``ServeConfig(**config)``, on a free port, drained on leaving."""
    with ServerThread(create_app(pipeline, labels, ServeConfig(**config)), graceful_timeout=10.0) as srv:
        yield srv
