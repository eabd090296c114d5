"""Pipeline.stream on a live feed: every frame's wait is bounded, in inputs and in time; memory is constant."""

import io
import threading
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from navit_deploy.errors import ConfigError
from navit_deploy.packing import BucketedPacker, Packer, StreamPacker, StreamPolicy
from navit_deploy.runtime import Pipeline
from navit_deploy.runtime.onnx_runner import OnnxRunner
from tests.conftest import fake_image


@pytest.fixture(scope="module")
def runner(exported):
    with OnnxRunner(exported("dense")) as r:
        yield r


def _frame(w: int, h: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


class _Feed:
    """A source that counts what has been pulled from it, and, per result, how many inputs were pulled after it."""

    def __init__(self, frames) -> None:
        self.frames = frames
        self.pulled = 0

    def __iter__(self):
        for f in self.frames:
            self.pulled += 1
            yield f


def _watch(pipe, feed, **kw):
    """(results, later inputs pulled before each result came out, most inputs held at once)."""
    results, lag, held = [], [], 0
    for res in pipe.stream(feed, **kw):
        results.append(res)
        lag.append(feed.pulled - (res.index + 1))
        held = max(held, feed.pulled - (len(results) - 1))  # before this result was handed over
    return results, lag, held


@pytest.mark.parametrize("buffer,delay_frames", [(8, None), (8, 2), (4, 0), (16, 8)])
def test_a_short_frame_before_a_long_run_is_not_held_back(runner, buffer, delay_frames):
    # The reproduction from the field: one small frame, then full-budget frames that fill packs without it.
    # Before, the small frame waited for the end of the stream, and every later result waited behind it.
    small, big = _frame(150, 54, 0), _frame(500, 300, 1)
    frames = [small] + [big] * 150
    pipe = Pipeline(runner, runner.artifact.frontend, BucketedPacker(256, 64, 1))
    feed = _Feed(frames)
    results, lag, held = _watch(pipe, feed, buffer=buffer, min_fill=0.9, max_delay_frames=delay_frames,
                                max_delay_ms=10_000)
    assert [r.index for r in results] == list(range(len(frames)))
    assert all(r.ok for r in results)
    assert held <= buffer, f"held {held} inputs with buffer={buffer}"
    assert max(lag) <= buffer, f"a result came out {max(lag)} inputs late (buffer {buffer})"
    alone = Pipeline(runner, runner.artifact.frontend, Packer(256, 1)).run([small, big])
    np.testing.assert_allclose(results[0].embedding, alone[0].embedding, atol=1e-5)
    np.testing.assert_allclose(results[-1].embedding, alone[1].embedding, atol=1e-5)


def test_a_frame_gets_its_result_while_the_source_pauses(runner):
    # A camera that stops sending (motion-triggered, a stalled link): the frame already in must not wait for
    # the next one. The source blocks until the consumer has that frame's result, or gives up after 10 s.
    got_first = threading.Event()
    gave_up = []

    def feed():
        yield _frame(160, 90, 0)
        if not got_first.wait(timeout=10):
            gave_up.append(True)
        yield _frame(160, 90, 1)

    pipe = Pipeline(runner, runner.artifact.frontend, BucketedPacker(256, 64, 1))
    t0 = time.perf_counter()
    out = []
    for res in pipe.stream(feed(), buffer=8, min_fill=0.9, max_delay_ms=30):
        if res.index == 0:
            out.append(time.perf_counter() - t0)
            got_first.set()
    assert not gave_up, "the first result waited for the next frame"
    assert out[0] < 5.0


def test_packs_fill_when_frames_come_faster_than_the_model(runner):
    # A backlog (frames ready faster than the model runs) is packed together; nothing is lost or reordered.
    frames = [_frame(48 + 7 * (i % 9), 40 + 5 * (i % 7), i) for i in range(64)]
    pipe = Pipeline(runner, runner.artifact.frontend, BucketedPacker(256, 64, 1))
    results = list(pipe.stream(iter(frames), buffer=32, min_fill=0.9, max_delay_ms=10_000))
    assert [r.index for r in results] == list(range(64))
    assert pipe.stats.packs < 32 and pipe.stats.images == 64  # frames shared packs
    batch = Pipeline(runner, runner.artifact.frontend, Packer(256, 1)).run(frames)
    for a, b in zip(batch, results):
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)


class _Instant:
    """A runner that answers at once (zeros): what is measured is the pipeline's own bookkeeping."""

    concurrency = 1

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def activate(self):
        return self

    def infer(self, pack):
        from navit_deploy.runtime import RunnerOutput

        b = pack.num_images
        return RunnerOutput(np.zeros((b, self.dim), np.float32), np.zeros((b, 4), np.float32))


def test_stream_memory_is_constant(runner):
    # Python heap growth over 6,000 frames after a warm-up of 2,000: the stream's bookkeeping (names, results
    # waiting, per-pack lists) must not grow with the frames seen; one entry kept per frame adds > 600 KiB.
    # (`python -m navit_deploy.bench.soak` measures RSS over 20,000 frames with the real model.)
    frames = [_frame(32 + 16 * (i % 3), 32, i) for i in range(5)] + [b"not an image"]
    n = 8_000
    fe = runner.artifact.frontend.replace(upscale=False)  # 4-6 tokens a frame
    pipe = Pipeline(_Instant(runner.artifact.dim), fe, BucketedPacker(256, 64, 1))
    seen = 0
    # Python objects only: numpy's buffers (its own tracemalloc domain) come and go with the pack in flight,
    # and tracemalloc's own records of the first snapshot are not the stream's.
    python_only = [tracemalloc.DomainFilter(inclusive=False, domain=np.lib.tracemalloc_domain),
                   tracemalloc.Filter(inclusive=False, filename_pattern=tracemalloc.__file__)]
    tracemalloc.start()
    try:
        for res in pipe.stream((frames[i % len(frames)] for i in range(n)), buffer=64, max_delay_ms=10_000):
            assert res.index == seen
            seen += 1
            if seen == 2_000:
                base = tracemalloc.take_snapshot().filter_traces(python_only)
            elif seen == n - 64:  # still streaming: the stream's own state is alive
                end = tracemalloc.take_snapshot().filter_traces(python_only)
    finally:
        tracemalloc.stop()
    growth = sum(s.size_diff for s in end.compare_to(base, "filename"))
    assert seen == n and pipe.stats.images == n and pipe.stats.failed == n // len(frames)
    assert growth < 128 * 1024, f"the Python heap grew by {growth / 1024:.0f} KiB over {n - 2064} frames"


def test_source_errors_reach_the_caller_and_stop_the_reader(runner):
    before = threading.active_count()

    def feed():
        yield _frame(64, 64, 0)
        raise OSError("camera unplugged")

    pipe = Pipeline(runner, runner.artifact.frontend)
    with pytest.raises(OSError, match="camera unplugged"):
        list(pipe.stream(feed()))
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before


def test_closing_a_stream_early_stops_the_reader(runner):
    before = threading.active_count()
    pipe = Pipeline(runner, runner.artifact.frontend)
    stream = pipe.stream((_frame(64, 48, i) for i in range(1000)), buffer=4)
    first = [next(stream) for _ in range(3)]
    stream.close()
    assert [r.index for r in first] == [0, 1, 2]
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before


@pytest.mark.parametrize("kw,match", [({"buffer": 0}, "buffer"), ({"min_fill": 1.5}, "min_fill"),
                                      ({"max_delay_frames": -1}, "max_delay_frames"),
                                      ({"max_delay_ms": -1.0}, "max_delay_ms"),
                                      ({"max_delay_ms": float("nan")}, "max_delay_ms")])
def test_bad_stream_bounds_are_clear_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        StreamPolicy(**kw)


# ---------------------------------------------------------------------------------- the packing policy


@pytest.mark.parametrize("delay", [0, 1, 3, 7])
def test_stream_packer_packs_a_frame_before_more_than_max_delay_later_inputs(rng, delay):
    sp = StreamPacker(Packer(256, 64), StreamPolicy(buffer=64, min_fill=1.0, max_delay_frames=delay,
                                                    max_delay_ms=1e9))
    emitted_at: dict[int, int] = {}
    for seen in range(1, 41):
        sp.add(seen - 1, fake_image(rng, 2, 3, 4), seen, 0.0)
        for pack in sp.take_ready(seen, 0.0):
            for i in pack.image_index.tolist():
                emitted_at[i] = seen
    for pack in sp.flush():
        for i in pack.image_index.tolist():
            emitted_at[i] = 41
    assert sorted(emitted_at) == list(range(40))
    assert all(emitted_at[i] - (i + 1) <= delay for i in range(40 - delay))


def test_stream_packer_time_bound_and_full_buffer(rng):
    sp = StreamPacker(Packer(256, 64), StreamPolicy(buffer=4, min_fill=1.0, max_delay_frames=100, max_delay_ms=50))
    sp.add(0, fake_image(rng, 2, 2, 4), 1, 10.0)
    assert sp.deadline() == pytest.approx(10.05)
    assert sp.take_ready(1, 10.049) == []
    (pack,) = sp.take_ready(1, 10.05)
    assert pack.image_index.tolist() == [0] and len(sp) == 0
    for i in range(3):
        sp.add(i + 1, fake_image(rng, 2, 2, 4), i + 2, 20.0)
    assert sp.take_ready(4, 20.0) == []
    (pack,) = sp.take_ready(4, 20.0, full=True)  # the caller can take no more frames: the oldest's pack runs
    assert 1 in pack.image_index.tolist()


def test_packer_stream_no_longer_carries_an_item_forever(rng):
    # Packer.stream (no clock) with the field's sequence: a 48-token item, then items that fill packs alone.
    items = [(0, fake_image(rng, 6, 8, 4))] + [(i, fake_image(rng, 16, 16, 4)) for i in range(1, 200)]
    order = []
    for pack in Packer(256, 8).stream(iter(items), buffer=8, min_fill=0.9, max_delay=4):
        order += pack.image_index.tolist()
    assert sorted(order) == list(range(200))
    assert order.index(0) <= 5  # out within its 4-item delay, not at the end of the stream


# ------------------------------------------------------------------- inputs and frames of every kind


def _jpeg(w=120, h=80, seed=0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_frame(w, h, seed)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_unsupported_inputs_are_per_input_errors(runner):
    data = _jpeg()
    sources = [data, bytearray(data), memoryview(data), None, 3, [1, 2], object(), "/no/such/file.jpg"]
    pipe = Pipeline(runner, runner.artifact.frontend)
    for results in (pipe.run(sources), list(pipe.stream(iter(sources)))):
        assert [r.index for r in results] == list(range(len(sources)))
        assert [r.ok for r in results[:3]] == [True] * 3
        for r in results[1:3]:
            np.testing.assert_allclose(r.embedding, results[0].embedding, atol=1e-6)
        assert [r.error_type for r in results[3:7]] == ["UnsupportedInputError"] * 4
        assert "not an image input" in results[3].error
        assert results[7].error_type == "ImageDecodeError"


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_rgba_frames_are_composited_like_rgba_images(runner, order):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 255, (70, 110, 4), dtype=np.uint8)
    rgba[:, :40, 3] = 0  # a transparent band: white after compositing
    pil = Image.fromarray(rgba, mode="RGBA")
    frame = rgba[:, :, [2, 1, 0, 3]] if order == "BGR" else rgba
    fe = runner.artifact.frontend
    from_pil = Pipeline(runner, fe).run([pil])[0]
    from_array = Pipeline(runner, fe, channel_order=order).run([np.ascontiguousarray(frame)])[0]
    np.testing.assert_allclose(from_array.embedding, from_pil.embedding, atol=1e-6)
    dropped = Pipeline(runner, fe).run([np.ascontiguousarray(rgba[:, :, :3])])[0]  # what alpha-dropping gave
    assert np.abs(dropped.embedding - from_pil.embedding).max() > 1e-3
