"""Helpers for the conformance suite: a recording proxy that captures the exact requests our
adapters send, and a sink that captures the notifications our simulators send.

The suite puts each provider's own published client library (stripe-python, wechatpayv3,
python-alipay-sdk) on the other side of the wire from our code, so that a misreading shared by
our simulator and our adapter (both written by us from the same notes) cannot pass unseen.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import requests

from simulators.harness import Request, Response, SimulatorServer
from tests.conftest import wait_until

#: Response headers the proxy hands back (the rest are hop-by-hop or recomputed by the harness).
_DROPPED = {"content-length", "connection", "transfer-encoding", "keep-alive", "date", "server"}


class RecordingProxy:
    """An HTTP server that records every request verbatim and forwards it to ``target``.

    Point an adapter's base URL at :attr:`url`: it gets the real simulator's answers (so it
    behaves exactly as in production), and :attr:`requests` holds what it put on the wire.
    """

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.requests: list[Request] = []
        self._session = requests.Session()
        self._session.trust_env = False  # never route 127.0.0.1 through an environment proxy
        self._lock = threading.Lock()
        self.server = SimulatorServer("recorder")
        for method in ("GET", "POST", "PUT", "DELETE"):
            self.server.route(method, "/", self._forward, prefix=True)

    @property
    def url(self) -> str:
        return self.server.url

    def _forward(self, req: Request) -> Response:
        with self._lock:
            self.requests.append(req)
        headers = {k: v for k, v in req.headers.items() if k not in ("host", "content-length")}
        answer = self._session.request(
            req.method, self.target + req.raw_path, headers=headers, data=req.body, timeout=5
        )
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _DROPPED}
        kept.pop("Content-Encoding", None)  # requests already decoded the body
        return Response(answer.status_code, answer.content, kept)

    def only(self, method: str, path_prefix: str) -> Request:
        """The single recorded request to ``method path_prefix…`` (fails if not exactly one)."""
        with self._lock:
            found = [
                r for r in self.requests if r.method == method and r.path.startswith(path_prefix)
            ]
        assert len(found) == 1, f"expected one {method} {path_prefix}, got {len(found)}"
        return found[0]


@contextmanager
def recording(target: str) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(target)
    proxy.server.start()
    try:
        yield proxy
    finally:
        proxy.server.stop()


class Sink:
    """A merchant notify endpoint that stores each delivery raw and answers ``reply``."""

    def __init__(self, reply: Response) -> None:
        self.reply = reply
        self.received: list[Request] = []
        self._lock = threading.Lock()
        self.server = SimulatorServer("merchant-sink")
        self.server.route("POST", "/", self._handle, prefix=True)

    @property
    def url(self) -> str:
        return self.server.url + "/notify"

    def _handle(self, req: Request) -> Response:
        with self._lock:
            self.received.append(req)
        return self.reply

    def first(self, timeout_s: float = 20.0) -> Request:
        """The first delivery, waiting for it (a condition, not a sleep)."""
        return self.wait_for(1, timeout_s)[0]

    def wait_for(self, count: int, timeout_s: float = 20.0) -> list[Request]:
        """The first ``count`` deliveries, waiting for them (a condition, not a sleep)."""

        def arrived() -> list[Request] | None:
            with self._lock:
                return list(self.received[:count]) if len(self.received) >= count else None

        def shown() -> str:
            return f"{len(self.received)} of {count} deliveries"

        got: list[Request] = wait_until(arrived, timeout_s, 0.02, show=shown)
        return got


@contextmanager
def sink(reply: Response) -> Iterator[Sink]:
    s = Sink(reply)
    s.server.start()
    try:
        yield s
    finally:
        s.server.stop()
