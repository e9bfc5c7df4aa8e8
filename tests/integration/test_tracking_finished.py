"""A parcel Kuaidi100 has finished with is never polled again (services.tracking.finish), on
real PostgreSQL, with the Kuaidi100 simulator over HTTP: the poll task queries it, and its pushes
reach the real API's webhook (served by uvicorn in this process).

The scheduler's clock is injected: ``claim_due(now=...)`` days later is what the beat would
claim then, so "never claimed again" is checked without waiting for anything.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from services.tracking import claim_due, lease_expiry
from services.unit_of_work import unit_of_work
from simulators.kuaidi100 import Kuaidi100Simulator
from tests.conftest import wait_until
from tests.integration.tracking_support import (
    get_order,
    get_shipment,
    make_order,
    make_shipment,
    tracking_entries,
    transitions,
)

DAY = 86400.0
CUSTOMER = "K100FINISH"


@dataclass
class Harness:
    sim: Kuaidi100Simulator
    api_url: str
    salt: str


def _serve(app: Any) -> tuple[Any, threading.Thread, str]:
    """The API under uvicorn on a free port of 127.0.0.1, in a thread; (server, thread, url)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=30)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def k100(db, monkeypatch) -> Iterator[Harness]:
    """The simulator (its clock moves only when a test advances it; subscriptions are checked
    once a simulated day, so only the pushes a test asks for arrive) and the real API, with the
    settings of both pointing at each other. Keys are made here."""
    from adapters import registry
    from api.app import create_app
    from settings import get_settings
    from workers import ports

    key, salt = secrets.token_hex(8), secrets.token_hex(8)
    sim = Kuaidi100Simulator(
        CUSTOMER, key, time_scale=1.0, min_query_interval_s=0.0, push_interval_s=DAY,
        first_push_delay_s=DAY, push_retry_delays=(0.05, 0.05, 0.05),
    ).start()  # fmt: skip
    env = {
        "KUAIDI100_QUERY_URL": f"{sim.url}/poll/query.do",
        "KUAIDI100_SUBSCRIBE_URL": f"{sim.url}/poll",
        "KUAIDI100_CUSTOMER": CUSTOMER,
        "KUAIDI100_KEY": key,
        "KUAIDI100_CALLBACK_SALT": salt,
        "TRACKING_MIN_INTERVAL_S": "600",
        "TRACKING_RATE_PER_S": "200",
        "TRACKING_BURST": "200",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    registry.reset()
    ports.tracking_quota.cache_clear()
    server, thread, url = _serve(create_app())
    try:
        yield Harness(sim, url, salt)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sim.stop()
        get_settings.cache_clear()
        registry.reset()
        ports.tracking_quota.cache_clear()


def _parcel(h: Harness, script: str, *, order_status: str = "SHIPPED") -> tuple[str, int, str]:
    """An order with a shipment due now, its waybill known to the simulator under ``script``."""
    waybill = "YT" + uuid.uuid4().hex[:12].upper()
    h.sim.register_waybill("yuantong", waybill, script)
    oid = make_order(order_status)
    due = datetime.now(UTC) - timedelta(seconds=5)
    sid = make_shipment(oid, "PENDING", next_poll_at=due, waybill=waybill)
    return oid, sid, waybill


def _poll_due() -> list[int]:
    """One beat tick's claim now, then the poll task over HTTP; the ids claimed."""
    from tasks.tracking import poll

    now = datetime.now(UTC)
    with unit_of_work() as s:
        ids = claim_due(s, now=now, limit=100, lease_s=120.0, min_interval_s=600.0)
    if ids:
        poll(ids, lease_expiry(now, horizon_s=0.0, lease_s=120.0).isoformat())
    return ids


def _claimable(days: float) -> list[int]:
    """What a beat would claim ``days`` from now (nothing is leased: the claim is rolled back)."""
    at = datetime.now(UTC) + timedelta(days=days)
    with unit_of_work() as s:
        ids = claim_due(s, now=at, limit=100, lease_s=120.0, min_interval_s=600.0)
        s.rollback()
    return ids


def _subscribe(h: Harness, waybill: str) -> None:
    from adapters.registry import tracking_provider

    assert tracking_provider().subscribe("yuantong", waybill, f"{h.api_url}/webhooks/kuaidi100",
                                         None)  # fmt: skip


def _acked(h: Harness, waybill: str, count: int) -> None:
    """Wait until the API has acknowledged ``count`` pushes of ``waybill``."""

    def acked() -> bool:
        return h.sim.ledger()["pushes"].get(waybill, {}).get("acked", 0) >= count

    wait_until(acked, timeout_s=30, show=lambda: h.sim.ledger()["pushes"].get(waybill))


def test_a_delivered_parcel_signed_for_is_not_claimed_again(k100):
    """The query answers state 301 with ischeck=1: DELIVERED, tracking ended, nothing left to
    claim however much later the beat looks."""
    oid, sid, _ = _parcel(k100, "normal")
    k100.sim.advance(40 * 3600)  # signed for at 34 h
    assert _poll_due() == [sid]
    shipment = get_shipment(sid)
    assert (shipment.status, shipment.next_poll_at) == ("DELIVERED", None)
    assert shipment.tracking_ended_at is not None
    assert get_order(oid).status == "DELIVERED"
    assert _claimable(days=30) == []
    assert tracking_entries(oid)[-1]["tracking_ended"] == "signed for (ischeck=1)"


def test_a_parcel_in_exception_then_shutdown_is_not_claimed_again(k100):
    """The case that was polled hourly forever: a parcel in 疑难 (state 2) flags the order; the
    parcel stays claimable while Kuaidi100 tracks it; after its ``shutdown`` push it is never
    claimed again, and the order keeps the reason a person is looking at."""
    oid, sid, waybill = _parcel(k100, "exception")
    k100.sim.advance(34 * 3600)  # the exception scan (33 h) is visible
    assert _poll_due() == [sid]
    assert get_shipment(sid).status == "EXCEPTION"
    flagged = get_order(oid)
    assert flagged.status == "NEEDS_ATTENTION" and flagged.reason.startswith("tracking_exception")
    assert _claimable(days=2) == [sid]  # still tracked: polled at the exception cadence

    _subscribe(k100, waybill)
    assert k100.sim.push_now(waybill, "shutdown")
    _acked(k100, waybill, 1)  # acknowledged after the webhook's transaction committed
    assert _claimable(days=2) == [] and _claimable(days=365) == []
    shipment = get_shipment(sid)
    assert (shipment.status, shipment.next_poll_at) == ("EXCEPTION", None)
    assert shipment.tracking_ended_at is not None
    order = get_order(oid)
    assert (order.status, order.reason) == ("NEEDS_ATTENTION", flagged.reason)
    assert transitions(oid) == [("SHIPPED", "NEEDS_ATTENTION")]

    # The person is told there is nothing to poll or wait for, rather than a silent no-op.
    from domain.errors import ConflictError
    from services import attention_actions

    for action, note in (("retry", ""), ("resolve", "carrier says it is fine")):
        with (
            pytest.raises(ConflictError, match=r"nothing to poll|tracking has ended"),
            unit_of_work() as s,
        ):
            attention_actions.act(s, oid, action, now=datetime.now(UTC), actor="op",
                                  address="127.0.0.1", note=note)  # fmt: skip
    assert _claimable(days=365) == []


def _signed_push(h: Harness, waybill: str, status: str, last: dict[str, Any]) -> int:
    """POST a push signed with the callback salt to the API, as Kuaidi100 would; the HTTP
    status."""
    import hashlib

    param = json.dumps({"status": status, "message": "", "autoCheck": "0", "comOld": "",
                        "comNew": "", "lastResult": last}, ensure_ascii=False)  # fmt: skip
    sign = hashlib.md5((param + h.salt).encode()).hexdigest().upper()  # Kuaidi100's MD5
    r = requests.post(f"{h.api_url}/webhooks/kuaidi100", data={"param": param, "sign": sign},
                      timeout=10)  # fmt: skip
    return r.status_code


def _beijing(at: datetime) -> str:
    """Kuaidi100's time format: Beijing time without an offset."""
    return (at + timedelta(hours=8)).strftime("%Y-%m-%d %H:%M:%S")


def test_duplicate_and_late_pushes_after_finishing_change_nothing(k100):
    """After the shutdown: the same shutdown again (twice at once), then a late push claiming
    the parcel moves again (a newer in-transit scan). Its event is kept as a fact; the shipment,
    its schedule and the order do not move."""
    oid, sid, waybill = _parcel(k100, "exception")
    k100.sim.advance(34 * 3600)
    _poll_due()
    _subscribe(k100, waybill)
    k100.sim.push_now(waybill, "shutdown")
    _acked(k100, waybill, 1)
    before = get_shipment(sid)
    assert before.tracking_ended_at is not None
    order_before = get_order(oid)

    k100.sim.set_push_options(duplicate=True)
    k100.sim.push_now(waybill, "shutdown")
    _acked(k100, waybill, 3)
    late = {  # newer than every scan so far (the simulator's clock is 34 h ahead)
        "message": "ok", "nu": waybill, "ischeck": "0", "condition": "", "com": "yuantong",
        "status": "200", "state": "0",
        "data": [{"time": _beijing(datetime.now(UTC) + timedelta(hours=40)),
                  "context": "快件已恢复派送", "status": "0", "statusCode": "1002"}],
    }  # fmt: skip
    assert _signed_push(k100, waybill, "polling", late) == 200

    after = get_shipment(sid)
    assert (after.status, after.raw_state, after.next_poll_at) == ("EXCEPTION", "2", None)
    assert after.tracking_ended_at == before.tracking_ended_at
    assert (after.last_push_at, after.last_event_at) == (before.last_push_at, before.last_event_at)
    order = get_order(oid)
    assert (order.status, order.reason) == (order_before.status, order_before.reason)
    assert transitions(oid) == [("SHIPPED", "NEEDS_ATTENTION")]
    entries = tracking_entries(oid)
    assert sum("tracking_ended" in e for e in entries) == 1  # ended once
    assert entries[-1]["ignored"] == "tracking_ended" and entries[-1]["new_events"] == 1
    assert _claimable(days=365) == []


def test_an_abort_for_a_number_never_found_ends_tracking_and_flags_the_order(k100):
    """Rule 2: ``abort`` "3天查询无记录" is not re-subscribed and not polled on; the order is
    flagged with why (check carrier and waybill)."""
    oid, sid, waybill = _parcel(k100, "never_found")
    assert _poll_due() == [sid]  # no trace yet (500): PENDING, polled again later
    assert _claimable(days=1) == [sid]
    _subscribe(k100, waybill)
    k100.sim.advance(3 * DAY + 60)  # the simulator's daily check finds 3 days without a trace
    _acked(k100, waybill, 1)
    assert _claimable(days=365) == []
    shipment = get_shipment(sid)
    assert (shipment.status, shipment.next_poll_at) == ("EXCEPTION", None)
    order = get_order(oid)
    assert order.status == "NEEDS_ATTENTION" and "3天查询无记录" in order.reason
    subs = k100.sim.ledger()["subscriptions"]
    assert subs[waybill]["status"] == "abort"  # nobody subscribed it again


def test_a_shutdown_without_a_delivery_scan_flags_the_order_with_why(k100):
    """A parcel still IN_TRANSIT when Kuaidi100 ends tracking: the order does not wait
    silently, it goes to attention saying tracking ended without a delivery scan."""
    oid, sid, waybill = _parcel(k100, "normal")
    k100.sim.advance(14 * 3600)  # at the hub
    _poll_due()
    assert get_order(oid).status == "IN_TRANSIT"
    _subscribe(k100, waybill)
    k100.sim.push_now(waybill, "shutdown")
    _acked(k100, waybill, 1)
    shipment = get_shipment(sid)
    assert (shipment.status, shipment.next_poll_at) == ("IN_TRANSIT", None)
    order = get_order(oid)
    assert order.status == "NEEDS_ATTENTION"
    assert order.reason.startswith("tracking_ended: kuaidi100 shutdown")
    assert "no delivery scan" in order.reason
    assert _claimable(days=365) == []


def test_a_poll_in_flight_when_tracking_ends_schedules_no_next_poll(db):
    """The shutdown push lands while a poll of the same parcel is out (no lock is held during
    the query): recording that poll's answer must not put the parcel back on the schedule."""
    from adapters.logistics.base import PushUpdate
    from domain.tracking import Cadence
    from services.tracking import apply_push, record_poll, start_poll
    from tests.integration.tracking_support import TS, ev, res

    now = datetime.now(UTC)
    oid = make_order("SHIPPED")
    sid = make_shipment(oid, "IN_TRANSIT", next_poll_at=now - timedelta(seconds=5))
    with unit_of_work() as s:
        assert claim_due(s, now=now, limit=10, lease_s=120.0, min_interval_s=600.0) == [sid]
    with unit_of_work() as s:
        assert start_poll(s, sid, now=now, lease_until=None, min_interval_s=600.0) is not None
    problem = res(TS.EXCEPTION, ev(now - timedelta(hours=1), TS.EXCEPTION, "2", "派件异常"),
                  raw_state="2")  # fmt: skip
    with unit_of_work() as s:  # the push, while the query is out
        apply_push(s, sid, PushUpdate("shutdown", "", problem), now=now + timedelta(seconds=1))
    with unit_of_work() as s:  # the query's answer, recorded after it
        record_poll(s, sid, now=now + timedelta(seconds=2), result=problem, failed=False,
                    cadence=Cadence(), has_push=False)  # fmt: skip
    shipment = get_shipment(sid)
    assert (shipment.status, shipment.next_poll_at, shipment.lease_until) == ("EXCEPTION", None,
                                                                              None)  # fmt: skip
    assert _claimable(days=365) == []
    assert get_order(oid).reason.startswith("tracking_exception")  # flagged by the scan, kept
