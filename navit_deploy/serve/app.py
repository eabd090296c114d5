"""The HTTP embedding service: a Starlette app around a :class:`~navit_deploy.serve.batcher.Batcher`.

Routes: ``POST /v1/embeddings`` (one or more images, raw body or multipart; JSON per image in request
order, per-image errors kept), ``GET /healthz`` and ``GET /metrics`` (Prometheus text).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from navit_deploy.runtime import ImageResult, Pipeline
from navit_deploy.serve.batcher import Batcher, Batching, QueueFullError
from navit_deploy.serve.metrics import ServeMetrics
from navit_deploy.serve.uploads import BodySizeLimit, BodyTooLarge, Receive, UploadError, error_response, read_images

#: Status recorded for a client that went away before its answer (nginx's "client closed request").
CLIENT_CLOSED = 499


@dataclass(frozen=True)
class ServeConfig:
    """Batching and limits of one service.

    ``max_wait_ms``: longest an image waits for others to share its pack while a model slot is free
    (0: none; packs form from what queued while the slots were busy). ``max_queue``: images admitted
    and unanswered at once (beyond: 503). ``max_body_bytes``: largest request body (beyond: 413).
    ``batching``: ``"packed"`` (across requests) or ``"per-request"`` (one request per model call, the
    baseline). ``workers``: front-end threads (default: the pipeline's).
    """

    max_wait_ms: float = 0.0
    max_queue: int = 256
    max_body_bytes: int = 16 * 1024 * 1024
    batching: Batching = "packed"
    workers: int | None = None


class NumpyJSONResponse(JSONResponse):
    """JSON through orjson, which writes numpy arrays itself: float32 values in their shortest form that
    reads back to the same float32 (about half the bytes of Python's repr of the float64), and ~25x faster
    than ``json.dumps`` of ``tolist()`` for an embedding. That encoding runs on the event loop, once per
    answer, so it bounds how many requests one process can answer."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def result_entry(result: ImageResult, labels: Sequence[str], top_k: int = 0) -> dict[str, Any]:
    """One image's answer: ``index`` and ``name``, then the embedding (a numpy array, for
    :class:`NumpyJSONResponse`) and its sizes, or the error; ``top_k`` only when asked for."""
    d = result.to_json(labels, k=top_k)
    entry = {"index": d.pop("index"), "name": d.pop("path"), **d}
    if result.ok:
        if result.output_kind == "tokens":
            entry["visual_tokens"] = np.ascontiguousarray(result.visual_tokens)
        else:
            entry["embedding"] = np.ascontiguousarray(result.embedding)
    return entry


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone (after the body is read, ``receive`` waits for that alone)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app(pipeline: Pipeline, labels: Sequence[str] = (), config: ServeConfig | None = None,
               model: str = "navit") -> Starlette:
    """The service for ``pipeline`` (runner, front end, packer). The batcher starts and drains with the
    app's lifespan; the runner stays the caller's to open and close. ``app.state.batcher`` and
    ``app.state.metrics`` are there for whoever embeds the app."""
    config = config or ServeConfig()
    metrics = ServeMetrics()
    batcher = Batcher(pipeline, config.max_wait_ms, config.max_queue, config.batching, config.workers, metrics)

    def answer(status: int, started: float, response: Response) -> Response:
        metrics.requests.labels(str(status)).inc()
        if status == 200:
            metrics.latency.observe(time.perf_counter() - started)
        return response

    async def embeddings(request: Request) -> Response:
        started = time.perf_counter()
        if batcher.closing or batcher.pending_images >= config.max_queue:  # refuse before reading the body
            return answer(503, started, error_response(503, "queue full or shutting down; retry later",
                                                       **{"Retry-After": "1"}))
        try:
            top_k = max(0, int(request.query_params.get("top_k", "0")))
            images = await read_images(request)
        except ValueError:
            return answer(400, started, error_response(400, "top_k must be an integer"))
        except BodyTooLarge:
            return answer(413, started, error_response(413, f"request body is larger than the limit of "
                                                            f"{config.max_body_bytes} bytes"))
        except UploadError as exc:
            return answer(exc.status, started, error_response(exc.status, str(exc)))
        except ClientDisconnect:
            return answer(CLIENT_CLOSED, started, Response(status_code=CLIENT_CLOSED))
        if not images:
            return answer(400, started, error_response(400, "no image in the request"))
        if len(images) > config.max_queue:
            return answer(413, started, error_response(413, f"{len(images)} images in one request; this service "
                                                            f"takes at most {config.max_queue}"))
        work = asyncio.ensure_future(batcher.embed(images))
        gone = asyncio.ensure_future(_disconnected(request.receive))
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if not work.done():  # the client went away: withdraw its images, answer no one
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            return answer(CLIENT_CLOSED, started, Response(status_code=CLIENT_CLOSED))
        try:
            results = work.result()
        except QueueFullError as exc:
            return answer(503, started, error_response(503, str(exc), **{"Retry-After": "1"}))
        data = [result_entry(r, labels, top_k) for r in results]
        ok = [r for r in results if r.ok]
        usage = {"images": len(results), "ok": len(ok), "failed": len(results) - len(ok),
                 "tokens": sum(r.tokens for r in ok)}
        return answer(200, started, NumpyJSONResponse({"object": "list", "model": model, "data": data,
                                                       "usage": usage}))

    async def healthz(request: Request) -> Response:
        status = "draining" if batcher.closing else "ok"
        return JSONResponse({"status": status, "model": model, "batching": config.batching,
                             "queued_images": batcher.queued_images, "pending_images": batcher.pending_images},
                            status_code=503 if batcher.closing else 200)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.close()

    app = Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]),
                            Route("/healthz", healthz, methods=["GET"]),
                            Route("/metrics", metrics_endpoint, methods=["GET"])],
                    middleware=[Middleware(BodySizeLimit, max_bytes=config.max_body_bytes)],
                    lifespan=lifespan)
    app.state.batcher = batcher
    app.state.metrics = metrics
    return app
