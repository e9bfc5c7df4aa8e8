"""Sending a status callback: one HTTP POST to a receiver the shop's source registered.

:class:`CallbackSender` is the port :func:`services.callbacks.deliver` uses; :class:`HttpSender`
is the real one (requests, short timeouts, no redirects, no environment proxy, and never to an
inside address: :func:`adapters.outbound.guarded_session`) and tests pass their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import requests

from adapters.outbound import DestinationRefused, OutboundPolicy, guarded_session


@dataclass(frozen=True, slots=True)
class PostResult:
    """``ok`` for any 2xx; ``error`` a short reason otherwise (never the URL's query or body)."""

    ok: bool
    status_code: int | None = None
    error: str | None = None


class CallbackSender(Protocol):
    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostResult:
        """POST ``body``; never raises for the receiver's faults (they are the result)."""
        ...


class HttpSender:
    """POSTs through one :func:`~adapters.outbound.guarded_session` (keep-alive connections
    reused between deliveries): ``timeout`` is (connect, read) seconds, short, so a dead
    receiver costs a few seconds of one worker thread; ``policy`` says which inside addresses
    may be reached (``OUTBOUND_ALLOWED_NETWORKS``). The URL was checked at registration, but
    its name may resolve elsewhere now (DNS rebinding): the address actually connected to is
    checked again, before anything is sent."""

    def __init__(self, timeout: tuple[float, float], policy: OutboundPolicy) -> None:
        self.timeout = timeout
        self.session = guarded_session(policy)

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostResult:
        """The error text is the exception class and a short reason, never the URL's query or
        the body (they may hold tokens or personal data). Redirects are not followed: a
        receiver that moved must be re-registered, so a signed event never reaches an
        unregistered host. A connection to an inside address is closed before the request is
        sent (``DestinationRefused: connected to 127.0.0.1, a loopback address ...``). The
        answer's body is never read (it could be unbounded)."""
        try:
            response = self.session.post(
                url, data=body, headers=dict(headers), timeout=self.timeout,
                allow_redirects=False, stream=True,
            )  # fmt: skip
            response.close()
        except DestinationRefused as exc:
            return PostResult(False, None, f"{type(exc).__name__}: {exc}")
        except requests.Timeout as exc:
            return PostResult(
                False, None, f"{type(exc).__name__}: no answer within {self.timeout}s"
            )
        except requests.RequestException as exc:
            return PostResult(False, None, f"{type(exc).__name__}: could not reach the receiver")
        ok = 200 <= response.status_code < 300
        return PostResult(ok, response.status_code, None if ok else f"HTTP {response.status_code}")
