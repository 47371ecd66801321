"""Fixtures of the API end-to-end tests: a JWKS server, and ``taskflow serve`` plus
``taskflow work`` as processes (one set per module that asks for them)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from jwt.algorithms import RSAAlgorithm

from tests.e2e.api_stack import (
    AUDIENCE, ISSUER, SECRET, Client, Isolated, rsa_key, start_api, stop, token,
)
from tests.e2e.processes import Role


class Jwks:
    def __init__(self, url: str, key: Any, kid: str) -> None:
        self.url = url
        self.key = key
        self.kid = kid


@pytest.fixture(scope="module")
async def jwks() -> AsyncIterator[Jwks]:
    """An RS256 key whose public half a local HTTP server publishes as a JWKS."""
    key = rsa_key()
    public = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    public.update(kid="e2e-key-1", alg="RS256", use="sig")

    async def keys(request: web.Request) -> web.Response:
        return web.json_response({"keys": [public]})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", keys)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Jwks(str(server.make_url("/.well-known/jwks.json")), key, "e2e-key-1")
    await server.close()


class Stack:
    def __init__(self, url: str, servers: Isolated, env: dict[str, str], api: Role,
                 worker: Role) -> None:
        self.url = url
        self.servers = servers
        self.env = env
        self.api = api
        self.worker = worker


@pytest.fixture(scope="module")
async def stack(servers, tmp_path_factory, jwks: Jwks) -> AsyncIterator[Stack]:
    folder = tmp_path_factory.mktemp("api-e2e")
    iso = Isolated(servers, folder)
    await iso.create()
    env = {
        "TASKFLOW_JWT_SECRET": SECRET,
        "TASKFLOW_AUTH__ISSUER": ISSUER,
        "TASKFLOW_AUTH__AUDIENCE": AUDIENCE,
        "TASKFLOW_AUTH__JWKS_URL": jwks.url,
        "TASKFLOW_REDIS_PREFIX": iso.prefix,
        "TASKFLOW_API__MAX_PAYLOAD_BYTES": "4096",
        "TASKFLOW_API__MAX_BODY_BYTES": "2000000",
        "TASKFLOW_QUEUES": '["default", "parked", "q1", "q2", "metered"]',
    }
    api, url = await start_api(iso, folder / "api.log", **env)
    worker = Role(iso, ["work", "--concurrency", "20"], folder / "worker.log", **env)
    try:
        yield Stack(url, iso, env, api, worker)
    finally:
        stop(api, worker)
        await iso.drop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def tenant() -> str:
    """A tenant of the test's own: tests share the stack, not their jobs."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(stack: Stack, http: aiohttp.ClientSession, tenant: str) -> Client:
    return Client(http, stack.url, token(tenant))
