"""``Pipeline.stream``: a live feed through the front end, the latency-bounded stream packer and the runner.
Torch-free.

A reader thread pulls inputs from the caller's iterable and runs the front end on each, never more than
``buffer`` inputs ahead of the results handed back (one semaphore slot per input held). The calling thread
takes whatever the reader has ready, asks the :class:`~navit_deploy.packing.StreamPacker` which packs to
run now, runs them and yields results in input order. When nothing can run it waits for the reader only
until the oldest waiting frame's delay is up, so a frame whose pack-mates never come (a short frame
before a long run of full-budget ones, a camera that pauses) still gets its result in time.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from navit_deploy.frontend import ImageSource, PreparedImage, describe_source
from navit_deploy.packing import StreamPacker, StreamPolicy
from navit_deploy.runtime.results import ImageResult

if TYPE_CHECKING:
    from navit_deploy.runtime.pipeline import Pipeline, PipelineStats


@dataclass(frozen=True)
class _Arrival:
    index: int
    name: str
    since: float  # when the input was pulled from the source (perf_counter seconds)
    prepared: PreparedImage | ImageResult


@dataclass(frozen=True)
class _SourceFailed:
    exc: BaseException


_END = object()


class _Reader:
    """Pulls inputs and runs the front end on a thread of its own, holding a slot of ``slots`` per input."""

    def __init__(self, pipe: "Pipeline", sources: Iterable[ImageSource], buffer: int, stats: "PipelineStats") -> None:
        self.slots = threading.Semaphore(buffer)
        self.arrivals: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._pipe, self._sources, self._stats = pipe, sources, stats
        self._stop = threading.Event()
        self._in_source = threading.Event()
        self._thread = threading.Thread(target=self._run, name="navit-stream-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            it = iter(self._sources)
            index = 0
            while True:
                self.slots.acquire()
                if self._stop.is_set():
                    return
                self._in_source.set()
                try:
                    src = next(it)
                except StopIteration:
                    self.arrivals.put(_END)
                    return
                finally:
                    self._in_source.clear()
                since = time.perf_counter()
                arrival = _Arrival(index, describe_source(src), since, self._pipe.prepare(index, src, self._stats))
                del src  # the frame itself is not kept once its patches are made
                self.arrivals.put(arrival)
                index += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, who re-raises it
            self.arrivals.put(_SourceFailed(exc))

    def stop(self) -> None:
        """Ends the thread; waits for it unless it is blocked inside the caller's source (a camera read)."""
        self._stop.set()
        self.slots.release()  # wakes it if it waits for a slot
        if not self._in_source.is_set():
            self._thread.join(timeout=5.0)


def run_stream(pipe: "Pipeline", sources: Iterable[ImageSource], policy: StreamPolicy) -> Iterator[ImageResult]:
    """The body of :meth:`Pipeline.stream` (see there)."""
    from navit_deploy.runtime.pipeline import PipelineStats, _Call

    stats = PipelineStats()
    pipe.stats = stats
    call = _Call(stats, per_pack=False)  # a stream has no end: counters only, no per-pack lists
    packer = StreamPacker(pipe.packer, policy)
    reader = _Reader(pipe, sources, policy.buffer, stats)
    prepared: dict[int, PreparedImage] = {}  # frames waiting for pack-mates, and their names
    names: dict[int, str] = {}
    done: dict[int, ImageResult] = {}  # results waiting for an earlier input's
    seen = released = 0
    ended = False
    t0 = time.perf_counter()

    def receive(msg: object) -> None:
        nonlocal seen, ended
        if msg is _END:
            ended = True
            return
        if isinstance(msg, _SourceFailed):
            raise msg.exc
        assert isinstance(msg, _Arrival)
        seen += 1
        stats.images += 1
        if isinstance(msg.prepared, ImageResult):
            stats.failed += 1
            done[msg.index] = msg.prepared
        else:
            prepared[msg.index], names[msg.index] = msg.prepared, msg.name
            packer.add(msg.index, msg.prepared, seen, msg.since)

    def release() -> Iterator[ImageResult]:
        nonlocal released
        while released in done:
            res = done.pop(released)
            released += 1
            reader.slots.release()
            yield res

    reader.start()
    try:
        while not (ended and released == seen):
            # Wait for the reader only when nothing could run without a new input: forever when no frame
            # waits, until the oldest frame's delay is up otherwise; not at all when `buffer` inputs are held.
            if not ended and seen - released < policy.buffer:
                deadline = packer.deadline()
                timeout = None if deadline is None else deadline - time.perf_counter()
                if timeout is None or timeout > 0:
                    try:
                        receive(reader.arrivals.get(timeout=timeout))
                    except queue.Empty:
                        pass
            while not ended:
                try:
                    receive(reader.arrivals.get_nowait())
                except queue.Empty:
                    break
            yield from release()
            now = time.perf_counter()
            packs = packer.flush() if ended else packer.take_ready(seen, now, full=seen - released >= policy.buffer)
            for pack in packs:
                for res in pipe.run_pack(pack, prepared, names, call):
                    done[res.index] = res
                    del prepared[res.index], names[res.index]
                yield from release()
            stats.wall_s = time.perf_counter() - t0
    finally:
        reader.stop()
