"""runner.services.address_guard: every IPv6 form that carries an IPv4 address is judged by that address too."""

from __future__ import annotations

import ipaddress

import pytest

from runner.services.address_guard import address_refusal, embedded_ipv4

# (address, the start of the refusal): the IPv4 address inside decides.
REFUSED = [
    # IPv4 and plain IPv6, as before
    ("127.0.0.1", "loopback address 127.0.0.1"),
    ("10.1.2.3", "private address 10.1.2.3"),
    ("169.254.169.254", "link-local address 169.254.169.254"),
    ("0.0.0.0", "private address 0.0.0.0"),
    ("100.64.0.1", "non-public address 100.64.0.1"),
    ("::1", "loopback address ::1"),
    ("::", "private address ::"),
    ("fe80::1%eth0", "link-local address fe80::1"),
    ("fd00::1", "private address fd00::1"),
    ("ff02::1", "multicast address ff02::1"),
    # IPv4-mapped and IPv4-translated (SIIT)
    ("::ffff:127.0.0.1", "loopback address 127.0.0.1 in IPv4-mapped address ::ffff:7f00:1"),
    ("::ffff:169.254.169.254", "link-local address 169.254.169.254 in IPv4-mapped"),
    ("::ffff:0:127.0.0.1", "loopback address 127.0.0.1 in IPv4-translated address ::ffff:0:7f00:1"),
    ("::ffff:0:10.0.0.1", "private address 10.0.0.1 in IPv4-translated"),
    # 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD
    ("2002:7f00:1::", "loopback address 127.0.0.1 in 6to4 address 2002:7f00:1::"),
    ("2002:7f00:1:ffff:1:2:3:4", "loopback address 127.0.0.1 in 6to4"),
    ("2002:a00:1::", "private address 10.0.0.1 in 6to4"),
    ("2002:a9fe:a9fe::1", "link-local address 169.254.169.254 in 6to4"),
    ("2002::", "private address 0.0.0.0 in 6to4"),
    # Teredo 2001:0:<server>:<flags>:<port>:<client inverted>; the client 127.0.0.1 is 80ff:fffe
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback address 127.0.0.1 in Teredo"),
    ("2001:0:a00:1:8000:63bf:f7f7:f7f7", "private address 10.0.0.1 in Teredo"),  # the server counts too
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "private address 2001:0:4136:e378:8000:63bf:f7f7:f7f7"),
    # NAT64: the well-known prefix carries the address in its last 32 bits; the local-use /48 is never public
    ("64:ff9b::7f00:1", "loopback address 127.0.0.1 in NAT64 address 64:ff9b::7f00:1"),
    ("64:ff9b::a9fe:a9fe", "link-local address 169.254.169.254 in NAT64"),
    ("64:ff9b::c0a8:1", "private address 192.168.0.1 in NAT64"),
    ("64:ff9b:1::808:808", "local-use NAT64 address 64:ff9b:1::808:808"),
    ("64:ff9b:1:7f00:1::", "local-use NAT64"),
    # IPv4-compatible (deprecated): refused for the address inside, and for itself
    ("::127.0.0.1", "loopback address 127.0.0.1 in IPv4-compatible address ::7f00:1"),
    ("::10.0.0.1", "private address 10.0.0.1 in IPv4-compatible"),
    ("::8.8.8.8", "reserved address ::808:808"),
    # ISATAP interface identifiers, in a global prefix
    ("2a00:1450:4001:1::5efe:7f00:1", "loopback address 127.0.0.1 in ISATAP"),
    ("2a00:1450:4001:1:200:5efe:a00:1", "private address 10.0.0.1 in ISATAP"),
]
ALLOWED = [
    "8.8.8.8",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",  # the IPv4 address is where the packet goes
    "::ffff:0:8.8.8.8",
    "64:ff9b::808:808",  # what DNS64 hands out for a public IPv4 host
    "2a00:1450:4001:1::5efe:808:808",
    "2a00:1450:4001:1:200:5efe:808:808",
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_refused_addresses_say_why(address: str, reason: str) -> None:
    refusal = address_refusal(address)
    assert refusal is not None and refusal.startswith(reason), refusal


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(address) is None


@pytest.mark.parametrize(
    ("address", "carried"),
    [
        ("::ffff:1.2.3.4", [("IPv4-mapped", "1.2.3.4")]),
        ("::ffff:0:1.2.3.4", [("IPv4-translated", "1.2.3.4")]),
        ("64:ff9b::1.2.3.4", [("NAT64", "1.2.3.4")]),
        ("::1.2.3.4", [("IPv4-compatible", "1.2.3.4")]),
        ("2002:102:304::", [("6to4", "1.2.3.4")]),
        ("2001:0:506:708::fefd:fcfb", [("Teredo", "5.6.7.8"), ("Teredo", "1.2.3.4")]),
        ("2a00::5efe:102:304", [("ISATAP", "1.2.3.4")]),
        ("::1", []),
        ("::", []),
        ("2001:4860:4860::8888", []),
    ],
)
def test_every_form_that_carries_an_ipv4_address_is_found(address: str, carried: list[tuple[str, str]]) -> None:
    ip = ipaddress.IPv6Address(address)
    assert [(form, str(inner)) for form, inner in embedded_ipv4(ip)] == carried
