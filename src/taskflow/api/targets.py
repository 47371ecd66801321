"""Checks a webhook URL when it is given (at submit, or when a subscription is made):
it must be http(s), resolve, and resolve only to addresses the outbound guard lets
webhooks reach. The notifier checks again when it connects (DNS can change)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

from taskflow.api.errors import ApiError
from taskflow.config import OutboundSettings
from taskflow.outbound import AddressGuard, BlockedDestination

LOOKUPS_AT_ONCE = 8


class TargetCheck:
    def __init__(self, settings: OutboundSettings, resolve_timeout: float = 2.0) -> None:
        self.guard = AddressGuard(settings)
        self.resolve_timeout = resolve_timeout

    async def webhook(self, url: str, field: str) -> None:
        """Raises a 422 naming ``field`` unless ``url`` is a webhook target we may call."""
        await self.webhooks({url: field})

    async def webhooks(self, urls: Mapping[str, str]) -> None:
        """Checks every URL (URL -> the field naming it), each host resolved once and a
        few at a time; the first bad one in the given order is the error."""
        lookups: dict[tuple[str, int], asyncio.Task[list[str] | str]] = {}
        limit = asyncio.Semaphore(LOOKUPS_AT_ONCE)
        checked = []
        for url, field in urls.items():
            host, port = _target(url, field)
            if (host, port) not in lookups:
                lookups[(host, port)] = asyncio.ensure_future(self._resolve(host, port, limit))
            checked.append((host, port, field))
        try:
            await asyncio.gather(*lookups.values())
        finally:
            for task in lookups.values():
                task.cancel()
        for host, port, field in checked:
            found = lookups[(host, port)].result()
            if isinstance(found, str):
                raise ApiError(422, f"{field}: host {host!r} cannot be resolved ({found})",
                               field=field)
            try:
                self.guard.check(host, found)
            except BlockedDestination as exc:
                raise ApiError(422, f"{field}: {exc}", field=field) from None

    async def _resolve(self, host: str, port: int, limit: asyncio.Semaphore) -> list[str] | str:
        """The addresses of ``host``, or why it cannot be resolved."""
        try:
            return [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        async with limit:
            try:
                async with asyncio.timeout(self.resolve_timeout):
                    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except TimeoutError:
                return "timed out"
            except (OSError, UnicodeError) as exc:
                return str(exc)
        return sorted({str(info[4][0]) for info in infos})


def _target(url: str, field: str) -> tuple[str, int]:
    """(host, port) of a webhook URL, or a 422 naming ``field``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ApiError(422, f"{field}: not a URL ({exc})", field=field) from None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise ApiError(422, f"{field}: must be an http(s) URL with a host", field=field)
    if parts.username or parts.password:
        raise ApiError(422, f"{field}: credentials in the URL are not allowed (a webhook "
                       "is authenticated by its signature)", field=field)
    return host, port or (443 if parts.scheme == "https" else 80)
