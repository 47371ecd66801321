"""Outbound HTTP that cannot be pointed at the server's own internals.

Used by the ``http`` task (and later by webhooks). Loopback, private, link-local,
multicast and reserved addresses are refused unless the operator allows them; the check
runs on the addresses aiohttp actually connects to (a resolver wrapper, against DNS
rebinding), and redirects are not followed (a redirect could point anywhere).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from taskflow.config import OutboundSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, IPv4-compatible, NAT64, 6to4,
    Teredo), which is where a connection to it may end up."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in net for net in _NAT64) or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class BlockedDestination(Exception):
    """The destination resolves to an address outbound requests may not reach."""


class AddressGuard:
    def __init__(self, settings: OutboundSettings) -> None:
        self.allow_private = settings.allow_private
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in settings.allowed_networks]

    def permits(self, address: str) -> bool:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        if any(ip in net for net in self.allowed):
            return True
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            # An IPv6 form that reaches an IPv4 host: judge the host.
            return self.permits(str(embedded))
        if self.allow_private:
            return not ip.is_multicast and not ip.is_unspecified
        return ip.is_global and not ip.is_multicast

    def check(self, host: str, addresses: list[str]) -> None:
        refused = [a for a in addresses if not self.permits(a)]
        if refused or not addresses:
            raise BlockedDestination(
                f"{host} resolves to {', '.join(refused) or 'nothing'}, which outbound "
                "requests may not reach (set outbound.allowed_networks to allow it)"
            )


class _GuardedResolver(AbstractResolver):
    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[dict[str, Any]]:
        infos = await self._inner.resolve(host, port, family)
        self._guard.check(host, [i["host"] for i in infos])
        return infos

    async def close(self) -> None:
        await self._inner.close()


class OutboundClient:
    """A lazily created aiohttp session whose connections pass the address guard."""

    def __init__(self, settings: OutboundSettings) -> None:
        self.settings = settings
        self.guard = AddressGuard(settings)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(resolver=_GuardedResolver(self.guard), limit=200)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def check_literal(self, host: str) -> None:
        """aiohttp does not resolve IP literals, so those are checked here."""
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return  # a name: the resolver checks it
        self.guard.check(host, [host.strip("[]")])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
