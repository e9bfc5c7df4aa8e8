"""Hostile bytes on raw sockets against the running API (uvicorn on 127.0.0.1, real PostgreSQL
and Redis, the provider simulators' generated keys in its settings), at every route an
anonymous client reaches with a body: intake, the four webhooks, users, sessions, console login.

HTTP clients cannot send what matters here: a body shorter than its Content-Length, a chunked
body cut off, invalid chunk sizes, garbage request lines, huge headers, a partial header then
close (slowloris). Properties, read from the API process's own log (stdout and stderr):

* no "Traceback" and no "Exception in ASGI application", whatever was sent
  (:mod:`api.disconnects`);
* a client that disconnects mid-body is exactly one line, naming the route;
* the API still answers afterwards.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlsplit

import requests

from tests.conftest import order_message, wait_until
from tests.security.fuzz_api_support import Target

DISCONNECT = b"disconnected mid-request"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def _routes(t: Target) -> list[tuple[str, str, dict[str, str]]]:
    """(path, content type, extra headers) of every public route that reads a body."""
    return [
        ("/v1/orders", JSON, {"X-API-Key": t.api_key}),
        ("/webhooks/stripe", JSON, {"Stripe-Signature": "t=1,v1=00"}),
        ("/webhooks/wechatpay", JSON, {"Wechatpay-Serial": "x", "Wechatpay-Signature": "x"}),
        ("/webhooks/alipay", FORM, {}),
        ("/webhooks/kuaidi100", FORM, {}),
        ("/v1/users", JSON, {}),
        ("/v1/sessions", JSON, {}),
        ("/console/login", FORM, {}),
    ]


def _head(path: str, content_type: str, extra: dict[str, str], framing: str) -> bytes:
    headers = {"Host": "127.0.0.1", "Content-Type": content_type, **extra}
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), framing]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _send(port: int, data: bytes, *, read: bool = True) -> bytes:
    """Send ``data`` on a new connection; then close at once (``read=False``: the client
    vanishes) or half-close and read what the server answers until it closes."""
    answer = b""
    # The server may refuse and close before it has read everything: that is an answer too.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock, suppress(OSError):
        sock.sendall(data)
        if read:
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def _cut_offs(t: Target) -> Iterator[tuple[str, bytes]]:
    """(path, request) whose body stops short: Content-Length unmet, chunked without its end."""
    for path, ctype, extra in _routes(t):
        yield path, _head(path, ctype, extra, "Content-Length: 1000") + b'{"partial": '
        chunked = _head(path, ctype, extra, "Transfer-Encoding: chunked")
        yield path, chunked + b"c\r\n{partial: 1\r\n"  # no end: the chunk lacks a byte


def _hostile_bodies(t: Target) -> Iterator[bytes]:
    """Whole requests with hostile bodies: invalid chunk sizes, invalid UTF-8, deep nesting."""
    nested = b"[" * 50_000 + b'"\\u0000"' + b"]" * 50_000  # \u0000: api.limits parses it too
    objects = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    bodies = [nested, objects, b'{"email": "\xff\xfe\xfd", "password": "\xc3\x28"}', b"\xff" * 64]
    bodies.append(json.dumps(order_message("SKU-1", 1)).encode()[:-1] + b"\xed\xa0\x80}")
    for path, ctype, extra in _routes(t):
        for body in bodies:
            yield _head(path, ctype, extra, f"Content-Length: {len(body)}") + body
        chunked = _head(path, ctype, extra, "Transfer-Encoding: chunked")
        for bad in (
            b"zz\r\nabc\r\n0\r\n\r\n",
            b"-1\r\nabc\r\n",
            b"ffffffffffffffffff\r\nabc",
            b"3\r\nabcdef\r\n0\r\n\r\n",
            b"3;" + b"x" * 100_000 + b"\r\nabc\r\n",
        ):
            yield chunked + bad
        yield _head(path, ctype, extra, "Content-Length: 5\r\nContent-Length: 50") + b"12345"
        yield _head(path, ctype, extra, "Content-Length: -1") + b"abc"
        yield _head(path, ctype, extra, "Content-Length: 5\r\nTransfer-Encoding: chunked") + b"0"


def _garbage() -> list[bytes]:
    """Not HTTP, broken HTTP, huge headers, and headers that stop half-way (slowloris)."""
    return [
        b"GARBAGE\r\n\r\n", b"\x00\x01\x02\x03\xff\r\n\r\n", b"\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello
        b"GET /v1/orders/x\r\nHost: a\r\n\r\n", b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 1_000_000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + b"X-Many: 1\r\n" * 20_000 + b"\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Bad: \x00\x7f\xff\r\n\r\n",
        b"POST /v1/orders HTTP/1.1\r\nHost: a\r\nX-API-Key: ",  # slowloris: a partial header
        b"POST /v1/users HTT", b"POST", b"P",
        b"POST /v1/users%0d%0aInjected:%20line HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n"
        b"Content-Type: application/json\r\n\r\n{",  # a disconnect logged with a forged path
    ]  # fmt: skip


def _disconnects(log: bytes) -> list[bytes]:
    return [line for line in log.splitlines() if DISCONNECT in line]


def _logged_after(log_path: Path, before: int) -> None:
    """Wait until the log holds a disconnect line after the first ``before``, or a traceback."""

    def seen() -> bool:
        text = log_path.read_bytes()
        return b"Traceback" in text or len(_disconnects(text)) > before

    wait_until(seen, 60, 0.05, show=lambda: log_path.read_text(errors="replace")[-3000:])


def _answers(base_url: str) -> bool:
    """True once the API answers a plain request (its event loop got past what came before)."""
    return requests.get(f"{base_url}/healthz", timeout=30).status_code == 200


def test_hostile_raw_traffic_logs_no_traceback_and_a_disconnect_is_one_line(target, procs):
    port = urlsplit(target.base_url).port
    assert port is not None
    log_path = next(p for p in procs.procs if p.name == "api").log_path
    assert log_path is not None
    for path, request in _cut_offs(target):
        before = len(_disconnects(log_path.read_bytes()))
        _send(port, request, read=False)
        _logged_after(log_path, before)
        assert _answers(target.base_url)  # its handling has finished: no more lines can follow
        log = log_path.read_bytes()
        new = _disconnects(log)[before:]
        assert len(new) == 1 and f"POST {path!r}".encode() in new[0], (path, log[-3000:])
    for request in [*_hostile_bodies(target), *_garbage()]:
        _send(port, request)
    assert _answers(target.base_url)
    text = log_path.read_text(errors="replace")
    assert "Traceback" not in text and "Exception in ASGI" not in text, text[-6000:]
    assert "Injected: line" in text  # the forged path was logged ...
    assert not any(line.startswith("Injected") for line in text.splitlines())  # ... on its line
