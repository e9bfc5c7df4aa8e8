"""Shared plumbing for the provider simulators: an HTTP server in a thread, fault injection,
a notification sender with retries, and a control plane under ``/_sim/``.

A simulator is a test double for a provider, speaking its real wire protocol. This module knows
nothing about any provider (and imports nothing from ``adapters/``, ``services/`` or ``domain/``);
each simulator module registers routes on a :class:`SimulatorServer`.

Control plane (JSON over HTTP, so a simulator running in another process is driven the same way):

* ``GET  /_sim/ledger``  — the simulator's ledger (charges, refunds, …) as JSON
* ``POST /_sim/faults``  — set fault injection, body is a partial :class:`Faults` as JSON
* ``POST /_sim/reset``   — clear faults (and, per simulator, state)
* further ``/_sim/…`` routes a simulator adds (e.g. "pay this trade now")

Faults apply to provider routes only, never to the control plane.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests


@dataclass
class Request:
    method: str
    path: str  # without the query string
    raw_path: str  # path plus query string, exactly as received
    query: dict[str, str]
    headers: dict[str, str]  # keys lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        """Form body merged over query-string parameters (Alipay sends both styles)."""
        merged = dict(self.query)
        merged.update({k: v[-1] for k, v in parse_qs(self.body.decode("utf-8"), True).items()})
        return merged


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(
        cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> Response:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        hdrs = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        return cls(status, body, hdrs)

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode("utf-8"), {"Content-Type": "text/plain; charset=utf-8"})


Handler = Callable[[Request], Response]


@dataclass
class Faults:
    """Fault injection for provider routes. Rates are shares of calls in [0, 1]."""

    error_rate: float = 0.0  # answer with a provider-style 5xx / "system busy"
    timeout_rate: float = 0.0  # hold the request for ``hang_seconds`` before answering
    reset_rate: float = 0.0  # drop the TCP connection with a reset, no answer
    hang_seconds: float = 5.0
    latency_ms: int = 0  # added to every provider call
    business_error: str | None = None  # provider-specific code returned by every call
    seed: int | None = None

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        for key, value in changes.items():
            setattr(self, key, value)


class _Reset(Exception):
    """Raised inside a handler to drop the connection with a TCP reset."""


class _QuietHTTPServer(ThreadingHTTPServer):
    """A client that resets or drops its connection (our own fault proxy does, on purpose) is
    not a simulator error: socketserver would print its traceback into the test output."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class SimulatorServer:
    """A threaded HTTP server on 127.0.0.1 that dispatches to registered routes.

    ``error_response`` builds the provider-specific answer used when an injected 5xx fires.
    """

    def __init__(
        self,
        name: str,
        *,
        port: int = 0,
        error_response: Callable[[Request], Response] | None = None,
    ) -> None:
        self.name = name
        self.faults = Faults()
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._routes: list[tuple[str, str, bool, Handler]] = []
        self._error_response = error_response or (
            lambda _req: Response.json({"error": "busy"}, 503)
        )
        self.ledger_provider: Callable[[], Any] = lambda: {}
        self.reset_hooks: list[Callable[[], None]] = []
        self.request_log: list[tuple[str, str, int]] = []  # (method, path, status)
        # 127.0.0.1 unless SIMULATOR_BIND says otherwise (0.0.0.0 inside a dev container only).
        bind = os.environ.get("SIMULATOR_BIND", "127.0.0.1")
        self._httpd = _QuietHTTPServer((bind, port), self._make_handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.route("GET", "/_sim/ledger", lambda _r: Response.json(self.ledger_provider()))
        self.route("POST", "/_sim/faults", self._set_faults)
        self.route("GET", "/_sim/faults", lambda _r: Response.json(asdict(self.faults)))
        self.route("POST", "/_sim/reset", self._reset)

    # -- routing -----------------------------------------------------------------------------
    def route(self, method: str, path: str, handler: Handler, *, prefix: bool = False) -> None:
        """Register ``handler`` for ``method path`` (or every path starting with it)."""
        self._routes.append((method.upper(), path, prefix, handler))

    def _find(self, method: str, path: str) -> Handler | None:
        for m, p, prefix, handler in self._routes:
            if m == method and (path == p or (prefix and path.startswith(p))):
                return handler
        return None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"  # how clients on this host reach it

    def start(self) -> SimulatorServer:
        # A short poll interval makes stop() return quickly (the default is 0.5 s).
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sim-{self.name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control plane -----------------------------------------------------------------------
    def set_faults(self, **changes: Any) -> None:
        with self._lock:
            self.faults.update(changes)
            if "seed" in changes:
                self._rng.seed(changes["seed"])

    def _set_faults(self, req: Request) -> Response:
        try:
            self.set_faults(**(req.json() or {}))
        except (ValueError, TypeError) as exc:
            return Response.json({"error": str(exc)}, 400)
        return Response.json(asdict(self.faults))

    def reset(self) -> None:
        with self._lock:
            self.faults = Faults()
        for hook in self.reset_hooks:
            hook()

    def _reset(self, _req: Request) -> Response:
        self.reset()
        return Response.json({"ok": True})

    def _draw_fault(self) -> str | None:
        with self._lock:
            f = self.faults
            roll = self._rng.random()
            if roll < f.reset_rate:
                return "reset"
            if roll < f.reset_rate + f.timeout_rate:
                return "timeout"
            if roll < f.reset_rate + f.timeout_rate + f.error_rate:
                return "error"
            return None

    # -- dispatch ----------------------------------------------------------------------------
    def dispatch(self, req: Request) -> Response:
        handler = self._find(req.method, req.path)
        if handler is None:
            return Response.json({"error": f"no route {req.method} {req.path}"}, 404)
        if not req.path.startswith("/_sim/"):
            if self.faults.latency_ms:
                time.sleep(self.faults.latency_ms / 1000)
            fault = self._draw_fault()
            if fault == "reset":
                raise _Reset
            if fault == "timeout":
                time.sleep(self.faults.hang_seconds)
            elif fault == "error":
                return self._error_response(req)
        return handler(req)

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle on, the body waits for the
            # client's delayed ACK of the headers (about 40 ms on every keep-alive answer).
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                split = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(split.query, True).items()}
                req = Request(
                    method=self.command,
                    path=split.path,
                    raw_path=self.path,
                    query=query,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                try:
                    resp = server.dispatch(req)
                except _Reset:
                    # SO_LINGER with zero timeout makes close() send RST instead of FIN.
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.close_connection = True
                    self.connection.close()
                    server.request_log.append((req.method, req.path, 0))
                    return
                server.request_log.append((req.method, req.path, resp.status))
                try:
                    self.send_response(resp.status)
                    for key, value in resp.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(resp.body)))
                    self.end_headers()
                    if resp.body:
                        self.wfile.write(resp.body)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up (its read timeout fired), as real clients do.
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        return _H


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    url: str = field(compare=False)
    headers: dict[str, str] = field(compare=False)
    body: bytes = field(compare=False)
    attempt: int = field(compare=False, default=1)


class Notifier:
    """Delivers notifications to a merchant URL on a background thread, like a provider does.

    ``is_ack(response)`` decides whether the merchant acknowledged; unacknowledged deliveries are
    retried after ``retry_delays`` (seconds, compressed from the provider's real schedule).
    Options per send: ``delay`` (deliver late), ``copies`` (duplicates, delivered concurrently).
    ``deliveries`` records every attempt as (url, status or None, attempt).
    """

    def __init__(
        self,
        is_ack: Callable[[requests.Response], bool],
        retry_delays: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0),
        timeout: float = 5.0,
    ) -> None:
        self._is_ack = is_ack
        self._retry_delays = retry_delays
        self._timeout = timeout
        self._queue: list[_Delivery] = []
        self._cv = threading.Condition()
        self._seq = 0
        self._stopped = False
        self.deliveries: list[tuple[str, int | None, int]] = []
        self._thread = threading.Thread(target=self._run, name="sim-notifier", daemon=True)
        self._thread.start()

    def send(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        delay: float = 0.0,
        copies: int = 1,
    ) -> None:
        with self._cv:
            for _ in range(copies):
                self._seq += 1
                heapq.heappush(
                    self._queue, _Delivery(time.monotonic() + delay, self._seq, url, headers, body)
                )
            self._cv.notify_all()

    def pending(self) -> int:
        with self._cv:
            return len(self._queue)

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and (
                    not self._queue or self._queue[0].due > time.monotonic()
                ):
                    wait = self._queue[0].due - time.monotonic() if self._queue else None
                    self._cv.wait(timeout=wait)
                if self._stopped:
                    return
                due: list[_Delivery] = []
                while self._queue and self._queue[0].due <= time.monotonic():
                    due.append(heapq.heappop(self._queue))
            # Deliver everything due at once, concurrently, as a provider's fleet would.
            threads = [threading.Thread(target=self._deliver, args=(d,), daemon=True) for d in due]
            for t in threads:
                t.start()

    def _deliver(self, d: _Delivery) -> None:
        status: int | None = None
        ok = False
        try:
            resp = requests.post(d.url, data=d.body, headers=d.headers, timeout=self._timeout)
            status = resp.status_code
            ok = self._is_ack(resp)
        except requests.RequestException:
            ok = False
        self.deliveries.append((d.url, status, d.attempt))
        if ok or d.attempt > len(self._retry_delays):
            return
        with self._cv:
            self._seq += 1
            heapq.heappush(
                self._queue,
                _Delivery(
                    time.monotonic() + self._retry_delays[d.attempt - 1],
                    self._seq,
                    d.url,
                    d.headers,
                    d.body,
                    d.attempt + 1,
                ),
            )
            self._cv.notify_all()


def serve_forever(server: SimulatorServer) -> None:
    """Run a simulator in the foreground until interrupted (used by ``python -m simulators.X``)."""
    server.start()
    print(f"{server.name} simulator listening on {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
