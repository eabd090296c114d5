"""Running the service with uvicorn: in the foreground (``navit serve``) or on a thread (tests, embedding).

Graceful shutdown (SIGTERM, SIGINT, or :meth:`ServerThread.stop`): uvicorn stops accepting connections and
waits for the requests in flight; the batcher is told at the same moment to run what it has queued
without waiting for fuller packs and to refuse new work (503), so queued requests finish promptly.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable

import uvicorn
from starlette.applications import Starlette


class NavitServer(uvicorn.Server):
    """uvicorn's server, which starts the app's drain as soon as shutdown begins and reports the address
    it is bound to (``announce``; useful with port 0)."""

    def __init__(self, config: uvicorn.Config, announce: Callable[[str, int], None] | None = None) -> None:
        super().__init__(config)
        self.announce = announce
        self.address: tuple[str, int] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.servers:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.address = (host, port)
            if self.announce is not None:
                self.announce(host, port)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        batcher = getattr(getattr(self.config.app, "state", None), "batcher", None)
        if batcher is not None:
            batcher.begin_drain()
        await super().shutdown(sockets)


def uvicorn_config(app: Starlette, host: str = "127.0.0.1", port: int = 8000, graceful_timeout: float = 30.0,
                   max_connections: int = 256, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn settings for the service: no reload, one process, the app's lifespan, bounded connections
    (beyond ``max_connections`` uvicorn answers 503) and a bounded graceful shutdown."""
    return uvicorn.Config(app, host=host, port=port, lifespan="on", log_level=log_level,
                          limit_concurrency=max_connections, timeout_graceful_shutdown=graceful_timeout,
                          access_log=False)


def serve(app: Starlette, host: str = "127.0.0.1", port: int = 8000, graceful_timeout: float = 30.0,
          max_connections: int = 256, log_level: str = "warning",
          announce: Callable[[str, int], None] | None = None) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then drain gracefully."""
    NavitServer(uvicorn_config(app, host, port, graceful_timeout, max_connections, log_level), announce).run()


class ServerThread:
    """``with ServerThread(app) as srv: srv.port``: the service on a background thread (port 0: any free
    port), stopped gracefully on leaving."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 60.0,
                 **config: object) -> None:
        self.app = app
        self._ready = threading.Event()
        self.server = NavitServer(uvicorn_config(app, host, port, **config), lambda h, p: self._ready.set())
        self._thread = threading.Thread(target=self.server.run, name="navit-serve", daemon=True)
        self._start_timeout = start_timeout

    @property
    def host(self) -> str:
        assert self.server.address is not None
        return self.server.address[0]

    @property
    def port(self) -> int:
        assert self.server.address is not None
        return self.server.address[1]

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            self.stop()
            raise RuntimeError("the server did not start in time")
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful shutdown; waits at most ``timeout`` seconds for the thread."""
        self.server.should_exit = True
        self._thread.join(timeout)

    def __exit__(self, *exc: object) -> None:
        self.stop()
