"""Built-in tasks: ``noop``, ``echo``, ``sleep``, ``fail`` (demos, tests, benchmarks) and
``http`` (call a URL)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import aiohttp
import msgspec
from msgspec import Meta, Struct
from yarl import URL

from taskflow.config import OutboundSettings
from taskflow.outbound import BlockedDestination, OutboundClient
from taskflow.worker.registry import JobContext, NonRetryableError, Registry, RetryAfter


class SleepPayload(Struct, forbid_unknown_fields=True):
    seconds: Annotated[float, Meta(ge=0, le=86_400)]


class FailPayload(Struct, forbid_unknown_fields=True):
    # Fail the first `times` attempts, then succeed; absent: fail every attempt.
    times: Annotated[int, Meta(ge=0)] | None = None
    message: str = "failed on purpose"
    retryable: bool = True


class HttpPayload(Struct, forbid_unknown_fields=True):
    url: Annotated[str, Meta(min_length=1, max_length=8192)]
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    headers: dict[str, str] = {}
    body: Any = None  # a string is sent as is; anything else as JSON
    timeout: Annotated[float, Meta(gt=0, le=3600)] = 30.0


async def noop(ctx: JobContext) -> None:
    return None


async def echo(ctx: JobContext) -> Any:
    return ctx.payload


async def sleep(ctx: JobContext) -> dict[str, float]:
    await asyncio.sleep(ctx.payload.seconds)
    return {"slept": ctx.payload.seconds}


async def fail(ctx: JobContext) -> dict[str, int]:
    spec: FailPayload = ctx.payload
    if spec.times is None or ctx.attempt <= spec.times:
        if not spec.retryable:
            raise NonRetryableError(spec.message)
        raise RuntimeError(f"{spec.message} (attempt {ctx.attempt})")
    return {"succeeded_on_attempt": ctx.attempt}


# 408 Request Timeout, 429 Too Many Requests and 5xx are worth another attempt.
_RETRYABLE = frozenset({408, 429})


class HttpTask:
    """Calls ``payload.url``: 2xx succeeds, 408/429/5xx and connection errors retry, any
    other status fails at once. Redirects are not followed."""

    def __init__(self, client: OutboundClient) -> None:
        self.client = client

    async def __call__(self, ctx: JobContext) -> dict[str, Any]:
        spec: HttpPayload = ctx.payload
        url = URL(spec.url)
        if url.scheme not in ("http", "https") or not url.host:
            raise NonRetryableError(f"http task needs an http(s) URL with a host, got {spec.url!r}")
        kwargs: dict[str, Any] = {"headers": spec.headers, "allow_redirects": False,
                                  "timeout": aiohttp.ClientTimeout(total=spec.timeout)}
        if isinstance(spec.body, str):
            kwargs["data"] = spec.body
        elif spec.body is not None:
            kwargs["data"] = msgspec.json.encode(spec.body)
            kwargs["headers"] = {"Content-Type": "application/json", **spec.headers}
        try:
            async with self.client.request(spec.method, url, **kwargs) as resp:
                body = await _read_up_to(resp.content, self.client.settings.max_response_bytes)
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except BlockedDestination as exc:
            raise NonRetryableError(str(exc)) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise ConnectionError(f"{spec.method} {spec.url}: {type(exc).__name__}: {exc}") from None
        # NUL cannot be stored in PostgreSQL text or jsonb.
        text = body.decode("utf-8", "replace").replace("\x00", "\ufffd")
        if 200 <= status < 300:
            return {"status": status, "body": text}
        message = f"{spec.method} {spec.url} answered {status}: {text[:500]}"
        if status == 429 and retry_after and retry_after.isascii() and retry_after.isdigit():
            raise RetryAfter(float(retry_after), message)
        if status in _RETRYABLE or status >= 500:
            raise ConnectionError(message)
        raise NonRetryableError(message)


async def _read_up_to(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body, or its first ``limit`` bytes (``read(n)`` returns what has arrived)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def builtin_registry(outbound: OutboundSettings) -> tuple[Registry, OutboundClient]:
    """The built-in tasks, and the outbound client the worker closes at shutdown."""
    registry = Registry()
    client = OutboundClient(outbound)
    registry.register("noop", noop)
    registry.register("echo", echo)
    registry.register("sleep", sleep, payload_type=SleepPayload)
    registry.register("fail", fail, payload_type=FailPayload)
    registry.register("http", HttpTask(client).__call__, payload_type=HttpPayload)
    return registry, client
