"""Runs the API with uvicorn inside the caller's event loop (``serve`` and ``dev``)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import socket
from collections.abc import Iterator

import uvicorn
from litestar import Litestar

from taskflow.api.fastpath import asgi_app
from taskflow.runtime import freeze_startup_heap

log = logging.getLogger(__name__)

# Seconds open requests get to finish once the API is told to stop.
GRACEFUL_SHUTDOWN = 10


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the CLI's stop event ends it, so the
    worker in ``taskflow dev`` and the API shut down together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """The listening socket, bound now so that the caller knows the port (``port=0``
    picks a free one) and a port in use fails before anything else starts. It listens at
    once: connections made before uvicorn is up wait in the backlog."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


async def run_api(app: Litestar, sock: socket.socket, stop: asyncio.Event) -> None:
    """Serve ``app`` (behind :mod:`taskflow.api.fastpath`) on ``sock`` until ``stop`` is
    set, then finish in-flight requests."""
    config = uvicorn.Config(
        asgi_app(app),
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        proxy_headers=False,  # we listen on loopback or behind an ingress that rewrites
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        backlog=4096,
    )
    server = _Server(config)
    freeze_startup_heap()
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Waits answer the state as it is and event streams end now, not when the
        # graceful shutdown's time is up: uvicorn would then cancel them, a 500 for
        # each, and for POST /tasks?wait= one that says nothing of the job it created.
        app.state.api.feed.close()
        server.should_exit = True
        stopping.cancel()
        await serving

