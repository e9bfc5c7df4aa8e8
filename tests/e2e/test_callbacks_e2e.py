"""Status callbacks end to end: real API, pipeline workers, beat and a callbacks worker, with a
real local HTTP receiver. Every status change of a completed, a rejected, an expired and a
cancelled order is delivered, signed, with its own event id; a receiver that fails at first is
retried with backoff and then served."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from models import CallbackDelivery, OrderEvent
from services import callbacks
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.integration.callbacks_support import (  # noqa: F401 - receiver is a fixture
    SECRET,
    Received,
    cipher,
    receiver,
    verified,
)

pytestmark = pytest.mark.e2e

FINAL = {"COMPLETED", "REJECTED", "EXPIRED", "CANCELLED"}
# How long after its recorded time a failed attempt may still be uncommitted (see the backoff
# check below).
COMMITTED = timedelta(seconds=0.25)


def transitions(view: dict[str, Any]) -> list[str]:
    return [e["to"] for e in view["timeline"] if e["kind"] == "transition"]


def events_by_order(got: list[Received]) -> dict[str, list[dict[str, Any]]]:
    """Each order's events, once per event id (delivery is at least once), by sequence."""
    unique = {r.event["id"]: r.event for r in got}
    by_order: dict[str, list[dict[str, Any]]] = {}
    for event in sorted(unique.values(), key=lambda e: e["sequence"]):
        by_order.setdefault(event["data"]["order"]["id"], []).append(event)
    return by_order


def all_delivered() -> bool:
    with unit_of_work() as s:
        return set(s.scalars(select(CallbackDelivery.status))) == {"DELIVERED"}


def delivery_log() -> list[tuple[Any, ...]]:
    with unit_of_work() as s:
        rows = s.scalars(select(CallbackDelivery).order_by(CallbackDelivery.id))
        return [(d.order_id[:8], d.payload["order"]["status"], d.status, d.attempts, d.last_error)
                for d in rows]  # fmt: skip


def test_every_status_change_is_delivered_signed_and_retried(
    start_pipeline,
    catalog,
    receiver,  # noqa: F811 - the fixture imported above
    monkeypatch,
):
    from workers.procs import wait_worker_ready

    monkeypatch.setenv("PAYMENT_WINDOW_S", "8")
    monkeypatch.setenv("CALLBACK_DISPATCH_INTERVAL_S", "0.3")
    monkeypatch.setenv("CALLBACK_BACKOFF_FIRST_S", "1")
    monkeypatch.setenv("CALLBACK_BACKOFF_CAP_S", "4")
    catalog({"C": 10, "GONE": 0})
    with unit_of_work() as s:
        for source in ("web", "flaky"):  # secrets stored encrypted: the worker decrypts them
            callbacks.register_endpoint(
                s, source, f"{receiver.url}/{source}", SecretStr(SECRET), cipher=cipher()
            )
    receiver.fail_first["/flaky"] = 2
    p = start_pipeline(shipping=True)
    wait_worker_ready(p.procs.worker("callbacks", "callbacks", concurrency=4, pool="threads"))

    completed = p.post_order(order_message("C", 1, provider="alipay"))
    rejected = p.post_order(order_message("GONE", 1))
    expired = p.post_order(order_message("C", 1, provider="wechatpay"))
    cancelled = p.post_order(order_message("C", 1, provider="stripe"))
    flaky = p.post_order(order_message("GONE", 1, source="flaky"))
    status = lambda oid: p.get_order(oid)["status"]  # noqa: E731
    wait_until(lambda: status(completed) == "AWAITING_PAYMENT", 60)
    p.stack.pay("alipay", completed.replace("-", ""))
    wait_until(lambda: status(cancelled) == "AWAITING_PAYMENT", 60)
    assert p.post(f"/v1/orders/{cancelled}/cancel", {"reason": "test"}).status_code == 202
    orders = [completed, rejected, expired, cancelled, flaky]
    wait_until(lambda: all(status(o) in FINAL for o in orders), 120, 0.5,
               show=lambda: {o: status(o) for o in orders})  # fmt: skip
    wait_until(all_delivered, 60, 0.5, show=delivery_log)

    got = receiver.at("/web") + receiver.at("/flaky")
    assert all(verified(r) for r in got)
    assert all(r.headers["X-Orderflow-Event-Id"] == r.event["id"] for r in got)
    by_order = events_by_order(got)
    with unit_of_work() as s:
        rows = list(s.scalars(select(CallbackDelivery)))
    assert len({str(d.event_id) for d in rows}) == len(rows)  # one id per event
    assert {str(d.event_id) for d in rows} == {e["id"] for es in by_order.values() for e in es}
    for oid in orders:  # every status change, in the order they happened
        view = p.get_order(oid)
        changes = [e for e in by_order[oid] if e["type"] == "order.status_changed"]
        assert [e["data"]["order"]["status"] for e in changes] == transitions(view), oid
    # The parcel's moves that left the order where it was (out for delivery, say) are told by
    # parcel events, each naming the parcel; every parcel move is told exactly once.
    (parcel,) = p.get_order(completed)["parcels"]
    moves = [(e["data"]["parcel"]["previous_status"], e["data"]["parcel"]["status"])
             for e in by_order[completed] if e["type"] == "order.parcel_updated"]  # fmt: skip
    assert all(e["data"]["parcel"]["id"] == parcel["id"] for e in by_order[completed]
               if e["type"] == "order.parcel_updated")  # fmt: skip
    with unit_of_work() as s:  # the order's rows in order: a parcel move, then its order's
        story = list(s.scalars(select(OrderEvent).where(OrderEvent.order_id == completed)
                              .order_by(OrderEvent.id)))  # fmt: skip
    nexts = [*story[1:], None]
    alone = [(r.from_status, r.to_status) for r, after in zip(story, nexts, strict=True)
             if r.kind == "tracking" and r.from_status != r.to_status
             and (after is None or after.kind != "transition")]  # fmt: skip
    assert moves == alone and moves, (moves, alone)
    assert transitions(p.get_order(completed)) == [
        "RECEIVED", "RESERVED", "AWAITING_PAYMENT", "PAID", "SHIPPED", "IN_TRANSIT",
        "DELIVERED", "RECEIPT_CONFIRMED", "COMPLETED",
    ]  # fmt: skip
    assert [status(o) for o in orders[1:]] == ["REJECTED", "EXPIRED", "CANCELLED", "REJECTED"]
    for event in (e for es in by_order.values() for e in es):
        data = event["data"]
        if data["order"]["status"] == "AWAITING_PAYMENT":
            assert data["payment"]["instructions"], event
            assert data["payment"]["out_trade_no"] == data["order"]["id"].replace("-", "")
        if data["order"]["status"] == "SHIPPED" and event["type"] == "order.status_changed":
            shipment = p.get_order(completed)["shipment"]
            assert data["tracking"]["waybill"] == shipment["waybill"] and shipment["waybill"]

    # The flaky receiver: its first two POSTs failed; each next POST waited for the endpoint's
    # backoff (uniform in [c/2, c] with c = 1 s * 2**(failures-1)); then everything landed.
    posts = receiver.at("/flaky")
    flaky_rows = [d for d in rows if d.order_id == flaky]
    assert len(flaky_rows) == 2 and len(posts) == 4, [p.event["data"]["order"] for p in posts]
    assert sum(d.attempts for d in flaky_rows) == 4
    assert {(d.status, d.last_status_code) for d in flaky_rows} == {("DELIVERED", 204)}
    with unit_of_work() as s:  # the delivery log keeps every attempt, not only the last
        log = [a for v in callbacks.list_deliveries(s, source="flaky") for a in v.attempt_log]
    log.sort(key=lambda a: a.at)
    assert [a.status_code for a in log] == [500, 500, 204, 204]
    # The backoff as the system recorded it, not as the receiver's clock saw it (arrival gaps
    # include each POST's latency, which a busy machine stretches or squeezes): an attempt is
    # recorded when its POST has ended, so the next one began at its ``at`` less its duration,
    # and that must be at least c/2 after the failure was recorded. An attempt that began
    # before a failure was recorded ran beside it (a healthy endpoint is not gated, so its
    # two deliveries may go out together): the gate applies only to what began after. "After"
    # allows COMMITTED: a failure's row commits a moment after its ``at``, and a delivery
    # whose request was read before that commit went out ungated (seen in CI: 0.049 s). The
    # allowance is half the smallest backoff, so an ungated retry still fails the check.
    started = [a.at - timedelta(milliseconds=a.duration_ms or 0) for a in log]
    failures = [a.at for a in log if a.status_code == 500]
    waited = [
        min((t - failed).total_seconds() for t in started if t > failed + COMMITTED)
        for failed in failures
    ]
    assert waited[0] >= 0.5 and waited[1] >= 1.0, (waited, log)
