"""Request bodies: a size limit (HTTP 413) and the images a request carries (raw body or multipart).

The limit is an ASGI middleware around ``receive``: a declared ``Content-Length`` over it is refused
before anything is read, and a streamed (chunked) body is refused as soon as it passes it, so no
request holds more than ``max_bytes`` in memory.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

RAW_TYPES = ("image/", "application/octet-stream")
MAX_PARTS = 100_000


class BodyTooLarge(Exception):
    """The request body passed the size limit while it was being read."""


class UploadError(Exception):
    """A request that carries no usable images; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_response(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message}}, status_code=status, headers=headers or None)


class BodySizeLimit:
    """ASGI middleware: 413 for HTTP bodies over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await error_response(400, "Content-Length is not a number")(scope, receive, send)
                return
            if length > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
        seen = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(f"request body over {self.max_bytes} bytes")
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, f"request body is larger than the limit of {self.max_bytes} bytes")(
            scope, receive, send)


async def read_images(request: Request) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of every image in the request, in order.

    ``multipart/form-data``: every file part, whatever its field name (other fields are ignored);
    ``image/*``, ``application/octet-stream`` or no content type: the raw body is one image, named by
    the ``name`` query parameter (default ``"body"``). Raises :class:`UploadError` otherwise, and
    :class:`BodyTooLarge` / ``ClientDisconnect`` from reading the body.
    """
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        try:
            # The body limit bounds what the parts can hold; the caller checks the number of images.
            form = await request.form(max_files=MAX_PARTS, max_fields=MAX_PARTS)
        except (MultiPartException, HTTPException) as exc:
            raise UploadError(400, f"bad multipart body: {getattr(exc, 'detail', exc)}") from exc
        try:
            images = []
            for field, value in form.multi_items():
                if isinstance(value, UploadFile):
                    images.append((value.filename or field, await value.read()))
            return images
        finally:
            await form.close()
    if ctype and not ctype.startswith(RAW_TYPES):
        raise UploadError(415, f"send an image as the raw body (image/*, application/octet-stream) or as "
                               f"multipart/form-data file parts, not {ctype!r}")
    body = await request.body()
    return [(request.query_params.get("name", "body"), body)] if body else []
