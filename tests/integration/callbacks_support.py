"""The local HTTP receiver and the helpers shared by the status-callback integration tests
(test_callbacks_*.py; tests/e2e/test_callbacks_e2e.py uses the receiver too).

Deliveries run through the services (``services.callbacks.deliver`` with the real HTTP sender and
gate-less ports): no Celery worker is needed. Each delivery helper takes a ``clock``: the wall
clock by default, or a :class:`tests.fakes.ManualClock` a test moves past a backoff instead of
waiting for it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from adapters.callbacks import HttpSender
from adapters.outbound import configured_policy
from models import CallbackDelivery, CallbackEndpoint
from producers.intake import accept_message
from services import callbacks
from services.api_keys import SecretCipher
from services.ports import Clock, Ports, utcnow
from services.secrets_at_rest import cipher_from_setting
from services.unit_of_work import unit_of_work
from settings import get_settings
from tests.conftest import order_message
from tests.fakes import FakeGate

SECRET = "test-secret-0123456789abcdef"
FAST = callbacks.RetryPolicy(backoff_first_s=0.01, backoff_cap_s=0.05, pause_after=3)


def now() -> datetime:
    return datetime.now(UTC)


# -- the receiver ---------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records every POST; ``modes[path]`` is "ok", "fail" (HTTP 500) or "hang" (holds the
    request, unanswered, until the test sets ``release``: a hang the test ends, not the clock);
    ``fail_first[path]`` answers that many POSTs with HTTP 500 before the mode applies."""

    url: str
    modes: dict[str, str] = field(default_factory=dict)
    fail_first: dict[str, int] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    hanging: int = 0
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with state.lock:
                mode = state.modes.get(self.path, "ok")
                if state.fail_first.get(self.path, 0) > 0:
                    state.fail_first[self.path] -= 1
                    mode = "fail"
            if mode == "hang":
                with state.lock:
                    state.hanging += 1
                state.release.wait(120)
            with state.lock:
                state.received.append(
                    Received(self.path, dict(self.headers), body, time.monotonic())
                )
            try:
                self.send_response(500 if mode == "fail" else 204)
                self.end_headers()
            except OSError:
                pass  # the client timed out and went away

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- helpers ------------------------------------------------------------------------------------


def cipher() -> SecretCipher:
    """The cipher of the session's ``KEY_ENCRYPTION_KEY`` (generated in tests/conftest.py)."""
    found = cipher_from_setting(get_settings().key_encryption_key)
    assert found is not None, "KEY_ENCRYPTION_KEY is unset"
    return found


def register(source: str, url: str, secret: str = SECRET) -> int:
    with unit_of_work() as s:
        return callbacks.register_endpoint(s, source, url, SecretStr(secret), cipher=cipher()).id


def deliver_chunk(
    chunk: list[int],
    *,
    policy: callbacks.RetryPolicy = FAST,
    timeout: tuple[float, float] = (2.0, 5.0),  # the settings' defaults
    budget_s: float = 20.0,
    clock: Clock = utcnow,
) -> dict[str, int]:
    """One ``callbacks.deliver`` task body, in this thread: the real sender, on ``clock``
    (a callback POST is not a provider call: the gate is a pass-through), reaching inside
    only as the settings' ``OUTBOUND_ALLOWED_NETWORKS`` allows (loopback in the tests:
    ``tests/conftest.py``)."""
    sender = HttpSender(timeout=timeout, policy=configured_policy())
    ports = Ports(gate=FakeGate(), clock=clock)
    return callbacks.deliver(
        chunk,
        sender,
        ports,
        policy=policy,
        budget_s=budget_s,
        cipher=cipher_from_setting(get_settings().key_encryption_key),
    )


def run_deliveries(*, clock: Clock = utcnow, **kwargs: Any) -> int:
    """One beat tick at ``clock()``, then each chunk delivered in this thread on the same clock;
    returns deliveries claimed."""
    with unit_of_work() as s:
        claims = callbacks.claim_due(s, now=clock(), limit=100, lease_s=60)
    for chunk in callbacks.chunk_claims(claims, 20):
        deliver_chunk(chunk, clock=clock, **kwargs)
    return len(claims)


def deliveries(**where: Any) -> list[CallbackDelivery]:
    with unit_of_work() as s:
        stmt = select(CallbackDelivery).order_by(CallbackDelivery.id)
        for name, value in where.items():
            stmt = stmt.where(getattr(CallbackDelivery, name) == value)
        return list(s.scalars(stmt))


def endpoint(source: str) -> CallbackEndpoint:
    with unit_of_work() as s:
        return s.scalars(select(CallbackEndpoint).where(CallbackEndpoint.source == source)).one()


def verified(r: Received) -> bool:
    return callbacks.verify_signature(
        SecretStr(SECRET), r.headers["X-Orderflow-Signature"], r.body, now=time.time()
    )


def new_order(source: str = "web") -> str:
    return accept_message(order_message("A", source=source), channel="test").order_id


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.callbacks", *args],
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
        env={**os.environ, "COLUMNS": "250"},
    )
