"""A small blocking client for the embedding service (standard library only; one keep-alive connection).

Used by the benchmark's load generator and the tests; any HTTP client works with the service.
"""

from __future__ import annotations

import http.client
import json
import uuid
from typing import Any, Sequence


def encode_multipart(files: Sequence[tuple[str, bytes]], field: str = "image") -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one file part per ``(filename, bytes)``, and its content type."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, data in files:
        safe = name.replace('"', "%22").replace("\r", "").replace("\n", "")
        chunks += [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{safe}\"\r\n"
                   "Content-Type: application/octet-stream\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


class EmbeddingClient:
    """``client.embed(image_bytes)`` or ``client.embed([(name, bytes), ...])`` -> ``(status, json)``."""

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """One request on the kept-alive connection (reconnects once if the server had closed it)."""
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.close()
                return resp.status, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def embed(self, images: bytes | Sequence[tuple[str, bytes]], top_k: int = 0) -> tuple[int, dict[str, Any]]:
        """POST images to ``/v1/embeddings``: raw bytes as the body, a list as multipart file parts."""
        path = "/v1/embeddings" + (f"?top_k={top_k}" if top_k else "")
        if isinstance(images, bytes):
            body, ctype = images, "application/octet-stream"
        else:
            body, ctype = encode_multipart(images)
        status, data = self.request("POST", path, body, {"Content-Type": ctype})
        return status, json.loads(data) if data else {}

    def metrics(self) -> str:
        return self.request("GET", "/metrics")[1].decode()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "EmbeddingClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def metric_value(text: str, name: str, labels: str = "") -> float:
    """A sample's value in Prometheus text (``name{labels} value``); 0.0 when absent."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0
