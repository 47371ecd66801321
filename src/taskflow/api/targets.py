"""Checks a webhook URL when it is given (at submit, or when a subscription is made):
it must be http(s), resolve, and resolve only to addresses the outbound guard lets
webhooks reach. The notifier checks again when it connects (DNS can change)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from taskflow.api.errors import ApiError
from taskflow.config import OutboundSettings
from taskflow.outbound import AddressGuard, BlockedDestination


class TargetCheck:
    def __init__(self, settings: OutboundSettings, resolve_timeout: float = 2.0) -> None:
        self.guard = AddressGuard(settings)
        self.resolve_timeout = resolve_timeout

    async def webhook(self, url: str, field: str) -> None:
        """Raises a 422 naming ``field`` unless ``url`` is a webhook target we may call."""
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
        addresses = await self._resolve(host, port or (443 if parts.scheme == "https" else 80),
                                        field)
        try:
            self.guard.check(host, addresses)
        except BlockedDestination as exc:
            raise ApiError(422, f"{field}: {exc}", field=field) from None

    async def _resolve(self, host: str, port: int, field: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.resolve_timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError, asyncio.TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            raise ApiError(422, f"{field}: host {host!r} cannot be resolved ({reason})",
                           field=field) from None
        return sorted({str(info[4][0]) for info in infos})
