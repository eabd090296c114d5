"""Packs in flight at once: Pipeline.run / run_packs with runners that allow concurrent infer calls."""

import threading
import time

import numpy as np
import pytest
from PIL import Image

import navit_deploy.runtime.onnx_runner as onnx_runner
import navit_deploy.runtime.pipeline as pipeline_mod
from navit_deploy.packing import Packer
from navit_deploy.runtime import Pipeline
from navit_deploy.runtime.onnx_runner import OnnxRunner


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (int(rng.integers(20, 300)), int(rng.integers(20, 300)), 3),
                                         dtype=np.uint8)) for _ in range(n)]


class _Watched:
    """Wraps a runner: allows ``concurrency`` calls, holds each for ``hold_s``, records the most at once,
    and raises on call number ``fail_on``."""

    def __init__(self, inner, concurrency: int, hold_s: float = 0.02, fail_on: int = 0) -> None:
        self.inner, self.concurrency, self.hold_s, self.fail_on = inner, concurrency, hold_s, fail_on
        self.lock = threading.Lock()
        self.now = self.most = self.calls = 0

    def activate(self):
        return self.inner.activate()

    def infer(self, pack):
        with self.lock:
            self.calls += 1
            call = self.calls
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self.hold_s)
            if call == self.fail_on:
                raise RuntimeError("device lost")
            return self.inner.infer(pack)
        finally:
            with self.lock:
                self.now -= 1


@pytest.fixture(scope="module")
def runner(exported):
    with OnnxRunner(exported("dense"), concurrency=1) as r:
        yield r


def _packs(pipe: Pipeline, imgs):
    prepared = {i: pipe.prepare(i, img) for i, img in enumerate(imgs)}
    return pipe.packer.pack(list(prepared.values()), list(prepared)), prepared


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_run_packs_keeps_exactly_the_runner_concurrency_in_flight(runner, limit):
    watched = _Watched(runner, limit)
    pipe = Pipeline(watched, runner.artifact.frontend, Packer(256, 1))
    packs, prepared = _packs(pipe, _images(9))
    results = pipe.run_packs(packs, prepared)
    assert watched.most == limit and watched.calls == len(packs) == 9
    assert [r.index for r in results] == list(range(9))
    serial = Pipeline(runner, runner.artifact.frontend, Packer(256, 1)).run_packs(packs, prepared)
    for r, s in zip(results, serial):
        np.testing.assert_allclose(r.embedding, s.embedding, atol=1e-6)


@pytest.mark.parametrize("concurrency,threads,packer", [(1, None, Packer(512, 64)), (2, 1, Packer(256, 1)),
                                                         (2, 2, Packer(512, 4)), (3, 1, Packer(128, 2))])
def test_concurrent_run_matches_one_image_at_a_time(runner, exported, concurrency, threads, packer):
    imgs = _images(14, seed=5)
    fe = runner.artifact.frontend
    with OnnxRunner(exported("dense"), concurrency=concurrency, threads=threads) as r:
        pipe = Pipeline(r, fe, packer, workers=2, window=4)
        assert pipe.concurrency == concurrency
        results = pipe.run(imgs)
    assert [x.index for x in results] == list(range(len(imgs)))
    reference = [Pipeline(runner, fe, Packer(512, 1), workers=0).run([img])[0] for img in imgs]
    for x, ref in zip(results, reference):
        np.testing.assert_allclose(x.embedding, ref.embedding, atol=1e-5)
    st = pipe.stats
    assert st.packs == len(st.pack_ms) and sorted(st.done_ms) == list(range(len(imgs)))
    assert 0 < st.model_s <= st.wall_s  # union of busy time, not the sum over overlapping calls


def test_overlapping_calls_count_once_in_model_time(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 4.0, 10.0, 11.0])  # A enters 0, B enters 1, A leaves 3, B leaves 4; C 10-11
    monkeypatch.setattr(pipeline_mod.time, "perf_counter", lambda: next(clock))
    busy = pipeline_mod._BusyClock()
    a = busy.enter()
    b = busy.enter()
    assert busy.leave(a) == 3.0 and busy.busy_s == 0.0  # B still running
    assert busy.leave(b) == 3.0 and busy.busy_s == 4.0
    c = busy.enter()
    assert busy.leave(c) == 1.0 and busy.busy_s == 5.0


@pytest.mark.parametrize("fail_on", [1, 4])
def test_error_in_a_concurrent_pack_propagates_and_leaves_no_thread(runner, fail_on):
    before = threading.active_count()
    watched = _Watched(runner, 2, fail_on=fail_on)
    pipe = Pipeline(watched, runner.artifact.frontend, Packer(256, 1), workers=2, window=2)
    with pytest.raises(RuntimeError, match="device lost"):
        pipe.run(_images(10, seed=6))
    assert threading.active_count() == before
    ok = Pipeline(_Watched(runner, 2), runner.artifact.frontend, Packer(256, 1)).run(_images(3))
    assert [r.ok for r in ok] == [True] * 3


@pytest.mark.parametrize("cpus,provider,want", [(1, "cpu", 1), (2, "cpu", 2), (16, "cpu", 2), (16, "cuda", 1)])
def test_default_concurrency(monkeypatch, cpus, provider, want):
    monkeypatch.setattr(onnx_runner, "usable_cpus", lambda: cpus)
    assert onnx_runner.default_concurrency(provider) == want


@pytest.mark.parametrize("kw,match", [({"concurrency": 0}, "concurrency"), ({"threads": 0}, "threads")])
def test_bad_concurrency_or_threads_is_a_clear_error(exported, kw, match):
    with pytest.raises(ValueError, match=match):
        OnnxRunner(exported("dense"), **kw)


def test_threads_sharing_a_pipeline_get_serial_results_and_their_own_stats(exported):
    # Eight threads calling run on one pipeline (one runner): each gets exactly the serial results for its own
    # inputs, and the stats it passed describe its own call, not a neighbour's.
    from navit_deploy.runtime import PipelineStats

    with OnnxRunner(exported("dense")) as r:
        pipe = Pipeline(r, r.artifact.frontend, Packer(256, 8), workers=2)
        calls = [_images(3 + k, seed=20 + k) + ([b"junk"] if k % 2 else []) for k in range(8)]
        serial = [pipe.run(c) for c in calls]
        got: dict[int, tuple] = {}
        start = threading.Barrier(8)

        def work(k: int) -> None:
            stats = PipelineStats()
            start.wait(timeout=30)
            got[k] = (pipe.run(calls[k], stats=stats), stats)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert sorted(got) == list(range(8))
    for k, (results, stats) in got.items():
        assert [x.ok for x in results] == [x.ok for x in serial[k]]
        for x, s in zip(results, serial[k]):
            if x.ok:
                np.testing.assert_allclose(x.embedding, s.embedding, atol=1e-6)
        assert stats.images == len(calls[k]) and stats.failed == k % 2
        assert stats.valid_tokens == sum(x.tokens for x in results if x.ok)
        assert sorted(stats.done_ms) == [i for i, x in enumerate(results) if x.ok]
