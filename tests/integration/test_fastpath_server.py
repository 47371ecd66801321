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


async def test_a_key_server_outage_costs_one_fetch_not_two(stores, settings):
    # With auth.jwks_url down, the route answers 503 after one attempt to fetch the keys
    # (up to 5 s); the fast path made its own attempt, then handed over to the route,
    # which made another: twice the wait and twice the load on the key server.
    from aiohttp import web
    from aiohttp.test_utils import TestServer
    from cryptography.hazmat.primitives.asymmetric import ec

    hits = []

    async def jwks(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=500)

    web_app = web.Application()
    web_app.router.add_get("/jwks", jwks)
    key_server = TestServer(web_app, host="127.0.0.1")
    await key_server.start_server()
    key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode({"tenant": "t", "scope": "tasks:write", "sub": "x",
                        "exp": int(time.time()) + 600}, key, algorithm="ES256",
                       headers={"kid": "k1"})
    cfg = msgspec.structs.replace(
        settings, jwt_secret=SECRET,
        auth=msgspec.structs.replace(settings.auth, jwks_url=str(key_server.make_url("/jwks"))))
    body = b'{"task": "noop"}'
    request = (b"POST /tasks HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\nAuthorization: Bearer %s\r\n\r\n%s"
               % (len(body), token.encode(), body))
    counts = []
    try:
        for fast in (False, True):
            hits.clear()
            async with _serving(stores, cfg, fast) as (host, port):
                line = await _first_line(host, port, request, wait=15)
            assert line.startswith(b"HTTP/1.1 503"), line
            counts.append(len(hits))
    finally:
        await key_server.close()
    assert counts == [1, 1], f"key fetches per request: route {counts[0]}, fast {counts[1]}"
