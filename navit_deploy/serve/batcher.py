"""Cross-request batching: images from concurrent requests wait at most ``max_wait_ms`` and share packs.

Each request's images go through the pipeline's front end (:meth:`Pipeline.prepare`, in a thread pool),
then into one queue. A dispatcher (an asyncio task) hands packs to the model whenever one of its slots
is free (``runner.concurrency`` calls at once: 2 on ONNX Runtime CPU): at once when the queue holds a
pack's worth of tokens, otherwise when the oldest image has waited ``max_wait_ms``. With the default of
0 nothing waits on purpose: packs form from the images that queued while the slots were busy (as
Triton's dynamic batcher does by default). On a CPU, where a model call costs about its tokens, a slot
left waiting for a fuller pack is only lost time; waiting pays where a fuller pack costs little more than
a small one (a GPU with spare parallelism). Which images share
a pack is the packer's decision: :func:`~navit_deploy.packing.first_fit_decreasing` over the head of the
queue, and the pack that holds the oldest image (or the fullest pack, while the oldest image still has
time) is the one that runs. Results go back to each request through its own futures.

``batching="per-request"`` is the baseline the benchmark compares with: one request's images per model
call, no waiting, the same server otherwise.

Bounded: at most ``max_queue`` images are admitted and unanswered at a time; a request that does not fit
raises :class:`QueueFullError` at once (HTTP 503) instead of growing memory. A request cancelled while
its images wait (a client that went away) takes them out of the queue: they are never computed.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal, Sequence

from navit_deploy.errors import NavitError
from navit_deploy.frontend import ImageSource, PreparedImage
from navit_deploy.packing import PackedBatch, first_fit_decreasing
from navit_deploy.runtime import ImageResult, Pipeline
from navit_deploy.serve.metrics import ServeMetrics

Batching = Literal["packed", "per-request"]
BATCHING: tuple[str, ...] = ("packed", "per-request")


class QueueFullError(NavitError):
    """The service cannot take this request's images now (its queue is full); retry later (HTTP 503)."""


class ShuttingDownError(QueueFullError):
    """The service is draining its queue before it stops; send the request to another instance."""


@dataclass
class _Item:
    """One prepared image waiting for, or inside, a model call."""

    ticket: int
    request: int
    name: str
    prepared: PreparedImage
    future: asyncio.Future
    enqueued: float


@dataclass(frozen=True)
class PackRecord:
    """What one model call carried: images, distinct requests, tokens, and its duration."""

    images: int
    requests: int
    tokens: int
    model_ms: float


class Batcher:
    """Queues prepared images from concurrent requests and runs them in shared packs.

    ``pipeline`` brings the runner, the front end and the packer (its capacity and images-per-pack
    limit). ``workers``: front-end threads (default: the pipeline's). ``scan``: how many queued images
    the packer considers for one pack (default: 4x the images a pack may hold).
    """

    def __init__(self, pipeline: Pipeline, max_wait_ms: float = 0.0, max_queue: int = 256,
                 batching: Batching = "packed", workers: int | None = None, metrics: ServeMetrics | None = None,
                 scan: int | None = None) -> None:
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
        if max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_queue >= 1 and max_wait_ms >= 0, got {max_queue}, {max_wait_ms}")
        self.pipeline = pipeline
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.batching = batching
        self.metrics = metrics or ServeMetrics()
        self.capacity = pipeline.packer.pack_len
        self.max_images = pipeline.packer.max_images
        self.scan = scan or 4 * self.max_images
        self.slots = pipeline.concurrency
        self.workers = workers or pipeline.workers
        self.pack_log: deque[PackRecord] = deque(maxlen=1024)
        self._queue: deque[_Item] = deque()
        self._queued_tokens = 0
        self._pending = 0
        self._preparing = 0
        self._closing = False
        self._tickets = itertools.count()
        self._requests = itertools.count()
        self._running: set[asyncio.Task] = set()
        self._dispatcher: asyncio.Task | None = None

    # ------------------------------------------------------------------------------------------ state

    @property
    def queued_images(self) -> int:
        """Images waiting for a model call."""
        return len(self._queue)

    @property
    def pending_images(self) -> int:
        """Images admitted and not answered yet (being prepared, queued or in a model call)."""
        return self._pending

    @property
    def closing(self) -> bool:
        return self._closing

    # ------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the dispatcher and the thread pools on the running event loop; activate the runner."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._free_slots = asyncio.Semaphore(self.slots)
        self._frontend = ThreadPoolExecutor(self.workers, thread_name_prefix="navit-frontend")
        self._model = ThreadPoolExecutor(self.slots, thread_name_prefix="navit-model-slot")
        await self._loop.run_in_executor(self._model, self.pipeline.runner.activate)
        self._dispatcher = self._loop.create_task(self._dispatch(), name="navit-dispatcher")

    def begin_drain(self) -> None:
        """Stop admitting requests and run every queued image now, without waiting for fuller packs."""
        self._closing = True
        self._wakeup.set()

    async def close(self) -> None:
        """Drain: answer everything admitted, then stop the dispatcher and the thread pools."""
        self.begin_drain()
        if self._dispatcher is not None:
            await self._dispatcher
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._frontend.shutdown(wait=True)
        self._model.shutdown(wait=True)

    # -------------------------------------------------------------------------------------- requests

    async def embed(self, images: Sequence[tuple[str, ImageSource]]) -> list[ImageResult]:
        """Results for one request's ``(name, source)`` images, in its order (``index`` = position there).

        Raises :class:`QueueFullError` at once when the images do not fit the queue, and
        :class:`ShuttingDownError` while draining. Cancelling the call (a client that went away) takes
        its images that still wait out of the queue.
        """
        n = len(images)
        if self._closing:
            raise ShuttingDownError("the service is shutting down")
        if self._pending + n > self.max_queue:
            raise QueueFullError(f"queue full: {self._pending} images pending, {n} more would exceed "
                                 f"{self.max_queue}; retry later")
        self._pending += n
        self.metrics.pending.set(self._pending)
        request = next(self._requests)
        items: list[tuple[int, _Item]] = []
        try:
            self._preparing += 1
            try:
                prepared = await asyncio.gather(*(
                    self._loop.run_in_executor(self._frontend, self.pipeline.prepare, i, src)
                    for i, (_, src) in enumerate(images)))
            except asyncio.CancelledError:
                self.metrics.images.labels("cancelled").inc(n)
                raise
            finally:
                self._preparing -= 1
            results: dict[int, ImageResult] = {}
            now = time.perf_counter()
            for i, ((name, _), p) in enumerate(zip(images, prepared)):
                if isinstance(p, ImageResult):
                    results[i] = replace(p, name=name, error=(p.error or "").replace(p.name, name, 1))
                    self.metrics.images.labels("error").inc()
                else:
                    items.append((i, _Item(next(self._tickets), request, name, p, self._loop.create_future(), now)))
            self._enqueue([it for _, it in items])
            for i, it in items:
                results[i] = replace(await it.future, index=i, name=it.name)
            return [results[i] for i in range(n)]
        except asyncio.CancelledError:
            # Images still queued are never computed; those in a model call are counted when it ends.
            self.metrics.images.labels("cancelled").inc(self._withdraw([it for _, it in items]))
            raise
        finally:
            self._pending -= n
            self.metrics.pending.set(self._pending)
            self._wakeup.set()  # a draining dispatcher may be waiting for the last request to leave

    def _enqueue(self, items: list[_Item]) -> None:
        self._queue.extend(items)
        self._queued_tokens += sum(it.prepared.num_tokens for it in items)
        self.metrics.queued.set(len(self._queue))
        self._wakeup.set()

    def _withdraw(self, items: list[_Item]) -> int:
        """Take the still-queued ``items`` out of the queue (their request was cancelled); how many were."""
        gone = {id(it) for it in items}
        return len(self._remove([it for it in self._queue if id(it) in gone])) if gone else 0

    # ------------------------------------------------------------------------------------ dispatching

    async def _dispatch(self) -> None:
        while True:
            await self._free_slots.acquire()
            batch = await self._next_batch()
            if batch is None:
                self._free_slots.release()
                return
            task = self._loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Item] | None:
        """The images of the next model call, once the batching policy says go; None when drained."""
        while True:
            timeout: float | None = None
            if self._queue:
                if self.batching == "per-request":
                    return self._take_request()
                waited = time.perf_counter() - self._queue[0].enqueued
                expired = waited >= self.max_wait_s
                if expired or self._closing or self._queued_tokens >= self.capacity \
                        or len(self._queue) >= self.max_images:
                    return self._take_pack(oldest_first=expired or self._closing)
                timeout = self.max_wait_s - waited
            elif self._closing and self._preparing == 0:
                return None
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def _take_pack(self, oldest_first: bool) -> list[_Item]:
        """First-fit-decreasing over the head of the queue; the bin with the oldest image when it is due,
        else the fullest bin. Those images leave the queue; the rest keep their places."""
        heads = list(itertools.islice(self._queue, self.scan))
        lengths = [it.prepared.num_tokens for it in heads]
        bins = first_fit_decreasing(lengths, self.capacity, self.max_images)
        if oldest_first:
            chosen = next(b for b in bins if 0 in b)
        else:
            chosen = max(bins, key=lambda b: (sum(lengths[i] for i in b), -min(b)))
        return self._remove([heads[i] for i in chosen])

    def _take_request(self) -> list[_Item]:
        request = self._queue[0].request
        return self._remove(list(itertools.takewhile(lambda it: it.request == request, self._queue)))

    def _remove(self, picked: list[_Item]) -> list[_Item]:
        ids = {id(it) for it in picked}
        self._queue = deque(it for it in self._queue if id(it) not in ids)
        self._queued_tokens -= sum(it.prepared.num_tokens for it in picked)
        self.metrics.queued.set(len(self._queue))
        return picked

    async def _run(self, batch: list[_Item]) -> None:
        """One model call (one slot): pack ``batch``, run it in a thread, answer each image's future."""
        try:
            started = time.perf_counter()
            for it in batch:
                self.metrics.queue_wait.observe(started - it.enqueued)
            try:
                results, packs = await self._loop.run_in_executor(self._model, _compute, self.pipeline, batch)
            except Exception as exc:  # noqa: BLE001 - never leave a request waiting on a future no one sets
                results, packs = {it.ticket: ImageResult(it.ticket, it.name, error=f"model call failed: {exc}",
                                                         error_type=type(exc).__name__) for it in batch}, []
            request_of = {it.ticket: it.request for it in batch}
            for pack, ms in packs:
                tickets = pack.image_index.tolist()
                record = PackRecord(len(tickets), len({request_of[t] for t in tickets}), pack.pack_len, ms)
                self.pack_log.append(record)
                self.metrics.packs.inc()
                self.metrics.images_per_pack.observe(record.images)
                self.metrics.requests_per_pack.observe(record.requests)
                self.metrics.pack_tokens.observe(record.tokens)
                self.metrics.model_seconds.observe(ms / 1000.0)
            for it in batch:
                if not it.future.done():
                    res = results.get(it.ticket) or ImageResult(it.ticket, it.name, error="the model call returned "
                                                                "no result for this image", error_type="RuntimeError")
                    self.metrics.images.labels("ok" if res.ok else "error").inc()
                    it.future.set_result(res)
                else:
                    self.metrics.images.labels("cancelled").inc()
        finally:
            self._free_slots.release()


def _compute(pipe: Pipeline, batch: list[_Item]) -> tuple[dict[int, ImageResult], list[tuple[PackedBatch, float]]]:
    """Pack ``batch`` with the pipeline's packer and run it (on a model-slot thread): results by ticket,
    and each pack with its model call's milliseconds. A model call that fails is retried image by image,
    so one image the model rejects fails alone."""
    prepared = {it.ticket: it.prepared for it in batch}
    names = {it.ticket: it.name for it in batch}
    packs = pipe.packer.pack(list(prepared.values()), list(prepared))
    # The slot is the concurrency: its packs run one after the other on this thread (run_packs would start
    # a thread per call).
    results: dict[int, ImageResult] = {}
    timed: list[tuple[PackedBatch, float]] = []
    try:
        for pack in packs:
            started = time.perf_counter()
            results.update((r.index, r) for r in pipe.run_pack(pack, prepared, names))
            timed.append((pack, 1000 * (time.perf_counter() - started)))
        return results, timed
    except Exception as exc:  # noqa: BLE001 - any runner failure becomes per-image errors below
        if len(prepared) == 1:
            (ticket,) = prepared
            return {ticket: ImageResult(ticket, names[ticket], error=f"model call failed: {exc}",
                                        error_type=type(exc).__name__)}, []
    results = {}
    for it in batch:
        results.update(_compute(pipe, [it])[0])
    return results, []
