"""Liveness, readiness and metrics: no token needed (probes and scrapers)."""

from __future__ import annotations

import asyncio
import hmac

import aiohttp
from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from prometheus_client import CONTENT_TYPE_LATEST

from taskflow.api.errors import ApiError, Unavailable
from taskflow.api.schemas import Health, Problem

_PUBLIC = {"exclude_from_auth": True}


class HealthController(Controller):
    tags = ["operations"]
    security = [{}]  # type: ignore[list-item]  # no token needed
    opt = _PUBLIC

    @get("/healthz", summary="The process is alive")
    async def healthz(self) -> Health:
        return Health("ok")

    @get("/readyz", summary="PostgreSQL and Redis are reachable",
         responses={503: ResponseSpec(Problem, description="a store is unreachable",
                                           media_type="application/problem+json",
                                           generate_examples=False)})
    async def readyz(self, state: State) -> Health:
        api = state.api

        async def check(ping: object) -> str:
            try:
                async with asyncio.timeout(2.0):
                    await ping()  # type: ignore[operator]
            except Exception as exc:  # any failure means not ready; say which
                return f"unreachable ({type(exc).__name__})"
            return "ok"

        pg, rd = await asyncio.gather(check(api.store.ping), check(api.dispatch.ping))
        if pg != "ok" or rd != "ok":
            raise Unavailable(f"not ready: PostgreSQL {pg}, Redis {rd}")
        return Health("ok", postgres=pg, redis=rd)

    @get("/metrics", summary="Prometheus metrics of this API process (a bearer token "
         "only when metrics.token is set)", media_type=CONTENT_TYPE_LATEST)
    async def metrics(self, state: State, request: Request) -> Response[bytes]:
        return await _exposition(state, request)

    @get("/actuator/prometheus", include_in_schema=False, media_type=CONTENT_TYPE_LATEST)
    async def actuator_prometheus(self, state: State, request: Request) -> Response[bytes]:
        return await _exposition(state, request)


async def _exposition(state: State, request: Request) -> Response[bytes]:
    """The page, if the caller may read it. It holds no tenant, job or token data (labels
    are queues, task names, routes, outcomes), so by default anyone who reaches the port
    may; with ``metrics.token`` set, only a scraper presenting that token."""
    expected = state.api.settings.metrics.token
    if expected:
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), expected.encode()):
            raise ApiError(401, "the metrics page needs the metrics token "
                           "(Authorization: Bearer <metrics.token>)",
                           headers={"WWW-Authenticate": 'Bearer realm="taskflow-metrics"'})
    try:
        body = await state.api.metrics.page()
    except (OSError, TimeoutError, aiohttp.ClientError) as exc:
        # One of several API processes, and the supervisor did not answer: no page
        # rather than this process's alone (its counts would read as a reset).
        raise Unavailable(f"the metrics of the other API processes are unavailable "
                          f"({type(exc).__name__})") from None
    return Response(body, media_type=CONTENT_TYPE_LATEST)
