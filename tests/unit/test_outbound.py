"""The outbound guard's pure logic: how hosts are read and which addresses it permits."""

from __future__ import annotations

import ipaddress

import pytest
from yarl import URL

from taskflow.config import OutboundSettings
from taskflow.outbound import AddressGuard, canonical_url, embedded_ipv4, numeric_host


@pytest.mark.parametrize("host,address", [
    ("127.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("0", "0.0.0.0"),
    ("169.254.43518", "169.254.169.254"), ("[::1]", "::1"), ("::ffff:7f00:1", "::ffff:7f00:1"),
    ("fe80::1%eth0", "fe80::1"),
    ("example.com", None), ("cafe.be", None), ("127.0.0.1.", None), ("1.2.3.4.5", None),
    ("4294967296", None), ("08.1", None), ("ex\u00e4mple", None), ("", None),
])
def test_numeric_host_reads_hosts_as_the_socket_layer_does(host, address):
    expected = ipaddress.ip_address(address) if address else None
    assert numeric_host(host) == expected


def test_canonical_url_rewrites_only_numeric_ipv4_hosts():
    assert str(canonical_url(URL("http://2130706433:81/a?b=1"))) == "http://127.0.0.1:81/a?b=1"
    for same in ("http://127.0.0.1/", "http://example.com/", "http://[::1]:8/"):
        assert canonical_url(URL(same)) == URL(same)


@pytest.mark.parametrize("address,inner", [
    ("::ffff:10.0.0.1", "10.0.0.1"), ("::ffff:0:10.0.0.1", "10.0.0.1"),
    ("::10.0.0.1", "10.0.0.1"), ("64:ff9b::10.0.0.1", "10.0.0.1"),
    ("2002:0a00:0001::", "10.0.0.1"), ("2606:4700::1", None), ("::1", None),
])
def test_ipv6_forms_carrying_ipv4_are_unwrapped(address, inner):
    found = embedded_ipv4(ipaddress.ip_address(address))
    assert found == (ipaddress.ip_address(inner) if inner else None)


def test_guard_decisions():
    default = AddressGuard(OutboundSettings())
    assert default.permits("93.184.215.14") and default.permits("2606:4700::1")
    assert default.permits("::ffff:93.184.215.14")
    for refused in ("127.0.0.1", "10.0.0.1", "100.64.0.1", "169.254.169.254", "0.0.0.0",
                    "224.0.0.1", "::1", "fe80::1", "fec0::1", "::ffff:0:127.0.0.1",
                    "64:ff9b:1::5db8:d70e"):
        assert not default.permits(refused), refused
    private = AddressGuard(OutboundSettings(allow_private=True))
    assert private.permits("10.0.0.1") and private.permits("127.0.0.1")
    assert not private.permits("0.0.0.0") and not private.permits("0.1.2.3")
    assert not private.permits("::") and not private.permits("ff02::1")
    loopback = AddressGuard(OutboundSettings(allowed_networks=("127.0.0.0/8",)))
    assert loopback.permits("127.0.0.2") and loopback.permits("::ffff:127.0.0.2")
    assert not loopback.permits("::1") and not loopback.permits("0.0.0.0")
