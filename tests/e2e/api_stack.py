"""The API and a worker as real processes (``taskflow serve`` + ``taskflow work``) over a
database and Redis prefix of their own, and an HTTP client that speaks to them."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from taskflow.api.scopes import READ, WRITE
from taskflow.config import settings_from_dict
from taskflow.runtime import open_stores
from tests.conftest import TestServers, _with_database
from tests.e2e.processes import Role

SECRET = "e2e-secret-" + "x" * 32
ISSUER = "https://issuer.test"
AUDIENCE = "taskflow-e2e"
TERMINAL = {"succeeded", "failed", "cancelled"}


class Isolated(TestServers):
    """The session's servers, with a database and a Redis key prefix of our own."""

    def __init__(self, base: TestServers, data_dir: Path) -> None:
        self.name = f"taskflow_e2e_{uuid.uuid4().hex[:10]}"
        super().__init__(_with_database(base.database_url, self.name), base.redis_url,
                         data_dir)
        self.admin_url = base.database_url
        self.prefix = f"tf{uuid.uuid4().hex[:8]}"

    async def create(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        await conn.execute(f'CREATE DATABASE "{self.name}"')
        await conn.close()
        settings = settings_from_dict({"redis_prefix": self.prefix})
        async with open_stores(settings, self.database_url, self.redis_url,
                               apply_migrations=True):
            pass

    async def drop(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        await conn.close()


def token(tenant: str, /, scopes: Iterable[str] = (READ, WRITE), *, key: Any = SECRET,
          alg: str = "HS256", ttl: float = 600, headers: dict[str, Any] | None = None,
          **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "e2e", "tenant": tenant, "scope": " ".join(scopes), "iss": ISSUER,
            "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + int(ttl), **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg,
                      headers=headers)


class Reply:
    def __init__(self, status: int, headers: Any, body: Any) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<{self.status} {self.body!r}>"


class Client:
    """JSON over HTTP as one tenant (``as_tenant`` gives another)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, bearer: str | None) -> None:
        self.http = http
        self.url = url
        self.bearer = bearer

    def with_token(self, bearer: str | None) -> Client:
        return Client(self.http, self.url, bearer)

    async def call(self, method: str, path: str, *, json: Any = None, data: Any = None,
                   params: Any = None, headers: dict[str, str] | None = None) -> Reply:
        hdrs = dict(headers or {})
        if self.bearer:
            hdrs["Authorization"] = f"Bearer {self.bearer}"
        async with self.http.request(method, self.url + path, json=json, data=data,
                                     params=params, headers=hdrs) as resp:
            text = await resp.text()
            ctype = resp.headers.get("content-type", "")
            body = await resp.json(content_type=None) if "json" in ctype and text else text
            return Reply(resp.status, resp.headers, body)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.call("POST", path, **kw)

    async def wait_state(self, job_id: str, states: set[str], timeout: float = 20) -> dict:
        return await self.wait_for(f"/tasks/{job_id}", states, timeout)

    async def wait_workflow(self, workflow_id: str, states: set[str],
                            timeout: float = 30) -> dict:
        return await self.wait_for(f"/workflows/{workflow_id}", states, timeout)

    async def wait_for(self, path: str, states: set[str], timeout: float) -> dict:
        """GET ``path`` until its ``state`` is one of ``states``."""
        deadline = time.monotonic() + timeout
        while True:
            reply = await self.get(path)
            assert reply.status == 200, reply
            if reply.body["state"] in states:
                return reply.body
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} still {reply.body['state']} "
                                     f"after {timeout}s; wanted {states}")
            await asyncio.sleep(0.05)


# The log line is text or a JSON object (log.format): the URL ends at a quote too.
_LISTENING = re.compile(r"API listening on (http://[^\s\"]+)")


async def start_api(servers: TestServers, log: Path, *args: str, **settings: str | None
                    ) -> tuple[Role, str]:
    """``taskflow serve --port 0``; returns the role and its URL once it answers."""
    role = Role(servers, ["serve", "--port", "0", *args], log, **settings)
    deadline = time.monotonic() + 30
    while True:
        match = _LISTENING.search(role.output())
        if match:
            url = match.group(1)
            break
        if role.process.poll() is not None or time.monotonic() > deadline:
            role.stop()
            raise AssertionError(f"taskflow serve did not start:\n{role.output()}")
        await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return role, url
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                role.stop()
                raise AssertionError(f"taskflow serve does not answer:\n{role.output()}")
            await asyncio.sleep(0.05)


def stop(*roles: Role) -> list[int]:
    """SIGTERM, then the exit codes (a role that does not stop in time is killed)."""
    import signal

    for role in roles:
        if role.process.poll() is None:
            role.signal(signal.SIGTERM)
    codes = []
    for role in roles:
        try:
            codes.append(role.wait(timeout=20))
        except Exception:
            role.stop()
            codes.append(-9)
    return codes


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http
