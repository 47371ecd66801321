"""Outbound HTTP that cannot be pointed at the server's own internals.

Used by the ``http`` task and by webhooks: both go through :class:`OutboundClient`, whose
aiohttp connector (:class:`GuardedConnector`) only connects to addresses the
:class:`AddressGuard` permits. Loopback, private, link-local, multicast and reserved
addresses are refused unless the operator allows them.

- A host name is resolved once, by the guard's resolver, and the connection goes to
  exactly the addresses that passed the check (no second lookup a DNS rebinding could
  answer differently).
- An address written in the URL is read as the socket layer would read it, whatever its
  form: ``2130706433``, ``127.1``, ``0x7f.1``, ``0177.0.0.1`` and ``0`` are IPv4 addresses
  too, judged as such, and written canonically before aiohttp sees them.
- An IPv6 address that carries an IPv4 one (mapped, translated, compatible, NAT64, 6to4,
  Teredo) is judged by that IPv4 address, which is where a connection to it may end up.

Callers do not follow redirects (a redirect could point anywhere); the connector would
judge the next hop all the same.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from aiohttp.tracing import Trace
from yarl import URL

from taskflow.config import OutboundSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

__all__ = ["AddressGuard", "BlockedDestination", "GuardedConnector", "OutboundClient",
           "canonical_url", "numeric_host"]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 SIIT
# Never reachable on purpose: "this network" (0.0.0.0 reaches the local host on Linux).
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
# Not public although Python's is_global says so: the local-use NAT64 prefix (where its
# IPv4 address sits depends on a prefix length we cannot know) and deprecated site-local.
_NOT_PUBLIC = (ipaddress.IPv6Network("64:ff9b:1::/48"), ipaddress.IPv6Network("fec0::/10"))
# Characters of every numeric IPv4 form (decimal, octal, hex parts); anything else is a name.
_IPV4_FORM = re.compile(r"[0-9a-fA-FxX.]+")


class BlockedDestination(Exception):
    """The destination resolves to an address outbound requests may not reach."""


def numeric_host(host: str) -> IPAddress | None:
    """The address a URL host denotes when it is an address rather than a name, read as
    the socket layer reads it: besides the canonical forms, the legacy IPv4 forms of
    ``inet_aton`` (``2130706433``, ``127.1``, ``0x7f.1``, ``0177.0.0.1``). None for a name."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return _plain(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not text.isascii() or not _IPV4_FORM.fullmatch(text):
        return None
    try:
        # AI_NUMERICHOST: parse only, never a DNS query.
        infos = socket.getaddrinfo(text, None, socket.AF_INET, socket.SOCK_STREAM, 0,
                                   socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return None
    return ipaddress.IPv4Address(infos[0][4][0])


def _plain(ip: IPAddress) -> IPAddress:
    """Without an IPv6 zone (``fe80::1%eth0``): the zone does not change what it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    return ip


def _looks_like_address(host: str) -> bool:
    """What aiohttp connects to without asking a resolver (digits and dots, or a colon)."""
    return ":" in host or host.replace(".", "").isdigit()


def canonical_url(url: URL) -> URL:
    """``url`` with a numeric host written canonically (``http://127.1/`` becomes
    ``http://127.0.0.1/``): aiohttp connects to a canonical address as written and refuses
    the legacy forms."""
    host = url.raw_host
    address = numeric_host(host) if host else None
    if address is None or address.version != 4 or str(address) == host:
        return url
    return url.with_host(str(address))


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, translated, IPv4-compatible,
    NAT64, 6to4, Teredo), which is where a connection to it may end up."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or ip in _IPV4_TRANSLATED or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class AddressGuard:
    """Which addresses outbound connections may reach (:class:`OutboundSettings`): public
    unicast ones, plus ``allowed_networks``, plus every non-public one with
    ``allow_private`` (never multicast, unspecified or ``0.0.0.0/8``)."""

    def __init__(self, settings: OutboundSettings) -> None:
        self.allow_private = settings.allow_private
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in settings.allowed_networks]

    def permits(self, address: IPAddress | str) -> bool:
        ip = _plain(address if not isinstance(address, str)
                    else ipaddress.ip_address(address))
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return True
        embedded = embedded_ipv4(ip)
        if embedded is not None:
            # An IPv6 form that reaches an IPv4 host: judge the host.
            return self.permits(embedded)
        if ip.is_multicast or ip.is_unspecified or ip in _THIS_NETWORK:
            return False
        if self.allow_private:
            return True
        return ip.is_global and not any(ip in net for net in _NOT_PUBLIC)

    def check(self, host: str, addresses: list[IPAddress] | list[str]) -> None:
        """Raises :class:`BlockedDestination` unless every address is permitted."""
        refused = [str(a) for a in addresses if not self.permits(a)]
        if refused or not addresses:
            raise BlockedDestination(
                f"{host} resolves to {', '.join(refused) or 'nothing'}, which outbound "
                "requests may not reach (set outbound.allowed_networks to allow it)"
            )


class GuardedResolver(AbstractResolver):
    """Resolves a host once and returns only addresses the guard permits (or raises
    :class:`BlockedDestination`); aiohttp connects to exactly what it returns."""

    def __init__(self, guard: AddressGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = numeric_host(host)
        if address is not None:
            self._guard.check(host, [address])
            af = socket.AF_INET if address.version == 4 else socket.AF_INET6
            return [ResolveResult(hostname=host, host=str(address), port=port, family=af,
                                  proto=0, flags=socket.AI_NUMERICHOST)]
        infos = await self._inner.resolve(host, port, family)
        self._guard.check(host, [i["host"] for i in infos])
        return infos

    async def close(self) -> None:
        await self._inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A TCP connector that connects only to addresses the guard permits: names through
    :class:`GuardedResolver`, addresses in the URL (which aiohttp does not resolve) checked
    here. ``resolver`` looks names up (aiohttp's default resolver when None); other keyword
    arguments are :class:`aiohttp.TCPConnector`'s."""

    def __init__(self, guard: AddressGuard, *, resolver: AbstractResolver | None = None,
                 **kwargs: Any) -> None:
        super().__init__(resolver=GuardedResolver(guard, resolver), **kwargs)
        self.guard = guard

    async def connect(self, req: aiohttp.ClientRequest, traces: list[Trace],
                      timeout: aiohttp.ClientTimeout) -> aiohttp.connector.Connection:
        host = req.url.raw_host or ""
        address = numeric_host(host)
        if address is not None:
            self.guard.check(host, [address])
        elif _looks_like_address(host):
            # The socket layer would look this up by name although aiohttp took it for an
            # address and skipped the resolver: refuse rather than connect unchecked.
            raise BlockedDestination(f"{host} is not a valid address")
        return await super().connect(req, traces, timeout)


class OutboundClient:
    """Outbound HTTP through the guard: one aiohttp session, created on first use, whose
    connections reach only permitted addresses.

    ``request`` is the way in (it writes numeric hosts canonically first); ``session``
    gives the guarded session itself; ``limit`` caps its open connections and ``resolver``
    looks names up (aiohttp's default when None). Close it with ``close``.
    """

    def __init__(self, settings: OutboundSettings, *, limit: int = 200,
                 resolver: AbstractResolver | None = None) -> None:
        self.settings = settings
        self.guard = AddressGuard(settings)
        self._limit = limit
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = GuardedConnector(self.guard, resolver=self._resolver, limit=self._limit)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def request(self, method: str, url: str | URL, **kwargs: Any
                ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """``session().request(method, url, **kwargs)`` (use with ``async with``), with a
        numeric host written canonically. Raises :class:`BlockedDestination` for a
        destination the guard refuses."""
        return self.session().request(method, canonical_url(URL(url)), **kwargs)

    def check_literal(self, host: str) -> None:
        """Refuses a URL host that is a forbidden address before any connection is
        attempted (the connector enforces the same; this only fails sooner)."""
        address = numeric_host(host)
        if address is not None:
            self.guard.check(host, [address])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
