"""The outbound guard against a real HTTP(S) server on 127.0.0.1: every way of writing a
loopback, link-local or private address is refused unless the operator allows it, and is
reached when allowed; names are resolved once and connected to as checked, with the Host
header and TLS SNI of the name."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from taskflow.adapters.embedded import free_port
from taskflow.config import OutboundSettings
from taskflow.outbound import BlockedDestination, OutboundClient

# Every one of these is 127.0.0.1 to the socket layer, and reaches the server.
LOOPBACK = [
    "127.0.0.1", "127.1", "127.0.1", "2130706433", "0x7f.1", "0x7f.0.0.1", "0X7F.0.0.1",
    "0177.0.0.1", "0177.1", "017700000001", "0x7f000001", "0x7f.0x0.0x0.0x1",
    "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::FFFF:127.0.0.1]",
]
# IPv6 forms carrying 127.0.0.1 that do not route here (translated, compatible, NAT64,
# 6to4): refused all the same, since a translator could deliver them to loopback.
LOOPBACK_V6_ELSEWHERE = [
    "[::ffff:0:127.0.0.1]", "[::ffff:0:7f00:1]", "[::127.0.0.1]", "[64:ff9b::127.0.0.1]",
    "[64:ff9b:1::7f00:1]", "[2002:7f00:1::1]",
]
# Never allowed by allowing 127.0.0.0/8: "0" is 0.0.0.0, which Linux delivers to the local
# host; ::1 is loopback outside that network.
UNSPECIFIED_AND_V6_LOOPBACK = ["0", "0.0.0.0", "0x0", "[::]", "[::1]", "[::ffff:0.0.0.0]"]
# The cloud metadata address (169.254.169.254) and private networks, in various forms.
ELSEWHERE = [
    "169.254.43518", "169.254.169.254", "2852039166", "0xa9fea9fe", "[::ffff:a9fe:a9fe]",
    "10.1", "167772161", "192.168.1", "0300.0250.0.1", "[fd00::1]", "[fe80::1]",
    "[fec0::1]", "localhost",
]


class Server:
    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[dict[str, str | None]] = []


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    """Plain HTTP on 127.0.0.1, recording the Host header of every request."""
    port = free_port()
    srv = Server(port)

    async def handle(request: web.Request) -> web.Response:
        srv.seen.append({"host": request.headers.get("Host"), "sni": None})
        return web.Response(text="reached")

    runner = await _serve(handle, port)
    yield srv
    await runner.cleanup()


async def _serve(handle, port: int, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
    return runner


def client(*allowed: str) -> OutboundClient:
    return OutboundClient(OutboundSettings(allowed_networks=allowed))


async def fetch(outbound: OutboundClient, url: str, **kwargs) -> str:
    try:
        async with outbound.request("GET", url, **kwargs) as resp:
            assert resp.status == 200
            return await resp.text()
    finally:
        await outbound.close()


@pytest.mark.parametrize("host", LOOPBACK + LOOPBACK_V6_ELSEWHERE
                         + UNSPECIFIED_AND_V6_LOOPBACK + ELSEWHERE)
async def test_every_form_of_an_internal_address_is_refused_by_default(server, host):
    with pytest.raises(BlockedDestination, match="may not reach"):
        await fetch(client(), f"http://{host}:{server.port}/")
    assert server.seen == []


@pytest.mark.parametrize("host", LOOPBACK)
async def test_every_form_of_loopback_is_reached_when_allowed(server, host):
    assert await fetch(client("127.0.0.0/8"), f"http://{host}:{server.port}/x") == "reached"
    # Numeric IPv4 hosts are written canonically; IPv6 keeps its (compressed) form.
    expected = "127.0.0.1" if "[" not in host else "[::ffff:7f00:1]"
    assert server.seen == [{"host": f"{expected}:{server.port}", "sni": None}]


@pytest.mark.parametrize("host", UNSPECIFIED_AND_V6_LOOPBACK)
async def test_allowing_127_0_0_0_8_does_not_open_other_forms(server, host):
    with pytest.raises(BlockedDestination):
        await fetch(client("127.0.0.0/8"), f"http://{host}:{server.port}/")
    assert server.seen == []


async def test_a_url_that_is_neither_a_name_nor_an_address_is_refused(server):
    # aiohttp would skip the resolver for these, and the socket layer look them up by name.
    for host in ("1.2.3.4.5", "4294967296", "127.0.0.1.", "127.16777216"):
        with pytest.raises(BlockedDestination, match="not a valid address"):
            await fetch(client("0.0.0.0/0"), f"http://{host}:{server.port}/")
    assert server.seen == []


class FixedResolver(AbstractResolver):
    """Answers every name with one address, and counts the questions."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.asked: list[str] = []

    async def resolve(self, host, port=0, family=0):
        self.asked.append(host)
        ip = ipaddress.ip_address(self.address)
        return [{"hostname": host, "host": self.address, "port": port, "proto": 0, "flags": 0,
                 "family": 2 if ip.version == 4 else 10}]

    async def close(self) -> None:
        pass


async def test_a_name_is_resolved_once_and_connected_to_as_checked(server):
    resolver = FixedResolver("127.0.0.1")
    allowed = OutboundClient(OutboundSettings(allowed_networks=("127.0.0.0/8",)),
                             resolver=resolver)
    assert await fetch(allowed, f"http://svc.internal.test:{server.port}/") == "reached"
    assert resolver.asked == ["svc.internal.test"]
    assert server.seen == [{"host": f"svc.internal.test:{server.port}", "sni": None}]
    refused = OutboundClient(OutboundSettings(), resolver=FixedResolver("127.0.0.1"))
    with pytest.raises(BlockedDestination, match="svc.internal.test resolves to 127.0.0.1"):
        await fetch(refused, f"http://svc.internal.test:{server.port}/")
    for address in ("::1", "0.0.0.0", "169.254.169.254", "::ffff:0:a9fe:a9fe", "10.0.0.1"):
        rebound = OutboundClient(OutboundSettings(allowed_networks=("127.0.0.0/8",)),
                                 resolver=FixedResolver(address))
        with pytest.raises(BlockedDestination):
            await fetch(rebound, f"http://svc.internal.test:{server.port}/")
    assert len(server.seen) == 1


def _certificate(name: str, folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_to_a_checked_address_keeps_the_names_sni_and_certificate(tmp_path):
    name = "hooks.internal.test"
    cert, key = _certificate(name, tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, server_name, ctx: sni.append(server_name)
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Host"))
        return web.Response(text="reached")

    port = free_port()
    runner = await _serve(handle, port, server_ctx)
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        resolver = FixedResolver("127.0.0.1")
        outbound = OutboundClient(OutboundSettings(allowed_networks=("127.0.0.0/8",)),
                                  resolver=resolver)
        assert await fetch(outbound, f"https://{name}:{port}/", ssl=trust) == "reached"
        assert sni == [name] and seen == [f"{name}:{port}"] and resolver.asked == [name]
    finally:
        await runner.cleanup()
