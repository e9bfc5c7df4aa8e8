"""Outbound URLs cannot reach inside: the check for every URL an admin or an upstream may set.

Two checks, because a name can change its answer between them (DNS rebinding):

* :func:`check_destination` at registration: the URL's host, read as the resolver reads it
  (``0x7f000001``, ``127.1``, ``[::ffff:127.0.0.1]``, ``localhost``: no DNS asked for those),
  or else every address its name resolves to, must be outside (:mod:`domain.netaddr`); a name
  that does not resolve is refused too. Raises :class:`DestinationRefused` with the reason.
* :func:`guarded_session` at delivery: a ``requests.Session`` whose connections check the
  address the socket actually connected to (``getpeername()``) right after the TCP connect,
  before a byte (or a TLS hello) is sent, and close it when it is inside. It uses no proxy from
  the environment (a proxy would hide the real peer) and follows no redirect (a redirect is an
  answer: following it would send the request to a URL nobody registered).

:class:`OutboundPolicy` carries the operator's exceptions, ``OUTBOUND_ALLOWED_NETWORKS`` (empty:
nothing inside is reachable); :func:`configured_policy` reads it from the settings.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from domain.netaddr import (
    LOCALHOST_ADDRESSES,
    Inside,
    IPAddress,
    IPNetwork,
    is_localhost_name,
    judge,
    parse_ip_host,
    parse_networks,
)
from settings import get_settings

#: ``(host, port) -> the addresses it resolves to``, as text (an IPv6 one may carry a zone).
Resolver = Callable[[str, int], Sequence[str]]


class DestinationRefused(ValueError):
    """An outbound URL or connection that would reach inside; the message is the reason (it
    names the address and its class, never the URL's path or query)."""


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """What may be reached although inside: the allow-listed networks (none by default)."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_setting(cls, text: str | None) -> OutboundPolicy:
        """From ``OUTBOUND_ALLOWED_NETWORKS`` (comma-separated CIDRs); ValueError if malformed."""
        return cls(parse_networks(text or ""))

    def inside(self, address: IPAddress) -> Inside | None:
        """Why ``address`` may not be reached, or None when it may."""
        return judge(address, self.allowed)


def configured_policy() -> OutboundPolicy:
    """The policy of this process's settings (re-read each call: tests change the settings)."""
    return OutboundPolicy.from_setting(get_settings().outbound_allowed_networks)


def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``getaddrinfo`` gives for ``host`` (what a connection would try)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def check_destination(
    url: str, policy: OutboundPolicy | None = None, resolve: Resolver = system_resolve
) -> None:
    """Refuse ``url`` (:class:`DestinationRefused`) unless every address its host stands for is
    outside or allow-listed. ``policy`` defaults to :func:`configured_policy`.

    A literal address (any spelling :func:`domain.netaddr.parse_ip_host` reads) and a localhost
    name are judged without DNS; any other name is resolved and refused when ANY of its
    addresses is inside, or when it does not resolve. This is the registration check only:
    the answer may change later, so deliveries go through :func:`guarded_session`."""
    if policy is None:
        policy = configured_policy()
    try:
        parts = urlsplit(url)  # checks a [bracketed] host is an IPv6 address
    except ValueError as exc:
        raise DestinationRefused(f"is not a valid URL ({exc})") from None
    host = _host_of(parts)
    try:
        literal = parse_ip_host(host)
    except ValueError:
        raise DestinationRefused(f"host {host} is not a valid IPv6 address") from None
    if literal is not None:
        if (found := policy.inside(literal)) is not None:
            plain = str(literal) == host and found.carried is None
            said = found.label() if plain else found.describe(literal)
            raise DestinationRefused(f"host {host} is {said}")
        return
    for address in _addresses_of(host, _port_of(parts), resolve):
        if (found := policy.inside(address)) is not None:
            raise DestinationRefused(f"host {host} resolves to {found.describe(address)}")


def _host_of(parts: SplitResult) -> str:
    """The host as a resolver sees it: lower case, no brackets, IDNA-encoded when not ASCII
    (fullwidth digits are 127.0.0.1 to the resolver and to requests, so they are to us)."""
    host = parts.hostname
    if not host:
        raise DestinationRefused("has no host")
    if any(c.isspace() or not c.isprintable() for c in host):
        # glibc's inet_aton stops at a space: "127.0.0.1 x" would be 127.0.0.1 to it.
        raise DestinationRefused("host contains a space or a control character")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise DestinationRefused(f"host {host} is not a valid host name") from None
    return host


def _port_of(parts: SplitResult) -> int:
    try:
        port = parts.port
    except ValueError:
        raise DestinationRefused("has an invalid port") from None
    return port or (443 if parts.scheme == "https" else 80)


def _addresses_of(host: str, port: int, resolve: Resolver) -> list[IPAddress]:
    if is_localhost_name(host):
        return list(LOCALHOST_ADDRESSES)
    try:
        found = resolve(host, port)
        addresses = [parse_ip_host(a) for a in found]
    except (OSError, UnicodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise DestinationRefused(f"host {host} does not resolve ({reason})") from None
    resolved = [a for a in addresses if a is not None]
    if not resolved or len(resolved) != len(addresses):
        raise DestinationRefused(f"host {host} does not resolve to an IP address")
    return resolved


# -- delivery: the connected peer is checked ------------------------------------------------------


def check_peer(sock: socket.socket, policy: OutboundPolicy) -> socket.socket:
    """Return ``sock`` if the address it is connected to may be reached; else close it and
    raise :class:`DestinationRefused` (nothing has been sent on it yet)."""
    peer = parse_ip_host(str(sock.getpeername()[0]))
    if peer is None:  # an inet socket always has an IP peer; anything else is not ours to judge
        sock.close()
        raise DestinationRefused("connected to something that is no IP address")
    if (found := policy.inside(peer)) is not None:
        sock.close()
        raise DestinationRefused(f"connected to {found.describe(peer)}; closed before sending")
    return sock


def _guarded_pools(policy: OutboundPolicy) -> dict[str, type[HTTPConnectionPool]]:
    """urllib3 pool classes whose connections run :func:`check_peer` right after connecting
    (``connect()`` wraps TLS, or sends, only after ``_new_conn()`` returns)."""

    class GuardedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return check_peer(super()._new_conn(), policy)

    class GuardedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return check_peer(super()._new_conn(), policy)

    class GuardedHTTPConnectionPool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    return {"http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}


class GuardedAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose pools check every new connection's peer against ``policy``."""

    def __init__(self, policy: OutboundPolicy, pool_maxsize: int = 32) -> None:
        self.policy = policy  # before super().__init__, which builds the pool manager
        super().__init__(pool_connections=4, pool_maxsize=pool_maxsize)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _guarded_pools(self.policy)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # Through a proxy the peer is the proxy, not the destination: the check would be void.
        raise DestinationRefused("a proxy would hide the address connected to")


class _NoRedirectSession(requests.Session):
    def get_redirect_target(self, resp: requests.Response) -> str | None:
        return None  # a redirect is the answer; never a second request


def guarded_session(policy: OutboundPolicy, pool_maxsize: int = 32) -> requests.Session:
    """A session for URLs an admin or an upstream chose: every connection's peer is checked
    (:func:`check_peer`), the environment's proxies are ignored (``trust_env = False``) and
    redirects are never followed. Keep-alive connections are pooled (``pool_maxsize`` per
    host, for a threads pool); a connection is checked once, when it is made."""
    session = _NoRedirectSession()
    session.trust_env = False
    adapter = GuardedAdapter(policy, pool_maxsize=pool_maxsize)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
