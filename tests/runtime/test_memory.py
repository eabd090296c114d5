"""The runtime hands freed heap back to the OS after large calls (glibc), without charging small calls."""


import numpy as np
import pytest
from PIL import Image

import navit_deploy.runtime.memory as memory
import navit_deploy.runtime.pipeline as pipeline_mod
from navit_deploy.runtime import Pipeline
from navit_deploy.runtime.onnx_runner import OnnxRunner


@pytest.mark.skipif(memory._malloc_trim() is None, reason="this C library has no malloc_trim (not glibc)")
def test_trim_runs_at_most_once_per_interval(monkeypatch):
    monkeypatch.setattr(memory, "_LAST", [0.0])
    assert memory.trim_heap(min_interval_s=60.0) is True
    assert memory.trim_heap(min_interval_s=60.0) is False  # many small calls pay for one trim a minute
    assert memory.trim_heap(min_interval_s=0.0) is True


def test_run_trims_after_a_call_unless_told_not_to(exported, monkeypatch):
    calls = []
    monkeypatch.setattr(pipeline_mod, "trim_heap", lambda: calls.append(1) or True)
    img = Image.fromarray(np.full((40, 60, 3), 90, np.uint8))
    with OnnxRunner(exported("dense")) as r:
        Pipeline(r, r.artifact.frontend).run([img])
        assert calls == [1]
        Pipeline(r, r.artifact.frontend, trim_memory=False).run([img])
        assert calls == [1]


def test_no_glibc_means_no_trim(monkeypatch):
    monkeypatch.setattr(memory, "_LIBC", [None])
    assert memory.trim_heap(min_interval_s=0.0) is False
