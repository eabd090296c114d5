"""Model-only images/s is timed on the packs the end-to-end pass ran, right after it; a row's load is recorded."""

import subprocess
import sys
import time
from collections import Counter

import numpy as np
from PIL import Image

from navit_deploy.bench.machine_load import LoadMonitor, describe_load
from navit_deploy.bench.measure import Plan, measure_interleaved, window_packs
from navit_deploy.packing import Packer
from navit_deploy.runtime.onnx_runner import OnnxRunner
from navit_deploy.runtime.pipeline import Pipeline


class _Recorder:
    """Wraps a runner and records the shape of every pack it runs."""

    def __init__(self, inner) -> None:
        self.inner, self.shapes, self.concurrency = inner, [], 1

    def __enter__(self):
        self.inner.activate()
        return self

    def __exit__(self, *exc):
        return None

    def infer(self, pack):
        self.shapes.append((pack.pack_len, tuple(pack.seqlens.tolist())))
        return self.inner.infer(pack)


def _images(n=14):
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 255, (int(rng.integers(30, 200)), int(rng.integers(30, 200)), 3),
                                         dtype=np.uint8)) for _ in range(n)]


def test_model_only_runs_the_end_to_end_packs(exported):
    imgs = _images()
    inner = OnnxRunner(exported("dense"), concurrency=1)
    rec = _Recorder(inner)
    fe = inner.artifact.frontend
    plan = Plan("packed", fe, Packer(256, 64), fe.max_patches)
    pipe = Pipeline(rec, fe, plan.packer, workers=2)
    # The data exercises the difference: the pipeline packs windows of the call, not all images at once.
    everything = [pipe.prepare(i, im) for i, im in enumerate(imgs)]
    at_once = Counter((p.pack_len, tuple(p.seqlens.tolist())) for p in plan.packer.pack(everything))
    windowed = Counter((p.pack_len, tuple(p.seqlens.tolist())) for p in window_packs(pipe, imgs)[0])
    assert at_once != windowed

    (m,) = measure_interleaved([(rec, plan)], imgs, repeats=2, warmup=0, workers=2, model_only=[True])
    assert len(m.model_rates) == 2 and all(r > 0 for r in m.model_rates)
    e2e = Counter((pl, tuple(s)) for pl, s in m.runs[0].packs)
    assert e2e == windowed
    # Calls: round 1 end to end, round 1 model only, round 2 end to end, round 2 model only.
    n = sum(e2e.values())
    assert len(rec.shapes) == 4 * n
    for k in range(4):
        assert Counter(rec.shapes[k * n:(k + 1) * n]) == e2e


def test_load_monitor_sees_other_processes():
    mon = LoadMonitor().start()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.5)
        load = mon.stop()  # before the child is reaped: its CPU time is another process's
    finally:
        busy.kill()
        busy.wait()
    assert load["cpu_count"] >= 1 and len(load["load_before"]) == 3
    assert load["others_cpu_share"] >= min(0.9 / load["cpu_count"], 0.3) and load["busy"]
    text = describe_load(load)
    assert "Warning: the machine was busy" in text and f"{load['cpu_count']} CPUs" in text


def test_describe_load_quiet_machine():
    text = describe_load({"cpu_count": 2, "load_before": [0.1, 0.2, 0.3], "load_after": [1.0, 0.5, 0.3],
                          "others_cpu_share": 0.02, "busy": False})
    assert "2%" in text and "Warning" not in text
