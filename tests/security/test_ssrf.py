"""Outbound URLs cannot reach inside (issue 18, item 1): the registration check, unit level.

No network: an address written in the URL, in any spelling, is judged without a resolver (the
one these tests pass fails when asked), and a name goes through a fake resolver or a patched
``socket.getaddrinfo``. The check after connect, the redirect and the admin API are in
tests/integration/test_outbound_guard.py.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, ip_address

import pytest
from pydantic import ValidationError as SettingsError

from adapters.outbound import DestinationRefused, OutboundPolicy, check_destination
from domain.errors import ValidationError
from domain.netaddr import classify, judge, parse_ip_host, parse_ipv4_host, parse_networks
from services.callbacks import check_url
from settings import Settings, get_settings

CLOSED = OutboundPolicy()  # the production default: nothing inside
LOOPBACK_ALLOWED = OutboundPolicy.from_setting("127.0.0.0/8,::1/128")


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"asked a resolver about {host!r}: a literal must be judged without")


def resolver(table: dict[str, list[str]]):
    """A fake resolver answering from ``table``; any other name does not resolve."""

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


def refusal(url: str, policy: OutboundPolicy = CLOSED, resolve=no_dns) -> str:
    with pytest.raises(DestinationRefused) as refused:
        check_destination(url, policy, resolve=resolve)
    return str(refused.value)


# -- every spelling of an inside address ----------------------------------------------------------

INSIDE = [
    # loopback, in every spelling glibc's inet_aton (and so getaddrinfo) accepts
    ("http://127.0.0.1/", "loopback"),
    ("http://127.0.0.1:5432/", "loopback"),
    ("https://127.0.0.2/hook", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://0X7F000001/", "loopback"),
    ("http://0x7f.0.0.1/", "loopback"),
    ("http://0x7f.1/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://0177.1/", "loopback"),
    ("http://017700000001/", "loopback"),
    ("http://127.0.0.1./", "loopback"),
    ("http://127.000.000.001/", "loopback"),
    ("http://[::1]:6379/", "loopback"),
    ("http://[0:0:0:0:0:0:0:1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[0:0:0:0:0:ffff:127.0.0.1]/", "loopback"),
    ("http://[::127.0.0.1]/", "loopback"),  # IPv4-compatible
    ("http://[::ffff:0:127.0.0.1]/", "loopback"),  # IPv4-translated
    ("http://[64:ff9b::127.0.0.1]/", "loopback"),  # NAT64
    ("http://[2002:7f00:1::]/", "loopback"),  # 6to4
    ("http://localhost/", "loopback"),
    ("http://LOCALHOST./", "loopback"),
    ("http://api.localhost:8000/", "loopback"),
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "loopback"),  # fullwidth digits (IDNA)
    # cloud metadata
    ("http://169.254.169.254/latest/meta-data/", "cloud-metadata"),
    ("http://2852039166/", "cloud-metadata"),
    ("http://0xa9fea9fe/", "cloud-metadata"),
    ("http://0xa9.0xfe.0xa9.0xfe/", "cloud-metadata"),
    ("http://0251.0376.0251.0376/", "cloud-metadata"),
    ("http://169.254.43518/", "cloud-metadata"),
    ("http://[::ffff:169.254.169.254]/", "cloud-metadata"),
    ("http://[::ffff:a9fe:a9fe]/", "cloud-metadata"),
    ("http://[2002:a9fe:a9fe::1]/", "cloud-metadata"),
    ("http://100.100.100.200/", "cloud-metadata"),
    ("http://[fd00:ec2::254]/", "cloud-metadata"),
    # private: RFC 1918, carrier-grade NAT, unique-local
    ("http://10.0.0.1/", "private"),
    ("http://10.1/", "private"),
    ("http://167772161/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://172.31.255.255/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://0xc0a80101/", "private"),
    ("http://100.64.0.1/", "private"),
    ("http://100.127.255.254/", "private"),
    ("http://[fc00::1]/", "private"),
    ("http://[fd12:3456:789a::1]/", "private"),
    ("http://[::ffff:10.0.0.1]/", "private"),
    ("http://[64:ff9b::10.0.0.1]/", "private"),
    ("http://[64:ff9b:1::1]/", "private"),
    # link-local
    ("http://169.254.1.1/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    # multicast
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250:1900/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    # unspecified
    ("http://0.0.0.0:8000/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://0x0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://[::ffff:0.0.0.0]/", "unspecified"),
    # reserved, benchmark, documentation
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://192.0.0.8/", "reserved"),
    ("http://[100::1]/", "reserved"),
    ("http://[2001::1]/", "reserved"),  # Teredo
    ("http://[4000::1]/", "reserved"),  # outside global unicast 2000::/3
    ("http://198.18.0.1/", "benchmark"),
    ("http://198.19.255.255/", "benchmark"),
    ("http://[2001:2::1]/", "benchmark"),
    ("http://192.0.2.1/", "documentation"),
    ("http://198.51.100.7/", "documentation"),
    ("http://203.0.113.9/", "documentation"),
    ("http://[2001:db8::1]/", "documentation"),
]


@pytest.mark.parametrize(("url", "kind"), INSIDE, ids=[u for u, _ in INSIDE])
def test_every_spelling_of_an_inside_address_is_refused_without_dns(url: str, kind: str) -> None:
    reason = refusal(url)
    assert f" {kind} address (" in reason, reason
    assert "/latest" not in reason and "/hook" not in reason  # the host, never the path


def test_the_reason_names_the_address_a_spelling_stands_for() -> None:
    assert refusal("http://0x7f000001/") == (
        "host 0x7f000001 is 127.0.0.1, a loopback address (127.0.0.0/8)"
    )
    assert refusal("http://127.0.0.1/") == "host 127.0.0.1 is a loopback address (127.0.0.0/8)"
    assert "(127.0.0.1), a loopback" in refusal("http://[::ffff:7f00:1]/")
    assert "Alibaba Cloud" in refusal("http://100.100.100.200/")
    assert "carrier-grade NAT" in refusal("http://100.64.0.1/")


PUBLIC = [
    "http://93.184.215.14/",
    "https://93.184.215.14:8443/hook?x=1",
    "http://1572394766/",  # 93.184.215.14 in decimal
    "http://0x5db8d70e/",
    "https://[2606:4700::1111]/hook",
    "http://[::ffff:93.184.215.14]/",
    "http://[64:ff9b::93.184.215.14]/",  # NAT64 of a public address (DNS64 networks)
    "http://[2002:5db8:d70e::1]/",  # 6to4 of a public address
    "http://8.8.8.8/",
    "http://172.32.0.1/",  # just past 172.16.0.0/12
    "http://100.128.0.1/",  # just past 100.64.0.0/10
]


@pytest.mark.parametrize("url", PUBLIC)
def test_public_addresses_pass(url: str) -> None:
    check_destination(url, CLOSED, resolve=no_dns)  # raises if refused


def test_a_name_is_judged_by_every_address_it_resolves_to() -> None:
    dns = resolver(
        {
            "shop.example.com": ["93.184.215.14", "2606:4700::1111"],
            "mixed.example.com": ["93.184.215.14", "10.0.0.5"],
            "v6.example.com": ["2606:4700::1111", "fd12::1"],
            "meta.example.com": ["169.254.169.254"],
            "mapped.example.com": ["::ffff:127.0.0.1"],
        }
    )
    check_destination("https://shop.example.com/hook", CLOSED, resolve=dns)
    assert refusal("https://mixed.example.com/", resolve=dns) == (
        "host mixed.example.com resolves to 10.0.0.5, a private address (10.0.0.0/8, RFC 1918)"
    )
    assert "fd12::1, a private address" in refusal("http://v6.example.com/", resolve=dns)
    assert "a cloud-metadata address" in refusal("http://meta.example.com/", resolve=dns)
    assert "a loopback address" in refusal("http://mapped.example.com/", resolve=dns)
    # A trailing dot is the same name to the resolver (here: not in the table: no answer).
    assert "does not resolve" in refusal("http://shop.example.com./", resolve=dns)


def test_a_name_that_does_not_resolve_is_refused_with_the_reason() -> None:
    assert refusal("https://nowhere.invalid/hook", resolve=resolver({})) == (
        "host nowhere.invalid does not resolve (Name or service not known)"
    )


def test_the_system_resolver_is_asked_for_names(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert "10.1.2.3, a private address" in check_refused("http://internal.corp/")
    assert asked == ["internal.corp"]


def check_refused(url: str) -> str:
    with pytest.raises(DestinationRefused) as refused:
        check_destination(url, CLOSED)  # the default resolver
    return str(refused.value)


def test_hosts_no_resolver_should_see_are_refused() -> None:
    assert "space or a control character" in refusal("http://127.0.0.1%20x/".replace("%20", " "))
    assert "does not appear to be an IPv4 or IPv6" in refusal("http://[::ffff:0x7f.1]/")
    assert "has no host" in refusal("http:///path")
    assert "invalid port" in refusal("http://example.com:99999/")


# -- the allow-list -------------------------------------------------------------------------------


def test_the_allow_list_lets_listed_networks_through_and_nothing_else() -> None:
    for url in ("http://127.0.0.1:8000/hook", "http://localhost/", "http://[::1]/",
                "http://[::ffff:127.0.0.1]/", "http://0x7f000001/"):  # fmt: skip
        check_destination(url, LOOPBACK_ALLOWED, resolve=no_dns)
    assert "a private address" in refusal("http://10.0.0.1/", LOOPBACK_ALLOWED)
    assert "a cloud-metadata address" in refusal("http://169.254.169.254/", LOOPBACK_ALLOWED)
    # localhost is 127.0.0.1 and ::1: with only the IPv4 loopback listed, ::1 is refused.
    only_v4 = OutboundPolicy.from_setting("127.0.0.0/8")
    assert "::1, a loopback address" in refusal("http://localhost/", only_v4)
    one_host = OutboundPolicy.from_setting("10.0.0.7")
    check_destination("http://10.0.0.7/", one_host, resolve=no_dns)
    assert "a private address" in refusal("http://10.0.0.8/", one_host)


def test_an_ipv4_allow_list_entry_does_not_match_by_bits_across_versions() -> None:
    # ipaddress alone answers IPv4Address("127.0.0.1") in IPv6Network("::/0") by bits.
    everything_v6 = parse_networks("::/0")
    assert judge(IPv4Address("127.0.0.1"), everything_v6) is not None
    assert judge(ip_address("::1"), everything_v6) is None


def test_the_setting_refuses_a_malformed_network_naming_the_field() -> None:
    for bad in ("not-a-cidr", "10.0.0.1/8", "127.0.0.0/33", "127.0.0.0/8,,nope"):
        with pytest.raises(SettingsError) as error:
            Settings(outbound_allowed_networks=bad)
        assert error.value.errors()[0]["loc"] == ("outbound_allowed_networks",)
        assert "is not a CIDR network" in str(error.value)
    assert Settings.model_fields["outbound_allowed_networks"].default is None  # closed
    assert OutboundPolicy.from_setting(None) == CLOSED == OutboundPolicy.from_setting(" , ")
    ok = Settings(outbound_allowed_networks="127.0.0.0/8, ::1/128")
    assert OutboundPolicy.from_setting(ok.outbound_allowed_networks) == LOOPBACK_ALLOWED


# -- the pure rules -------------------------------------------------------------------------------

SPELLINGS = ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "0x7f.0.0.1", "0x7f.1",
             "0177.0.0.1", "0177.1", "00000177.1", "0x00007f.1", "10.1", "10.1.2", "0",
             "169.254.43518", "0xa9.0xfe.0xa9.0xfe", "4294967295", "1.2.3.4.5", "256.1.1.1",
             "08.0.0.1", "1.256.1", "4294967296", "0x100000000", "example.com", "1.2.3.x",
             "", "..", "1..2"]  # fmt: skip


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_hosts_are_read_as_glibc_inet_aton_reads_them(spelling: str) -> None:
    """``socket.inet_aton`` is glibc's: the very function getaddrinfo tries first."""
    try:
        expected: IPv4Address | None = IPv4Address(socket.inet_aton(spelling))
    except OSError:
        expected = None
    assert parse_ipv4_host(spelling) == expected


def test_ipv6_hosts_and_their_carried_ipv4_addresses() -> None:
    assert parse_ip_host("fe80::1%eth0") == ip_address("fe80::1")
    mapped = classify(ip_address("::ffff:7f00:1"))
    assert mapped is not None and mapped.kind == "loopback"
    assert mapped.carried == IPv4Address("127.0.0.1")
    assert classify(ip_address("::1")).kind == "loopback"  # not "unspecified" via ::/96
    assert classify(ip_address("::")).kind == "unspecified"
    assert classify(ip_address("::8.8.8.8")).kind == "reserved"  # IPv4-compatible: no route
    assert classify(ip_address("2606:4700::1111")) is None


# -- the registration API names the field ---------------------------------------------------------


@pytest.fixture
def closed_settings(monkeypatch: pytest.MonkeyPatch):
    """The production default, whatever the session exported for the integration tests."""
    monkeypatch.setenv("OUTBOUND_ALLOWED_NETWORKS", "")
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


def test_check_url_refuses_inside_urls_as_a_url_validation_error(
    closed_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def getaddrinfo(host, port, *args, **kwargs):
        if host == "db.internal.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.9", port))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    cases = {
        "http://169.254.169.254/latest/meta-data/": "a cloud-metadata address",
        "http://0x7f000001:5432/": "127.0.0.1, a loopback address",
        "http://[::1]:6379/": "a loopback address",
        "http://localhost/": "resolves to 127.0.0.1, a loopback address",
        "https://db.internal.example/hook": "resolves to 10.0.0.9, a private address",
        "https://gone.example/hook": "gone.example does not resolve",
    }
    for url, reason in cases.items():
        with pytest.raises(ValidationError) as error:
            check_url(url)
        assert error.value.field == "url" and reason in error.value.reason, error.value.reason
    assert check_url(" http://93.184.215.14/hook ") == "http://93.184.215.14/hook"
