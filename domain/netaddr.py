"""Which IP addresses are *inside*: pure rules for the URLs an admin or an upstream may set.

An outbound URL someone else chose (a status-callback endpoint today) must not make our workers
talk to our own network: the loopback, the private ranges, the cloud's metadata service.
:mod:`adapters.outbound` resolves names and checks connected sockets; the rules live here, with
no network, so every spelling is tested in microseconds.

Rules, in order:

1. An address on an allow-list (``OUTBOUND_ALLOWED_NETWORKS``) is never inside: the operator's
   explicit exception wins over every class below. An IPv6 address carrying an IPv4 one (rule 3)
   is allowed when either of them is on the list.
2. A cloud-metadata address (169.254.169.254; 100.100.100.200, Alibaba Cloud; fd00:ec2::254,
   AWS over IPv6) is named as such, before the wider range it sits in.
3. An IPv6 address that carries an IPv4 one is judged by that IPv4 address when it is inside,
   since the kernel or a translator delivers it there: IPv4-mapped ``::ffff:0:0/96``,
   IPv4-translated ``::ffff:0:0:0/96``, IPv4-compatible ``::/96``, NAT64 ``64:ff9b::/96`` and
   6to4 ``2002::/16``. With a public IPv4 inside, NAT64, 6to4 and mapped addresses are public.
4. Otherwise the first range of :data:`INSIDE_V4` / :data:`INSIDE_V6` that holds the address
   names its class: loopback, private (RFC 1918, carrier-grade NAT, unique-local), link-local,
   multicast, unspecified, reserved, benchmark or documentation.
5. An IPv6 address outside global unicast ``2000::/3`` (and not covered above) is reserved.

A URL's host is read as the resolver reads it (:func:`parse_ip_host`): glibc's ``inet_aton``
takes ``2130706433``, ``0x7f000001``, ``0x7f.0.0.1``, ``0177.0.0.1`` and ``127.1`` for
127.0.0.1, so they are parsed here too, without asking DNS; ``localhost`` and ``*.localhost``
are loopback by name (RFC 6761).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

LOOPBACK = "loopback"
PRIVATE = "private"
LINK_LOCAL = "link-local"
MULTICAST = "multicast"
UNSPECIFIED = "unspecified"
RESERVED = "reserved"
BENCHMARK = "benchmark"
DOCUMENTATION = "documentation"
CLOUD_METADATA = "cloud-metadata"

#: (range, class, note): the first range holding an address names it; specific ranges first.
INSIDE_V4: tuple[tuple[IPv4Network, str, str], ...] = tuple(
    (IPv4Network(net), kind, note)
    for net, kind, note in (
        ("169.254.169.254/32", CLOUD_METADATA, "AWS, GCP, Azure, OpenStack"),
        ("100.100.100.200/32", CLOUD_METADATA, "Alibaba Cloud"),
        ("0.0.0.0/8", UNSPECIFIED, "this network"),
        ("127.0.0.0/8", LOOPBACK, ""),
        ("10.0.0.0/8", PRIVATE, "RFC 1918"),
        ("172.16.0.0/12", PRIVATE, "RFC 1918"),
        ("192.168.0.0/16", PRIVATE, "RFC 1918"),
        ("100.64.0.0/10", PRIVATE, "carrier-grade NAT"),
        ("169.254.0.0/16", LINK_LOCAL, ""),
        ("224.0.0.0/4", MULTICAST, ""),
        ("240.0.0.0/4", RESERVED, "incl. broadcast"),
        ("192.0.0.0/24", RESERVED, "IETF protocol assignments"),
        ("192.88.99.0/24", RESERVED, "6to4 relay anycast"),
        ("198.18.0.0/15", BENCHMARK, ""),
        ("192.0.2.0/24", DOCUMENTATION, "TEST-NET-1"),
        ("198.51.100.0/24", DOCUMENTATION, "TEST-NET-2"),
        ("203.0.113.0/24", DOCUMENTATION, "TEST-NET-3"),
    )
)

#: Checked before rule 3, so ``::`` and ``::1`` (inside ``::/96``) keep their own names.
_FIRST_V6: tuple[tuple[IPv6Network, str, str], ...] = tuple(
    (IPv6Network(net), kind, note)
    for net, kind, note in (
        ("fd00:ec2::254/128", CLOUD_METADATA, "AWS"),
        ("::/128", UNSPECIFIED, ""),
        ("::1/128", LOOPBACK, ""),
    )
)

INSIDE_V6: tuple[tuple[IPv6Network, str, str], ...] = _FIRST_V6 + tuple(
    (IPv6Network(net), kind, note)
    for net, kind, note in (
        ("fc00::/7", PRIVATE, "unique local"),
        ("fec0::/10", PRIVATE, "site-local, deprecated"),
        ("fe80::/10", LINK_LOCAL, ""),
        ("ff00::/8", MULTICAST, ""),
        ("64:ff9b:1::/48", PRIVATE, "local-use NAT64"),
        ("100::/64", RESERVED, "discard-only"),
        ("2001:2::/48", BENCHMARK, ""),
        ("2001::/23", RESERVED, "IETF protocol assignments, incl. Teredo"),
        ("2001:db8::/32", DOCUMENTATION, ""),
        ("3fff::/20", DOCUMENTATION, ""),
    )
)

GLOBAL_UNICAST_V6 = IPv6Network("2000::/3")

#: IPv6 ranges whose low 32 bits are an IPv4 address, and whether a public one makes the IPv6
#: address public (mapped, NAT64: the connection goes to that IPv4 address) or not (rule 5).
_CARRIERS_V6: tuple[tuple[IPv6Network, bool], ...] = (
    (IPv6Network("::ffff:0:0/96"), True),
    (IPv6Network("::ffff:0:0:0/96"), False),
    (IPv6Network("::/96"), False),
    (IPv6Network("64:ff9b::/96"), True),
)


@dataclass(frozen=True, slots=True)
class Inside:
    """Why an address is inside: its ``kind`` (a class above), the ``network`` that holds it,
    a ``note`` (may be empty) and the IPv4 address an IPv6 one carried, when that decided."""

    kind: str
    network: str
    note: str = ""
    carried: IPv4Address | None = None

    def label(self) -> str:
        """``"a loopback address (127.0.0.0/8)"``: the class, then the range and the note."""
        article = "an" if self.kind[0] in "aeiou" else "a"
        detail = f"{self.network}, {self.note}" if self.note else self.network
        return f"{article} {self.kind} address ({detail})"

    def describe(self, address: IPAddress) -> str:
        """``"127.0.0.1, a loopback address (127.0.0.0/8)"``; a carried IPv4 address is named
        after the IPv6 one: ``"::ffff:7f00:1 (127.0.0.1), a loopback address (...)"``."""
        shown = f"{address} ({self.carried})" if self.carried is not None else str(address)
        return f"{shown}, {self.label()}"


def _first_match(address: IPAddress, table: Sequence[tuple[IPNetwork, str, str]]) -> Inside | None:
    for network, kind, note in table:
        if address in network:
            return Inside(kind, str(network), note)
    return None


def carried_ipv4(address: IPv6Address) -> tuple[IPv4Address, bool] | None:
    """The IPv4 address an IPv6 one carries (rule 3), and whether a public one makes the IPv6
    address public; None when it carries none."""
    if address.sixtofour is not None:
        return address.sixtofour, True
    for network, public_passes in _CARRIERS_V6:
        if address in network:
            return IPv4Address(int(address) & 0xFFFFFFFF), public_passes
    return None


def classify(address: IPAddress) -> Inside | None:
    """Why ``address`` is inside (rules 2 to 5), or None when it is a public address."""
    if isinstance(address, IPv4Address):
        return _first_match(address, INSIDE_V4)
    if found := _first_match(address, _FIRST_V6):
        return found
    carried = carried_ipv4(address)
    if carried is not None:
        ipv4, public_passes = carried
        if found := _first_match(ipv4, INSIDE_V4):
            return Inside(found.kind, found.network, found.note, carried=ipv4)
        if public_passes:
            return None
    if found := _first_match(address, INSIDE_V6):
        return found
    if address not in GLOBAL_UNICAST_V6:
        return Inside(RESERVED, "outside 2000::/3")
    return None


def is_allowed(address: IPAddress, allowed: tuple[IPNetwork, ...]) -> bool:
    """Rule 1. Versions are compared explicitly: ``ipaddress`` answers an IPv4 address ``in``
    an IPv6 network by its bits alone (``IPv4Address("127.0.0.1") in IPv6Network("::/0")``)."""
    candidates: list[IPAddress] = [address]
    if isinstance(address, IPv6Address) and (carried := carried_ipv4(address)) is not None:
        candidates.append(carried[0])
    return any(a.version == net.version and a in net for a in candidates for net in allowed)


def judge(address: IPAddress, allowed: tuple[IPNetwork, ...] = ()) -> Inside | None:
    """Why ``address`` may not be reached (rules 1 to 5), or None when it may."""
    return None if is_allowed(address, allowed) else classify(address)


# -- reading a URL's host -------------------------------------------------------------------------

#: One part of an inet_aton address: hex (``0x`` alone is 0), octal (leading 0), decimal.
_PART = re.compile(r"0x[0-9a-f]*|0[0-7]*|[1-9][0-9]*")


def _part_value(part: str) -> int | None:
    if not _PART.fullmatch(part):
        return None
    if part.startswith("0x"):
        return int(part[2:] or "0", 16)
    if part.startswith("0") and len(part) > 1:
        return int(part[1:], 8)
    return int(part)


def parse_ipv4_host(host: str) -> IPv4Address | None:
    """The IPv4 address ``host`` spells the way ``inet_aton`` reads it (1 to 4 parts, each
    decimal, ``0x`` hex or ``0`` octal, the last filling the remaining bytes: ``127.1``,
    ``2130706433``), one trailing dot ignored (as the WHATWG URL parser does); None when it is
    not such a spelling (then it is a name, or out of range: the resolver then refuses it)."""
    parts = host.lower().removesuffix(".").split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = [_part_value(p) for p in parts]
    if any(v is None for v in values):
        return None
    numbers = [v for v in values if v is not None]
    *head, last = numbers
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, byte in enumerate(head):
        value |= byte << (8 * (3 - index))
    return IPv4Address(value)


def parse_ip_host(host: str) -> IPAddress | None:
    """The IP address a URL's host (brackets removed) spells, or None when it is a name.

    An IPv6 literal may carry a zone (``fe80::1%eth0``, ``%25`` in a URL): it is dropped, the
    address alone decides. Raises ValueError for a host with ``:`` that is no IPv6 address."""
    if ":" in host:
        return ip_address(host.split("%", 1)[0])
    return parse_ipv4_host(host)


def is_localhost_name(host: str) -> bool:
    """``localhost`` and any name under it, trailing dot or not (RFC 6761: always loopback)."""
    name = host.lower().removesuffix(".")
    return name == "localhost" or name.endswith(".localhost")


#: What a localhost name means, without asking a resolver (RFC 6761 section 6.3).
LOCALHOST_ADDRESSES: tuple[IPAddress, ...] = (IPv4Address("127.0.0.1"), IPv6Address("::1"))


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs (``127.0.0.0/8,::1/128``; a bare address is a single host).

    Raises ValueError naming the bad entry, including one with host bits set (``10.0.0.1/8``):
    a typo in an allow-list must stop the process, not widen or narrow the list silently."""
    networks: list[IPNetwork] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            networks.append(ip_network(item, strict=True))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not a CIDR network ({exc})") from None
    return tuple(networks)
