"""The JWKS cache against a real key server on loopback: while it is down, requests are
answered from what was fetched before, and the key server sees one fetch per
``min_refetch``, not one per request; a key taken out of the set stops its tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from taskflow.api.auth import InvalidToken, JwksCache, TokenVerifier
from taskflow.api.errors import Unavailable
from taskflow.config import AuthSettings
from tests.helpers import wait_until


class KeyServer:
    def __init__(self) -> None:
        self.private: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.keys: dict = {"keys": []}
        self.publish("k1")
        self.up = True
        self.hits = 0
        self.delay = 0.0  # seconds before each answer (a slow key server)
        self.server: TestServer | None = None

    def publish(self, *kids: str) -> None:
        """The set holds exactly these keys (made on first use)."""
        for kid in kids:
            self.private.setdefault(kid, ec.generate_private_key(ec.SECP256R1()))
        self.keys = {"keys": [
            {**ECAlgorithm.to_jwk(self.private[kid].public_key(), as_dict=True), "kid": kid,
             "alg": "ES256", "use": "sig"} for kid in kids]}

    def token(self, kid: str) -> str:
        return jwt.encode({"tenant": "t", "scope": "tasks:read", "sub": "x",
                           "exp": int(time.time()) + 600}, self.private[kid],
                          algorithm="ES256", headers={"kid": kid})

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        await asyncio.sleep(self.delay)
        if not self.up:
            return web.Response(status=503)
        return web.json_response(self.keys)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/jwks"))


@pytest.fixture
async def key_server() -> AsyncIterator[KeyServer]:
    keys = KeyServer()
    app = web.Application()
    app.router.add_get("/jwks", keys.handle)
    keys.server = TestServer(app, host="127.0.0.1")
    await keys.server.start_server()
    yield keys
    await keys.server.close()


async def test_unknown_kids_during_an_outage_cost_one_fetch(key_server):
    # A failed fetch was remembered only as "fetched a while ago": every token naming an
    # unknown kid (anyone can make one) fetched again, one after the other under the
    # lock, each up to the fetch timeout.
    cache = JwksCache(key_server.url, ttl=300, min_refetch=1.0)
    try:
        assert [k.key_id for k in await cache.get("k1")] == ["k1"]
        assert [] == await cache.get("forged")  # fetched just now: not again
        assert key_server.hits == 1
        key_server.up = False
        await asyncio.sleep(1.1)  # an unknown kid may fetch again
        answers = await asyncio.gather(*(cache.get(f"forged-{i}") for i in range(20)))
        assert answers == [[]] * 20  # unknown kids are unknown: a 401, not a 503
        assert [k.key_id for k in await cache.get("k1")] == ["k1"]  # still served
        assert key_server.hits == 2, key_server.hits  # the first fetch and one retry
    finally:
        await cache.close()


async def test_with_no_keys_an_outage_answers_every_request_from_one_failed_fetch(
        key_server):
    key_server.up = False
    cache = JwksCache(key_server.url, ttl=300, min_refetch=60)
    try:
        answers = await asyncio.gather(*(cache.get("k1") for _ in range(10)),
                                       return_exceptions=True)
        assert all(isinstance(a, Unavailable) for a in answers), answers
        assert "cannot fetch signing keys from auth.jwks_url" in answers[0].detail
        assert key_server.hits == 1, key_server.hits
    finally:
        await cache.close()


async def test_keys_come_back_after_the_outage(key_server):
    key_server.up = False
    cache = JwksCache(key_server.url, ttl=300, min_refetch=0.05)
    try:
        with pytest.raises(Unavailable):
            await cache.get("k1")
        key_server.up = True
        await asyncio.sleep(0.1)
        assert [k.key_id for k in await cache.get("k1")] == ["k1"]
    finally:
        await cache.close()


async def test_a_key_set_that_is_not_an_object_is_a_failed_fetch(key_server):
    key_server.keys = ["not", "a", "set"]  # type: ignore[assignment]
    cache = JwksCache(key_server.url, ttl=300, min_refetch=60)
    try:
        with pytest.raises(Unavailable) as caught:
            await cache.get("k1")
        assert "not a JWK set" in caught.value.detail
    finally:
        await cache.close()


async def test_a_slow_refetch_does_not_hold_up_tokens_with_a_known_kid(key_server):
    # Once the keys were ttl old, every request waited (under the lock) for the refetch,
    # up to its 5 s timeout, although the keys it needed were at hand.
    cache = JwksCache(key_server.url, ttl=0.3, min_refetch=0.05)
    try:
        assert [k.key_id for k in await cache.get("k1")] == ["k1"]
        await asyncio.sleep(0.4)  # the keys are due for a refetch
        key_server.delay = 1.5
        rotated = {**key_server.keys["keys"][0], "kid": "k2"}
        key_server.keys = {"keys": [key_server.keys["keys"][0], rotated]}
        began = time.monotonic()
        answers = await asyncio.gather(*(cache.get("k1") for _ in range(5)))
        assert time.monotonic() - began < 0.5, "waited for the refetch"
        assert [[k.key_id for k in a] for a in answers] == [["k1"]] * 5
        # An unknown kid waits for that same refetch, which brings it.
        assert [k.key_id for k in await cache.get("k2")] == ["k2"]
        assert key_server.hits == 2, key_server.hits
    finally:
        await cache.close()


async def test_a_request_that_gives_up_during_the_first_fetch_leaves_it_to_the_next(
        key_server):
    # The request that fetched was cancelled (its client went away, a deadline): the
    # fetch counted as tried without a failure, so for min_refetch every request found
    # no keys and no failure, and a good token was a 401 (no key).
    key_server.delay = 0.5
    cache = JwksCache(key_server.url, ttl=300, min_refetch=60)
    try:
        first = asyncio.create_task(cache.get("k1"))
        await asyncio.sleep(0.1)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert [k.key_id for k in await asyncio.wait_for(cache.get("k1"), 10)] == ["k1"]
    finally:
        await cache.close()


async def test_a_key_whose_kid_is_not_a_string_is_skipped_not_a_500(key_server):
    good = key_server.keys["keys"][0]
    key_server.keys = {"keys": [{**good, "kid": ["k0"]}, good]}
    cache = JwksCache(key_server.url, ttl=300, min_refetch=60)
    try:
        assert [k.key_id for k in await cache.get("k1")] == ["k1"]
    finally:
        await cache.close()


async def test_a_key_taken_out_of_the_set_stops_its_cached_tokens(key_server):
    # The verified-token cache answered a token it had seen from memory until the token
    # expired, so a key the key server stopped publishing (rotated out, revoked) kept its
    # tokens working for their whole lifetime.
    key_server.publish("k1", "k2")
    verifier = TokenVerifier(AuthSettings(jwks_url=key_server.url, jwks_cache_seconds=0.2),
                             secret="")
    assert verifier.jwks is not None
    verifier.jwks.min_refetch = 0.05
    old, new = key_server.token("k1"), key_server.token("k2")
    try:
        assert (await verifier.verify(old)).tenant == "t"
        assert (await verifier.verify(new)).tenant == "t"
        key_server.publish("k2")  # k1 revoked
        await asyncio.sleep(0.3)  # the cached set is stale
        await verifier.verify(new)  # answered at once; the refetch runs meanwhile
        await wait_until(lambda: asyncio.sleep(0, "k1" not in verifier.jwks.keys))
        with pytest.raises(InvalidToken) as refused:
            await verifier.verify(old)
        assert refused.value.reason == "unknown_key"
        assert (await verifier.verify(new)).tenant == "t"  # its key is still published
    finally:
        await verifier.close()
