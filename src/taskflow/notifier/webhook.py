"""Webhooks per the Standard Webhooks specification (https://www.standardwebhooks.com):
``webhook-id`` (stable across retries of one delivery), ``webhook-timestamp`` and
``webhook-signature`` = ``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

import aiohttp
import msgspec

from taskflow.adapters.outbox import Delivery
from taskflow.notifier.backoff import Attempted, parse_retry_after
from taskflow.notifier.sinks import Report
from taskflow.outbound import BlockedDestination, OutboundClient

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429})


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for ``body`` under ``secret`` (whsec_...)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


class _Envelope(msgspec.Struct, frozen=True):
    type: str
    timestamp: str
    data: msgspec.Raw


def webhook_body(item: Delivery) -> bytes:
    """``{"type": event, "timestamp": when it happened, "data": {...}}``."""
    stamp = item.created_at.isoformat().replace("+00:00", "Z")
    return msgspec.json.encode(_Envelope(item.event, stamp, msgspec.Raw(item.body.encode())))


def message_id(item: Delivery) -> str:
    return f"msg_{item.message_id.hex}"


class WebhookSink:
    """POSTs each row to its URL through the outbound guard (no private targets unless
    the operator allows them), signed with its subscription's secret, the configured
    global secret, or its tenant's."""

    channel = "webhook"
    backend = "http"

    def __init__(self, client: OutboundClient, *, timeout: float, concurrency: int,
                 global_secret: str, tenant_secret: Callable[[str], Awaitable[str]]) -> None:
        self.client = client
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.limit = asyncio.Semaphore(concurrency)
        self.global_secret = global_secret
        self.tenant_secret = tenant_secret

    async def deliver(self, items: Sequence[Delivery], done: Report) -> None:
        async def one(item: Delivery) -> None:
            try:
                result = await self._one(item)
            except Exception as exc:  # noqa: BLE001 - a bug, or the tenant's secret unread
                # This row alone is retried: the others go on, each reported as it ends.
                log.exception("webhook delivery of outbox row %d failed", item.id)
                result = Attempted.retry(f"internal error: {exc!r}")
            done(item, result)

        await asyncio.gather(*(one(i) for i in items))

    async def _secret(self, item: Delivery) -> str:
        if item.subscription_id is not None:
            return item.secret or ""
        return self.global_secret or item.secret or await self.tenant_secret(item.tenant)

    async def _one(self, item: Delivery) -> Attempted:
        if not item.subscribed:
            return Attempted.give_up("the subscription was deleted")
        url = item.target or ""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return Attempted.give_up(f"not an http(s) URL: {url!r}")
        body = webhook_body(item)
        msg_id = message_id(item)
        async with self.limit:
            try:
                secret = await self._secret(item)
                if not secret:
                    return Attempted.give_up("no signing secret for this webhook")
                stamp = int(time.time())
                headers = {
                    "content-type": "application/json", "user-agent": "taskflow-webhooks",
                    "webhook-id": msg_id, "webhook-timestamp": str(stamp),
                    "webhook-signature": sign(secret, msg_id, stamp, body),
                }
                self.client.check_literal(parts.hostname)
                async with self.client.session().post(
                        url, data=body, headers=headers, timeout=self.timeout,
                        allow_redirects=False) as resp:
                    status = resp.status
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    await resp.content.read(4096)
            except BlockedDestination as exc:
                return Attempted.give_up(str(exc))
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                return Attempted.retry(f"{type(exc).__name__}: {exc}".rstrip(": "))
        if 200 <= status < 300:
            return Attempted.delivered()
        if status in RETRYABLE_STATUS or status >= 500:
            return Attempted.retry(f"HTTP {status}", retry_after)
        return Attempted.give_up(f"HTTP {status}"
                                 + (" (redirects are not followed)" if status < 400 else ""))

    async def close(self) -> None:
        await self.client.close()
