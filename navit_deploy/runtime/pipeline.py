"""Images in, per-image results out: front end -> packer -> runner -> unpack. Torch-free.

Bad images (undecodable, too large, impossible budget) become error results for that image alone;
every other image of the call is still processed and returned in the caller's order.

:meth:`Pipeline.run` overlaps the host with the model: the front end (decode, resize, patchify) runs in a
thread pool over *windows* of consecutive images, one more thread packs each window once it is prepared,
and the calling thread runs the packs of the windows already done, waiting only when the model outruns
the front end. Pillow, numpy and the runners release the GIL, so on a GPU the host work hides behind the
device, and on a CPU the front end fills the cores the model leaves idle.

Runners that gain from it (ONNX Runtime on CPU, see :attr:`Runner.concurrency`) get up to
``runner.concurrency`` packs at once: a CPU spends part of every single model call in small ops that
do not use all its threads, and a second call in flight fills those gaps.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from navit_deploy.errors import ImageError
from navit_deploy.frontend import FrontendConfig, ImageSource, PreparedImage, describe_source, prepare_image
from navit_deploy.frontend.config import budget_flag
from navit_deploy.frontend.loading import ChannelOrder
from navit_deploy.packing import PackedBatch, Packer, StreamPolicy, split_tokens
from navit_deploy.runtime.memory import trim_heap
from navit_deploy.runtime.results import ImageResult
from navit_deploy.runtime.runner import Runner


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


_CPU_LOCK = threading.Lock()

# How long a streamed frame waits for pack-mates that have not arrived yet, by default: not at all. Frames
# that are ready together (a backlog, when the model is the bottleneck) still share packs; a frame alone
# runs at once, since at 30 FPS its next pack-mate is 33 ms away and the model is idle meanwhile
# (`python -m navit_deploy.bench.soak`: camera latency p50 67 ms with 0, 163 ms with 40 ms, same FPS).
DEFAULT_MAX_DELAY_MS = 0.0


@dataclass
class PipelineStats:
    """Counters and timers of one call (:meth:`Pipeline.run`, :meth:`~Pipeline.run_packs`, or a stream).

    Tokens: packs run, tokens computed (incl. padding) and valid tokens. Time (seconds, ``run`` only):
    ``wall_s`` for the call; ``model_s`` inside ``runner.infer``; ``wait_s`` the calling thread waiting
    for the front end and packer; ``pack_s`` packing (on the packing thread when overlapped);
    ``frontend_cpu_s`` CPU time spent in the front end on all its threads; ``cpu_s`` CPU time of the
    whole process. With packs in flight at once, ``model_s`` counts the time in which at least one was.
    ``pack_ms`` is each pack's model call and ``done_ms`` each image's completion time from the start of
    the call, by input index (``run`` and ``run_packs``; a stream, which never ends, keeps the counters only).
    """

    packs: int = 0
    computed_tokens: int = 0
    valid_tokens: int = 0
    images: int = 0
    failed: int = 0
    wall_s: float = 0.0
    model_s: float = 0.0
    wait_s: float = 0.0
    pack_s: float = 0.0
    frontend_cpu_s: float = 0.0
    cpu_s: float = 0.0
    pack_ms: list[float] = field(default_factory=list)
    pack_shapes: list[tuple[int, list[int]]] = field(default_factory=list)  # (pack_len, seqlens) per pack
    done_ms: dict[int, float] = field(default_factory=dict)

    @property
    def padding_fraction(self) -> float:
        return 0.0 if not self.computed_tokens else 1.0 - self.valid_tokens / self.computed_tokens

    @property
    def host_exposed_fraction(self) -> float:
        """Share of the call's wall time in which the model was not running (the host on the critical path)."""
        return 0.0 if self.wall_s <= 0 else max(0.0, 1.0 - self.model_s / self.wall_s)

    @property
    def frontend_cpu_fraction(self) -> float:
        """Share of the process's CPU time spent in the front end (the host's share of the work)."""
        return 0.0 if self.cpu_s <= 0 else min(1.0, self.frontend_cpu_s / self.cpu_s)


class _BusyClock:
    """Wall time in which at least one model call was running (overlapping calls count once)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._since = 0.0
        self.busy_s = 0.0

    def enter(self) -> float:
        now = time.perf_counter()
        with self._lock:
            if self._running == 0:
                self._since = now
            self._running += 1
        return now

    def leave(self, entered: float) -> float:
        """Ends a call that started at ``entered``; returns its duration."""
        now = time.perf_counter()
        with self._lock:
            self._running -= 1
            if self._running == 0:
                self.busy_s += now - self._since
        return now - entered


@dataclass
class _Call:
    """One call's own counters and model clock, so that calls on one pipeline from several threads do not mix."""

    stats: PipelineStats
    busy: _BusyClock = field(default_factory=_BusyClock)
    per_pack: bool = True  # keep per-pack times and shapes (not in streams, which never end)


class _InFlight:
    """Runs packs with at most ``limit`` in flight, handing each pack's results to ``finish`` (on the
    calling thread). A pool of ``limit - 1`` threads takes packs while it has room; when it is full the
    calling thread runs the pack itself, so no pack waits in a queue while a thread is free."""

    def __init__(self, run: Callable[..., list[ImageResult]], limit: int,
                 finish: Callable[[list[ImageResult]], None]) -> None:
        self._run, self._limit, self._finish = run, max(1, limit), finish
        self._pool: ThreadPoolExecutor | None = None
        self._running: list[Future] = []

    def __enter__(self) -> "_InFlight":
        if self._limit > 1:
            self._pool = ThreadPoolExecutor(self._limit - 1, thread_name_prefix="navit-model")
        return self

    def submit(self, *args: object) -> None:
        self._collect(block=False)
        if self._pool is not None and len(self._running) < self._limit - 1:
            self._running.append(self._pool.submit(self._run, *args))
        else:
            self._finish(self._run(*args))

    def _collect(self, block: bool) -> None:
        for f in [f for f in self._running if block or f.done()]:
            self._running.remove(f)
            self._finish(f.result())

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None:
                self._collect(block=True)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Window:
    """Consecutive inputs after the front end: their error results, good images and packs."""

    failed: list[ImageResult] = field(default_factory=list)
    good: dict[int, PreparedImage] = field(default_factory=dict)
    packs: list[PackedBatch] = field(default_factory=list)


@dataclass
class Pipeline:
    """Runs images through a runner at their native aspect ratio.

    ``channel_order`` applies to numpy frames ("BGR" for OpenCV). ``packer`` sets the pack length per
    backend (e.g. smaller packs for the dense attention lowering on CPU). ``workers`` front-end threads
    prepare windows of consecutive images, at most ``prefetch`` windows ahead of the model; windows ramp
    up to ``window`` images (default: a quarter of the call, 8 to 64). The packer packs each window on
    its own (first-fit-decreasing within it), so larger windows pack tighter and smaller ones start the
    model sooner.

    ``trim_memory``: after a call, hand the heap pages freed by the front-end threads back to the OS (glibc
    ``malloc_trim``, at most once a second; see :mod:`navit_deploy.runtime.memory`).

    A pipeline may be shared by threads (each call keeps its own counters). :attr:`stats` holds the
    counters of the last call to finish (of a stream: the one running, updated as it goes); with several
    threads, pass ``stats=PipelineStats()`` to :meth:`run` to get your own call's.
    """

    runner: Runner
    frontend: FrontendConfig
    packer: Packer = field(default_factory=Packer)
    channel_order: ChannelOrder = "RGB"
    workers: int = field(default_factory=_default_workers)
    window: int | None = None
    prefetch: int = 2
    trim_memory: bool = True
    stats: PipelineStats = field(default_factory=PipelineStats)

    def __post_init__(self) -> None:
        # A VLM tower's packs hold whole merge blocks, in window order with the window lengths: whatever packer
        # the caller gave, it packs the way the runner's model needs.
        spec = getattr(self.runner, "windows", None)
        if spec is not None and (self.packer.windows != spec or self.packer.pack_len % spec.unit):
            cap = -(-self.packer.pack_len // spec.unit) * spec.unit
            self.packer = replace(self.packer, pack_len=cap, windows=spec)

    def with_budget(self, *, max_patches: int | None = None, upscale: bool | None = None,
                    min_pixels: int | None = None, max_pixels: int | None = None) -> "Pipeline":
        """A pipeline on the same runner at another per-image budget (see :meth:`FrontendConfig.with_budget`),
        for one call: ``pipe.with_budget(max_pixels=1024 * 1024).run(images)``. Its packs are lengthened when
        a full-budget image would no longer fit one; its counters are its own."""
        fe = self.frontend.with_budget(max_patches=max_patches, upscale=upscale, min_pixels=min_pixels,
                                       max_pixels=max_pixels)
        need = fe.max_tokens_per_image
        packer = self.packer if need <= self.packer.pack_len else replace(self.packer, pack_len=need)
        return replace(self, frontend=fe, packer=packer, stats=PipelineStats())

    def prepare(self, index: int, src: ImageSource, stats: PipelineStats | None = None) -> PreparedImage | ImageResult:
        """Front end for one image; an error result instead of an exception for a bad image (or an input of a
        type the front end does not take). Its CPU time is added to ``stats`` when given."""
        name = describe_source(src)
        cpu0 = time.thread_time()
        try:
            prepared = prepare_image(src, self.frontend, channel_order=self.channel_order)
        except ImageError as exc:
            return ImageResult(index, name, error=str(exc), error_type=type(exc).__name__, output_kind=self.output_kind)
        except Exception as exc:  # noqa: BLE001 - one input's surprise must not cost the others their results
            return ImageResult(index, name, error=f"{name}: the front end failed on this input "
                               f"({type(exc).__name__}: {exc})", error_type="ImageDecodeError",
                               output_kind=self.output_kind)
        finally:
            if stats is not None:
                with _CPU_LOCK:
                    stats.frontend_cpu_s += time.thread_time() - cpu0
        if prepared.num_tokens > self.packer.pack_len:
            return ImageResult(index, name, error=f"{name}: {prepared.num_tokens} tokens exceed the pack length "
                               f"{self.packer.pack_len}; lower the budget or raise the pack length ({budget_flag(self.frontend)}, "
                               "navit infer --pack-len)",
                               error_type="BudgetError", output_kind=self.output_kind)
        return prepared

    @property
    def output_kind(self) -> str:
        """What the runner's model returns per image: ``"pooled"`` (one embedding) or ``"tokens"`` (a VLM tower's
        merged visual tokens); error results say it too."""
        return getattr(self.runner, "output_kind", "pooled")

    @property
    def concurrency(self) -> int:
        """Packs in flight at once in :meth:`run`: the runner's :attr:`~Runner.concurrency`."""
        return max(1, int(getattr(self.runner, "concurrency", 1)))

    def window_bounds(self, n: int) -> list[tuple[int, int]]:
        """``[start, end)`` of each front-end window for a call of ``n`` images.

        Windows ramp up (``workers`` images, then doubling) to ``window`` images, so the model starts as
        soon as the first few images are ready and later windows still pack well.
        """
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        full = self.window if self.window is not None else max(8, min(64, math.ceil(n / 4)))
        bounds, a, size = [], 0, min(full, max(1, self.workers))
        while a < n:
            bounds.append((a, min(n, a + size)))
            a += size
            size = min(full, 2 * size)
        return bounds

    def _pack_window(self, items: list[tuple[int, PreparedImage | ImageResult]], stats: PipelineStats) -> _Window:
        """Split a prepared window into error results and good images, and pack the good ones."""
        t = time.perf_counter()
        window = _Window()
        for i, r in items:
            if isinstance(r, ImageResult):
                window.failed.append(r)
            else:
                window.good[i] = r
        if window.good:
            window.packs = self.packer.pack(list(window.good.values()), list(window.good))
        stats.pack_s += time.perf_counter() - t
        return window

    def _windows(self, sources: Sequence[ImageSource], stats: PipelineStats) -> Iterator[_Window]:
        """Packed windows in input order. With workers, the pool prepares up to ``prefetch`` windows ahead
        and one more thread packs each window as soon as it is prepared, both off the calling thread."""
        bounds = self.window_bounds(len(sources))
        if len(sources) <= 1 or self.workers < 1:
            for a, b in bounds:
                yield self._pack_window([(i, self.prepare(i, sources[i], stats)) for i in range(a, b)], stats)
            return
        with ThreadPoolExecutor(self.workers) as pool, ThreadPoolExecutor(1) as packing:
            pending: deque[Future] = deque()
            todo = iter(bounds)

            def submit_next() -> None:
                ab = next(todo, None)
                if ab is not None:
                    futures = [(i, pool.submit(self.prepare, i, sources[i], stats)) for i in range(*ab)]
                    pending.append(packing.submit(
                        lambda fs: self._pack_window([(i, f.result()) for i, f in fs], stats), futures))

            for _ in range(1 + max(0, self.prefetch)):
                submit_next()
            while pending:
                t = time.perf_counter()
                window = pending.popleft().result()
                stats.wait_s += time.perf_counter() - t
                submit_next()
                yield window

    def run_pack(self, pack: PackedBatch, prepared: Mapping[int, PreparedImage], names: Mapping[int, str],
                 call: _Call | None = None) -> list[ImageResult]:
        """Infer one pack and unpack its rows into results keyed by the caller's indices (counted in ``call``)."""
        call = call or _Call(PipelineStats())
        t = call.busy.enter()
        try:
            out = self.runner.infer(pack)
        finally:
            dt = call.busy.leave(t)
        st = call.stats
        with _CPU_LOCK:
            st.model_s = call.busy.busy_s
            if call.per_pack:
                st.pack_ms.append(1000 * dt)
                st.pack_shapes.append((pack.pack_len, pack.seqlens.tolist()))
            st.packs += 1
            st.computed_tokens += pack.pack_len
            st.valid_tokens += pack.num_valid
        results = []
        if out.tokens is not None:
            per_image = split_tokens(out.tokens, pack.cu_seqlens, pack.unit, pack.block_order)
            for row, idx in enumerate(pack.image_index.tolist()):
                p = prepared[idx]
                results.append(ImageResult(idx, names[idx], tokens=p.num_tokens, grid=p.grid, resized_size=p.resized_size,
                                           original_size=p.original_size, output_kind="tokens",
                                           visual_tokens=per_image[row]))
            return results
        for row, idx in enumerate(pack.image_index.tolist()):
            p = prepared[idx]
            logits = out.logits[row] if out.logits is not None else None
            results.append(ImageResult(idx, names[idx], embedding=out.embeddings[row], logits=logits,
                                       tokens=p.num_tokens, grid=p.grid, resized_size=p.resized_size,
                                       original_size=p.original_size))
        return results

    def run(self, sources: Sequence[ImageSource], stats: PipelineStats | None = None) -> list[ImageResult]:
        """Process ``sources`` (paths, bytes, PIL images, numpy frames); one result per input, in order.

        Token counts and timers of this call go to ``stats`` when given (pass a new :class:`PipelineStats`),
        and to :attr:`stats` when the call ends.
        """
        names = {i: describe_source(s) for i, s in enumerate(sources)}
        # closing(): if the runner raises, the front-end threads are shut down before the error propagates;
        # leaving the call waits for the packs still in flight.
        with self._call(len(sources), stats) as (results, model, call), \
                closing(self._windows(sources, call.stats)) as windows:
            for window in windows:
                for r in window.failed:
                    results[r.index] = r
                    call.stats.failed += 1
                for pack in window.packs:
                    model.submit(pack, window.good, names, call)
        return [results[i] for i in sorted(results)]

    def run_packs(self, packs: Sequence[PackedBatch], prepared: Mapping[int, PreparedImage],
                  names: Mapping[int, str] | None = None, stats: PipelineStats | None = None) -> list[ImageResult]:
        """Run packs already made (by :meth:`prepare` and :attr:`packer`) with the same concurrency and timers
        as :meth:`run`, without the front end: the model's own throughput. Results in image-index order."""
        names = names if names is not None else {i: str(i) for i in prepared}
        with self._call(len(prepared), stats) as (results, model, call):
            for pack in packs:
                model.submit(pack, prepared, names, call)
        return [results[i] for i in sorted(results)]

    @contextmanager
    def _call(self, images: int, stats: PipelineStats | None
              ) -> Iterator[tuple[dict[int, ImageResult], "_InFlight", _Call]]:
        """One timed call: its own stats, the results by input index, and the packs in flight; on leaving,
        waits for the packs still running, records wall and CPU time and publishes the stats."""
        call = _Call(stats if stats is not None else PipelineStats())
        call.stats.images = images
        results: dict[int, ImageResult] = {}
        t0, cpu0 = time.perf_counter(), time.process_time()

        def finish(done: list[ImageResult]) -> None:
            now = 1000 * (time.perf_counter() - t0)
            for res in done:
                results[res.index] = res
                call.stats.done_ms[res.index] = now

        if self.concurrency > 1:
            self.runner.activate()  # once, before concurrent calls race to activate it
        with _InFlight(self.run_pack, self.concurrency, finish) as model:
            yield results, model, call
        call.stats.wall_s = time.perf_counter() - t0
        call.stats.cpu_s = time.process_time() - cpu0
        self.stats = call.stats
        if self.trim_memory:
            trim_heap()

    def stream(self, sources: Iterable[ImageSource], buffer: int = 8, min_fill: float = 0.9,
               max_delay_frames: int | None = None, max_delay_ms: float = DEFAULT_MAX_DELAY_MS) -> Iterator[ImageResult]:
        """Results for an unbounded stream (e.g. a camera), in input order, holding at most ``buffer`` inputs.

        Every input gets its result within bounds: it waits for pack-mates for at most ``max_delay_frames``
        later inputs (default ``buffer``) and ``max_delay_ms`` (default 0: frames that are ready together
        share packs, and a frame alone runs at once); with a delay above 0 a pack filled to ``min_fill``
        runs without waiting. A thread pulls inputs from ``sources`` and runs the front end on them while
        the model runs, never more than ``buffer`` inputs ahead of the results handed back, so memory is
        constant however long the stream runs. See :class:`~navit_deploy.packing.StreamPolicy`. The time
        bound holds while the caller keeps pulling results; ``sources`` is iterated on that thread.
        :attr:`stats` is this stream's, updated as it runs.
        """
        from navit_deploy.runtime.streaming import run_stream

        policy = StreamPolicy(buffer, min_fill, max_delay_frames, max_delay_ms)
        yield from run_stream(self, sources, policy)
