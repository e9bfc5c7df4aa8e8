"""Status callbacks on real PostgreSQL, delivered over real HTTP to a local receiver.

Deliveries run through the services (``services.callbacks.deliver`` with the real HTTP sender and
gate-less ports): no Celery worker is needed here (tests/e2e/
test_callbacks_e2e.py runs the real beat and callbacks worker). The lifecycle test drives the
order through the real services (intake, reservation, payments, shipping, ``move_order``): every
event it sees was written by the services' own outbox inserts.
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
from adapters.payments.base import PaymentCreated
from models import CallbackDelivery, CallbackEndpoint, Order, Shipment, TrackingEvent
from producers.intake import accept_message
from services import callbacks, payments, shipping
from services.order_state import lock_order, move_order
from services.ports import Ports, utcnow
from services.reservation import reserve_order
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.fakes import FakeGate

SECRET = "test-secret-0123456789abcdef"
FAST = callbacks.RetryPolicy(backoff_first_s=0.01, backoff_cap_s=0.05, pause_after=3)
PORTS = Ports(gate=FakeGate(), clock=utcnow)  # a callback POST is not a provider call


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


def register(source: str, url: str, secret: str = SECRET) -> int:
    with unit_of_work() as s:
        return callbacks.register_endpoint(s, source, url, SecretStr(secret)).id


def deliver_chunk(
    chunk: list[int],
    *,
    policy: callbacks.RetryPolicy = FAST,
    timeout: tuple[float, float] = (2.0, 5.0),  # the settings' defaults
    budget_s: float = 20.0,
) -> dict[str, int]:
    """One ``callbacks.deliver`` task body, in this thread: the real sender, the wall clock."""
    sender = HttpSender(timeout=timeout)
    return callbacks.deliver(chunk, sender, PORTS, policy=policy, budget_s=budget_s)


def run_deliveries(**kwargs: Any) -> int:
    """One beat tick, then each chunk delivered in this thread; returns deliveries claimed."""
    with unit_of_work() as s:
        claims = callbacks.claim_due(s, now=now(), limit=100, lease_s=60)
    for chunk in callbacks.chunk_claims(claims, 20):
        deliver_chunk(chunk, **kwargs)
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


# -- tests --------------------------------------------------------------------------------------


def test_every_status_change_reaches_the_receiver_signed(catalog, receiver):
    catalog({"A": 5})
    register("web", receiver.url + "/web")
    oid = new_order()
    other = new_order(source="no-endpoint")  # a source without an endpoint: nothing recorded

    def step(target: str, action: Any) -> None:
        with unit_of_work() as s:
            action(s)
        with unit_of_work() as s:
            assert s.get_one(Order, oid).status == target

    def move(target: str) -> Any:
        return lambda s: move_order(s, lock_order(s, oid), target)

    step("RESERVED", lambda s: reserve_order(s, oid, now=now(), payment_window_s=600))
    step("AWAITING_PAYMENT", lambda s: (
        payments.prepare_create(s, oid, now=now(), notify_base_url="http://x", redrive_s=30),
        payments.finish_create(s, oid, PaymentCreated("ref-1", {"qr_code": "https://qr/1"}),
                               now=now(), first_query_s=10),
    ))  # fmt: skip
    step("PAID", move("PAID"))
    step("SHIPPED", lambda s: shipping.register_waybill(
        s, oid, "yuantong", "YT100200300", now=now(), actor="test", first_poll_s=60))  # fmt: skip

    def in_transit(s: Any) -> None:
        sid = s.scalar(select(Shipment.id).where(Shipment.order_id == oid))
        s.add(TrackingEvent(shipment_id=sid, occurred_at=now(), status="IN_TRANSIT",
                            description="left Shanghai hub", location="Shanghai",
                            dedupe_key="e1"))  # fmt: skip
        move_order(s, lock_order(s, oid), "IN_TRANSIT")

    step("IN_TRANSIT", in_transit)
    for target in ("DELIVERED", "COMPLETED"):
        step(target, move(target))

    assert run_deliveries() == 8
    got = receiver.at("/web")
    statuses = [r.event["data"]["order"]["status"] for r in got]
    assert statuses == ["RECEIVED", "RESERVED", "AWAITING_PAYMENT", "PAID", "SHIPPED",
                        "IN_TRANSIT", "DELIVERED", "COMPLETED"]  # fmt: skip
    assert all(verified(r) for r in got)
    ids = [r.headers["X-Orderflow-Event-Id"] for r in got]
    assert len(set(ids)) == 8 and ids == [r.event["id"] for r in got]
    assert [r.event["sequence"] for r in got] == sorted(r.event["sequence"] for r in got)
    by_status = {r.event["data"]["order"]["status"]: r.event["data"] for r in got}
    assert by_status["RESERVED"]["order"]["previous_status"] == "RECEIVED"
    assert by_status["AWAITING_PAYMENT"]["payment"]["instructions"] == {"qr_code": "https://qr/1"}
    assert by_status["SHIPPED"]["tracking"]["waybill"] == "YT100200300"
    latest = by_status["IN_TRANSIT"]["tracking"]["latest"]
    assert latest["description"] == "left Shanghai hub"
    assert "payment" not in by_status["PAID"] and "tracking" not in by_status["PAID"]
    assert {d.status for d in deliveries()} == {"DELIVERED"}
    assert deliveries(order_id=other) == []
    # A forged body does not verify.
    forged = got[0].body.replace(b"RECEIVED", b"REJECTED")
    assert not callbacks.verify_signature(
        SecretStr(SECRET), got[0].headers["X-Orderflow-Signature"], forged, now=time.time()
    )


def test_failures_back_off_pause_and_resume(catalog, receiver):
    catalog({"A": 10})
    receiver.modes["/web"] = "fail"
    register("web", receiver.url + "/web")
    orders = [new_order() for _ in range(3)]
    tries = 0
    while endpoint("web").paused_at is None:
        tries += 1
        assert tries < 100, "the endpoint was never paused"
        run_deliveries()
        time.sleep(0.06)  # past the (tiny) backoff
    assert len(receiver.at("/web")) == 3  # one probe at a time: exactly the threshold
    ep = endpoint("web")
    assert ep.consecutive_failures == 3
    rows = deliveries()
    assert {d.status for d in rows} == {"PAUSED"}
    assert sum(d.attempts for d in rows) == 3
    assert all(d.last_status_code == 500 and d.last_error == "HTTP 500" for d in rows if d.attempts)
    assert run_deliveries() == 0  # paused: nothing is attempted
    new_order()  # a change while paused is held, not lost
    assert deliveries()[-1].status == "PAUSED"

    receiver.modes["/web"] = "ok"
    with unit_of_work() as s:
        assert callbacks.resume(s, "web", now=now()) == 4
    run_deliveries()
    rows = deliveries()
    assert {d.status for d in rows} == {"DELIVERED"}
    assert {d.order_id for d in rows} >= set(orders)
    ok_ids = {r.headers["X-Orderflow-Event-Id"] for r in receiver.at("/web")}
    assert {str(d.event_id) for d in rows} <= ok_ids
    assert endpoint("web").consecutive_failures == 0


def test_failed_after_max_attempts(catalog, receiver):
    catalog({"A": 1})
    receiver.modes["/web"] = "fail"
    register("web", receiver.url + "/web")
    new_order()
    policy = callbacks.RetryPolicy(backoff_first_s=0.01, backoff_cap_s=0.02, max_attempts=2)
    for _ in range(20):
        run_deliveries(policy=policy)
        if deliveries()[0].status == "FAILED":
            break
        time.sleep(0.05)
    (row,) = deliveries()
    assert (row.status, row.attempts, row.next_attempt_at) == ("FAILED", 2, None)
    # Every attempt is in the log, not only the last one; the CLI shows them.
    with unit_of_work() as s:
        (view,) = callbacks.list_deliveries(s)
    assert [(a.ok, a.status_code, a.error) for a in view.attempt_log] == [
        (False, 500, "HTTP 500"), (False, 500, "HTTP 500")
    ]  # fmt: skip
    assert all(a.duration_ms is not None for a in view.attempt_log)
    assert view.attempt_log[0].at < view.attempt_log[1].at
    receiver.modes["/web"] = "ok"
    with unit_of_work() as s:
        callbacks.resend(s, now=now(), event_id=str(row.event_id))
    for _ in range(20):  # due now: the next dispatcher tick sends it
        run_deliveries(policy=policy)
        if deliveries()[0].status != "PENDING":
            break
        time.sleep(0.05)
    shown = cli("deliveries", "--order", row.order_id)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("500 HTTP 500") == 2 and shown.stdout.count(" 204 ok ") == 1


def test_resend_uses_the_same_event_id(catalog, receiver):
    catalog({"A": 1})
    register("web", receiver.url + "/web")
    new_order()
    run_deliveries()
    (row,) = deliveries()
    with unit_of_work() as s:
        assert callbacks.resend(s, now=now(), event_id=str(row.event_id)) == 1
    assert deliveries()[0].status == "PENDING"
    run_deliveries()
    first, second = receiver.at("/web")
    assert first.headers["X-Orderflow-Event-Id"] == second.headers["X-Orderflow-Event-Id"]
    assert first.body == second.body and verified(second)
    assert deliveries()[0].status == "DELIVERED"


def _deliver_in_threads(
    claims: list[callbacks.Claim], timeouts: dict[int, tuple[float, float]]
) -> tuple[list[threading.Thread], list[int]]:
    """Each chunk in a thread of its own, as on the callbacks queue's threads pool, with the
    (connect, read) timeout of its endpoint; returns the threads and the endpoints finished."""
    done: list[int] = []

    def run(chunk: list[int], endpoint_id: int) -> None:
        deliver_chunk(chunk, timeout=timeouts[endpoint_id])
        done.append(endpoint_id)

    threads = []
    for chunk in callbacks.chunk_claims(claims, 20):
        eid = next(c.endpoint_id for c in claims if c.delivery_id == chunk[0])
        threads.append(threading.Thread(target=run, args=(chunk, eid)))
    for t in threads:
        t.start()
    return threads, done


def test_a_hanging_receiver_does_not_hold_up_other_endpoints(catalog, receiver):
    catalog({"A": 20})
    receiver.modes["/slow"] = "hang"
    slow_id, fast_id = (
        register("slow", receiver.url + "/slow"),
        register("fast", receiver.url + "/fast"),
    )
    for _ in range(3):
        new_order("slow")
    for _ in range(5):
        new_order("fast")
    with unit_of_work() as s:
        claims = callbacks.claim_due(s, now=now(), limit=100, lease_s=60)
    # The slow endpoint's client waits up to 60 s: far longer than the fast ones can take, so
    # it is still waiting when they land, however busy the machine.
    threads, done = _deliver_in_threads(claims, {slow_id: (1.0, 60.0), fast_id: (1.0, 60.0)})
    wait_until(lambda: len(receiver.at("/fast")) == 5, timeout_s=30, every_s=0.02)
    assert receiver.hanging == 1 and not receiver.at("/slow") and slow_id not in done
    receiver.release.set()  # now the slow receiver answers, and its chunk goes on
    for t in threads:
        t.join(30)
    assert sorted(done) == sorted([slow_id, fast_id])
    assert {d.status for d in deliveries()} == {"DELIVERED"}
    assert len(receiver.at("/slow")) == 3


def test_a_receiver_past_the_read_timeout_fails_one_attempt_and_hands_the_rest_back(
    catalog, receiver
):
    catalog({"A": 20})
    receiver.modes["/slow"] = "hang"  # never answers while the test runs
    slow_id = register("slow", receiver.url + "/slow")
    for _ in range(3):
        new_order("slow")
    with unit_of_work() as s:
        claims = callbacks.claim_due(s, now=now(), limit=100, lease_s=60)
    threads, done = _deliver_in_threads(claims, {slow_id: (1.0, 0.5)})
    for t in threads:
        t.join(30)
    # The chunk gave up at its read timeout, before the receiver ever answered, and handed the
    # rest of its chunk back untried (attempts below).
    assert done == [slow_id] and not receiver.at("/slow") and receiver.hanging == 1
    slow = deliveries()
    assert sorted(d.attempts for d in slow) == [0, 0, 1]
    assert {d.status for d in slow} == {"PENDING"}
    assert "Timeout" in (next(d for d in slow if d.attempts).last_error or "")


def test_recording_is_transactional(catalog, receiver):
    """A status change that rolls back announces nothing."""
    catalog({"A": 1})
    register("web", receiver.url + "/web")
    oid = new_order()
    with pytest.raises(RuntimeError), unit_of_work() as s:
        order = lock_order(s, oid)
        callbacks.record_status_change(s, order, "RECEIVED", "CANCELLED")
        raise RuntimeError("rolled back")
    assert len(deliveries(order_id=oid)) == 1  # only RECEIVED


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "url: must start with http"),
        ("https://user:pw@example.com/x", "url: must not contain credentials"),
        ("https:///nohost", "url: has no host"),
    ],
)
def test_register_validates_the_url(db, url, message):
    from domain.errors import ValidationError

    with pytest.raises(ValidationError, match=message), unit_of_work() as s:
        callbacks.register_endpoint(s, "web", url, SecretStr(SECRET))


# -- CLI ----------------------------------------------------------------------------------------


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.callbacks", *args],
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
        env={**os.environ, "COLUMNS": "250"},
    )


def test_cli_register_list_resend_resume(catalog, receiver):
    run = cli("register", "web", receiver.url + "/web")
    assert run.returncode == 0, run.stderr
    secret = run.stdout.split("secret (shown once): ", 1)[1].split()[0]
    assert len(secret) >= 32
    listed = cli("list")
    assert listed.returncode == 0 and "/web" in listed.stdout
    assert secret not in listed.stdout  # never shown again

    bad = cli("register", "web", "ftp://example.com")
    assert bad.returncode == 1 and "url:" in bad.stderr and "Traceback" not in bad.stderr
    short = cli("register", "web", receiver.url, "--secret-stdin", stdin="short\n")
    assert short.returncode == 1 and "secret:" in short.stderr

    catalog({"A": 1})
    oid = new_order()
    run_deliveries()
    (row,) = deliveries()
    assert row.status == "DELIVERED"
    shown = cli("deliveries", "--order", oid)
    assert shown.returncode == 0 and str(row.event_id) in shown.stdout
    assert "DELIVERED" in shown.stdout
    resent = cli("resend", str(row.event_id))
    assert resent.returncode == 0 and "queued 1" in resent.stdout
    assert deliveries()[0].status == "PENDING"
    assert cli("resend", "--order", oid).returncode == 0

    unknown = cli("resend", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 1 and "no callback deliveries" in unknown.stderr
    assert cli("resend", "not-a-uuid").returncode == 1
    assert cli("resend").returncode == 1
    assert "status:" in cli("deliveries", "--status", "NOPE").stderr
    assert cli("resume", "nobody").returncode == 1
    resumed = cli("resume", "web")
    assert resumed.returncode == 0 and "resumed web" in resumed.stdout


# -- admin API ----------------------------------------------------------------------------------


def test_admin_api_register_list_resend(catalog, receiver):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api.callbacks import router
    from api.catalog import admin_api_key_setting

    app = FastAPI()
    app.include_router(router)  # mounted alone: create_app() wiring is not this test's concern
    app.dependency_overrides[admin_api_key_setting] = lambda: SecretStr("admin-key")
    key = {"X-Admin-Key": "admin-key"}
    with TestClient(app) as c:
        assert c.get("/v1/admin/callbacks").status_code == 401
        put = c.put("/v1/admin/callbacks/web", json={"url": receiver.url + "/web"}, headers=key)
        assert put.status_code == 200 and len(put.json()["secret"]) >= 32
        given = c.put(
            "/v1/admin/callbacks/web",
            json={"url": receiver.url + "/web", "secret": SECRET},
            headers=key,
        )
        assert given.status_code == 200 and "secret" not in given.json()
        bad = c.put("/v1/admin/callbacks/web", json={"url": "ftp://x"}, headers=key)
        assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "url"
        listed = c.get("/v1/admin/callbacks", headers=key).json()["endpoints"]
        assert [e["source"] for e in listed] == ["web"] and "secret" not in listed[0]
        catalog({"A": 1})
        new_order()
        run_deliveries()
        assert verified(receiver.at("/web")[0])  # signed with the secret given over the API
        (row,) = deliveries()
        resent = c.post("/v1/admin/callbacks/resend", json={"event_id": str(row.event_id)},
                        headers=key)  # fmt: skip
        assert resent.json() == {"queued": 1}
        both = c.post("/v1/admin/callbacks/resend", json={}, headers=key)
        assert both.status_code == 422 and both.json()["details"][0]["field"] == "event_id"
        assert c.post("/v1/admin/callbacks/nobody/resume", headers=key).status_code == 404
        assert c.post("/v1/admin/callbacks/web/resume", headers=key).json() == {"released": 0}
