"""Outbound URLs cannot reach inside (issue 18, item 1), over real HTTP on 127.0.0.1.

* DNS rebinding: the registration check sees a public address, the delivery's connection lands
  on a real local listener; the guarded sender closes it after the connect, before a byte.
* With loopback allow-listed, a 302 from the receiver to another local URL is not followed.
* The environment's proxy is not used.
* The admin API and the CLI refuse an inside URL naming the field ``url``; nothing is stored.

The session allow-lists loopback for the other tests' receivers (tests/conftest.py); the
``closed`` fixture puts the production default back.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from adapters.callbacks import HttpSender
from adapters.outbound import OutboundPolicy, configured_policy, guarded_session
from models import CallbackEndpoint
from services.unit_of_work import unit_of_work
from settings import get_settings
from tests.conftest import wait_until
from tests.integration.callbacks_support import (
    cli,
    deliveries,
    new_order,
    register,
    run_deliveries,
)

LOOPBACK = OutboundPolicy.from_setting("127.0.0.0/8,::1/128")


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``OUTBOUND_ALLOWED_NETWORKS`` empty, as in production, for this test."""
    monkeypatch.setenv("OUTBOUND_ALLOWED_NETWORKS", "")
    get_settings.cache_clear()
    assert configured_policy() == OutboundPolicy()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


@dataclass
class Tap:
    """A TCP listener on 127.0.0.1 that records, per finished connection, every byte the
    client sent (answering a request with 204, so a client that did send gets an answer)."""

    port: int = 0
    finished: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def serve(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed: the test is over
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        got = b""
        with conn:
            conn.settimeout(30)
            try:
                while chunk := conn.recv(65536):
                    got += chunk
                    if b"\r\n\r\n" in got:
                        conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                        break
            except OSError:
                pass
        with self.lock:
            self.finished.append(got)


@pytest.fixture
def tap() -> Iterator[Tap]:
    state = Tap()
    server = socket.create_server(("127.0.0.1", 0))
    state.port = server.getsockname()[1]
    thread = threading.Thread(target=state.serve, args=(server,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.close()
        thread.join(5)


def rebinding_dns(monkeypatch: pytest.MonkeyPatch, name: str, first: str, then: str) -> list[str]:
    """``name`` resolves to ``first`` once, then to ``then`` (a rebinding attacker's DNS,
    short TTL); every other name as usual. Returns the answers given, in order."""
    real = socket.getaddrinfo
    given: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real(host, port, *args, **kwargs)
        given.append(first if not given else then)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (given[-1], int(port or 80)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return given


def test_dns_rebinding_is_refused_after_connect_and_the_listener_gets_nothing(
    closed, catalog, tap, monkeypatch
):
    answers = rebinding_dns(monkeypatch, "rebind.test", "93.184.215.14", "127.0.0.1")
    register("web", f"http://rebind.test:{tap.port}/web")  # checked: a public address
    assert answers == ["93.184.215.14"]
    catalog({"A": 1})
    new_order()

    assert run_deliveries() == 1  # the real sender, the closed policy of the settings
    assert answers == ["93.184.215.14", "127.0.0.1"]  # the connection went to 127.0.0.1 ...
    wait_until(lambda: tap.finished, 30)  # ... which saw it open and close
    assert tap.finished == [b""]  # not a byte: no request line, no header, no body
    (row,) = deliveries()
    assert row.status == "PENDING" and row.attempts == 1  # a failed attempt, retried later
    assert row.last_error == (
        "DestinationRefused: connected to 127.0.0.1, a loopback address (127.0.0.0/8); "
        "closed before sending"
    )


def test_https_is_refused_before_the_tls_hello(tap):
    sender = HttpSender(timeout=(2.0, 5.0), policy=OutboundPolicy())
    result = sender.post(f"https://127.0.0.1:{tap.port}/web", b"{}", {})
    assert not result.ok and result.status_code is None
    assert result.error and "a loopback address" in result.error
    wait_until(lambda: tap.finished, 30)
    assert tap.finished == [b""]


@dataclass
class Redirector:
    url: str
    hits: list[str] = field(default_factory=list)


@pytest.fixture
def redirector() -> Iterator[Redirector]:
    """``/moved`` answers 302 to ``/inside`` on the same server; every path is recorded."""
    state = Redirector(url="")

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            state.hits.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            moved = self.path == "/moved"
            self.send_response(302 if moved else 204)
            if moved:
                self.send_header("Location", f"{state.url}/inside")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_redirect_to_a_local_url_is_not_followed(redirector):
    sender = HttpSender(timeout=(2.0, 5.0), policy=LOOPBACK)
    result = sender.post(f"{redirector.url}/moved", b"{}", {"Content-Type": "application/json"})
    assert (result.ok, result.status_code, result.error) == (False, 302, "HTTP 302")
    # The guarded session itself never follows one, even when a caller forgets to say so.
    answer = guarded_session(LOOPBACK).post(f"{redirector.url}/moved", data=b"{}", timeout=5)
    assert answer.status_code == 302 and answer.history == []
    assert redirector.hits == ["/moved", "/moved"]  # /inside never asked for


def test_the_environment_proxy_is_not_used(redirector, monkeypatch):
    dead = socket.create_server(("127.0.0.1", 0))  # a "proxy" that never answers
    proxy = f"http://127.0.0.1:{dead.getsockname()[1]}"
    try:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        sender = HttpSender(timeout=(2.0, 2.0), policy=LOOPBACK)
        result = sender.post(f"{redirector.url}/direct", b"{}", {})
    finally:
        dead.close()
    assert result.ok and result.status_code == 204
    assert redirector.hits == ["/direct"]  # straight to the receiver (the peer checked)


def endpoint_count() -> int:
    with unit_of_work() as s:
        return int(s.scalar(select(func.count()).select_from(CallbackEndpoint)) or 0)


def test_admin_api_refuses_inside_urls_naming_the_field_and_stores_nothing(closed, db):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api.callbacks import router
    from api.catalog import admin_api_key_setting
    from api.errors import install_error_handlers

    app = FastAPI()
    app.include_router(router)
    install_error_handlers(app)
    app.dependency_overrides[admin_api_key_setting] = lambda: SecretStr("admin-key")
    key = {"X-Admin-Key": "admin-key"}
    cases = {
        "http://169.254.169.254/latest/meta-data/": "a cloud-metadata address",
        "http://127.0.0.1:5432": "a loopback address",
        "http://0x7f000001/": "127.0.0.1, a loopback address",
        "http://[::1]:6379": "a loopback address",
        "http://localhost/hook": "a loopback address",
    }
    with TestClient(app) as c:
        for url, reason in cases.items():
            r = c.put("/v1/admin/callbacks/web", json={"url": url}, headers=key)
            assert r.status_code == 422, (url, r.text)
            (detail,) = r.json()["details"]
            assert detail["field"] == "url" and reason in detail["reason"], detail
            assert "secret" not in r.json()
    assert endpoint_count() == 0


def test_cli_refuses_an_inside_url_in_one_line(closed, db):
    run = cli("register", "web", "http://169.254.169.254/latest/meta-data/")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "url:" in run.stderr and "a cloud-metadata address" in run.stderr
    assert endpoint_count() == 0
