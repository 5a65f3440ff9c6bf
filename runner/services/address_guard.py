"""Which IP addresses an outgoing request (a completion callback) may reach: public ones only.

An address is refused when Python's `ipaddress` calls it loopback, link-local, private,
multicast, reserved, unspecified or otherwise not global. IPv6 has several forms that carry an
IPv4 address inside them, and a packet sent to one can end up at that IPv4 address (through the
host's own stack, a 6to4 or Teredo relay, or a NAT64 gateway): `http://[2002:7f00:1::]/` is a
way to say 127.0.0.1 that the IPv6 flags alone call global. So the IPv4 address inside is judged
too, for every form below:

- IPv4-mapped `::ffff:a.b.c.d` and IPv4-translated `::ffff:0:a.b.c.d` (SIIT): the IPv4 address
  is the destination;
- NAT64 `64:ff9b::a.b.c.d` (RFC 6052): a gateway sends it on to the IPv4 address, which alone
  decides (a DNS64 resolver hands these out for public IPv4 hosts);
- local-use NAT64 `64:ff9b:1::/48` (RFC 8215): where the IPv4 address sits depends on the
  operator's prefix length, and the range is never global: refused whole;
- IPv4-compatible `::a.b.c.d` (deprecated), 6to4 `2002:AABB:CCDD::/48`, Teredo `2001::/32`
  (server address, and client address in the last 32 bits inverted) and ISATAP interface
  identifiers (`…:0:5efe:a.b.c.d`, `…:200:5efe:a.b.c.d`): both the IPv6 address and every IPv4
  address inside must be public.
"""

from __future__ import annotations

import ipaddress

REFUSED_FLAGS = ("is_loopback", "is_link_local", "is_private", "is_multicast", "is_reserved", "is_unspecified")
IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
# The interface identifier's upper 32 bits of an ISATAP address, with the universal/local bit masked out.
ISATAP_MARK = 0x00005EFE
ISATAP_MASK = 0xFDFFFFFF
# Forms whose IPv4 address is where the packet goes, so that address alone is judged.
TRANSLATED_FORMS = frozenset({"IPv4-mapped", "IPv4-translated", "NAT64"})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """Each IPv4 address that `ip` carries, with the name of the form that carries it."""
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if ip.ipv4_mapped is not None:
        found.append(("IPv4-mapped", ip.ipv4_mapped))
    elif ip in IPV4_TRANSLATED:
        found.append(("IPv4-translated", low32))
    elif ip in NAT64_WELL_KNOWN:
        found.append(("NAT64", low32))
    elif ip in IPV4_COMPATIBLE and int(ip) > 1:  # not :: nor ::1, which are IPv6's own
        found.append(("IPv4-compatible", low32))
    if ip.sixtofour is not None:
        found.append(("6to4", ip.sixtofour))
    if ip.teredo is not None:
        server, client = ip.teredo
        found += [("Teredo", server), ("Teredo", client)]
    if (int(ip) >> 32) & ISATAP_MASK == ISATAP_MARK:
        found.append(("ISATAP", low32))
    return found


def _flag_refusal(ip: IPAddress) -> str | None:
    for flag in REFUSED_FLAGS:
        if getattr(ip, flag):
            return f"{flag.removeprefix('is_').replace('_', '-')} address {ip}"
    if not ip.is_global:
        return f"non-public address {ip}"
    return None


def address_refusal(address: str) -> str | None:
    """Why a request must not go to `address` ("loopback address 127.0.0.1 in 6to4 address …"), or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # a scope (fe80::1%eth0) is no part of the judgement
    if not isinstance(ip, ipaddress.IPv6Address):
        return _flag_refusal(ip)
    if ip in NAT64_LOCAL_USE:
        return f"local-use NAT64 address {ip}"
    carried = embedded_ipv4(ip)
    for form, inner in carried:
        reason = _flag_refusal(inner)
        if reason is not None:
            return f"{reason} in {form} address {ip}"
    if any(form in TRANSLATED_FORMS for form, _ in carried):
        return None
    return _flag_refusal(ip)
