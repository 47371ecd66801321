"""The fast path of ``POST /tasks`` behind a real uvicorn (``run_api``), against the route
alone (``api.fast_submit = false``): what a client sees on the wire must not depend on
which of the two answered."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import msgspec
import pytest

from taskflow.api.app import create_app
from taskflow.api.server import bind, run_api

SECRET = "s" * 32


def _token(scope: str = "tasks:read tasks:write", **claims: Any) -> str:
    body = {"tenant": "t", "scope": scope, "sub": "x", "exp": int(time.time()) + 600,
            **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


@contextlib.asynccontextmanager
async def _serving(stores, settings, fast: bool) -> AsyncIterator[tuple[str, int]]:
    cfg = msgspec.structs.replace(
        settings, jwt_secret=SECRET,
        api=msgspec.structs.replace(settings.api, fast_submit=fast))
    app = create_app(cfg, stores)
    sock = bind("127.0.0.1", 0)
    host, port = sock.getsockname()[:2]
    stop = asyncio.Event()
    server = asyncio.create_task(run_api(app, sock, stop))
    try:
        for _ in range(100):  # until uvicorn answers
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection(host, port)
                w.close()
                break
            await asyncio.sleep(0.05)
        yield host, port
    finally:
        stop.set()
        await asyncio.wait_for(server, 20)
        sock.close()


async def _first_line(host: str, port: int, head: bytes, wait: float = 2.0) -> bytes:
    """The first status line the server sends after the request's head alone (no body)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.readline(), wait)
        except TimeoutError:
            return b"(nothing)"
    finally:
        writer.close()


@pytest.mark.parametrize("expect", [False, True])
@pytest.mark.parametrize("token", ["expired", "missing", "read-only"])
async def test_a_refused_token_is_answered_before_the_body_is_read(
        stores, settings, expect, token):
    # The route refuses a token before it reads the body: 401/403 at once, and with
    # "Expect: 100-continue" no "100 Continue" (the client never uploads the body). The
    # fast path read up to api.max_body_bytes of an unauthenticated body first.
    authorization = {
        "expired": b"Authorization: Bearer " + _token(exp=int(time.time()) - 3600).encode()
                   + b"\r\n",
        "missing": b"",
        "read-only": b"Authorization: Bearer " + _token("tasks:read").encode() + b"\r\n",
    }[token]
    head = (b"POST /tasks HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\n" + authorization
            + (b"Expect: 100-continue\r\n" if expect else b"") + b"\r\n")
    lines = []
    for fast in (False, True):
        async with _serving(stores, settings, fast) as (host, port):
            lines.append(await _first_line(host, port, head))
    want = b"403" if token == "read-only" else b"401"
    assert lines[0].startswith(b"HTTP/1.1 " + want), lines
    assert lines[1] == lines[0], f"route: {lines[0]!r}, fast path: {lines[1]!r}"
