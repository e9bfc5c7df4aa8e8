"""Status callbacks on real PostgreSQL, delivered over real HTTP to a local receiver: every status
change of an order arrives signed, in order, with its own event id; a resend repeats the event
id; a rolled-back change announces nothing; endpoint URLs are validated.

The lifecycle test drives the order through the real services (intake, reservation, payments,
shipping, ``move_order``): every event it sees was written by the services' own outbox inserts.
tests/e2e/test_callbacks_e2e.py runs the real beat and callbacks worker.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from adapters.payments.base import PaymentCreated
from models import Order, Shipment, TrackingEvent
from services import callbacks, payments, shipping
from services.order_state import lock_order, move_order
from services.payments import PaymentConfig
from services.reservation import reserve_order
from services.unit_of_work import unit_of_work
from tests.integration.callbacks_support import (
    SECRET,
    deliveries,
    new_order,
    now,
    register,
    run_deliveries,
    verified,
)


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
        payments.prepare_create(s, oid, now=now(), config=PaymentConfig("http://x")),
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
    for target in ("DELIVERED", "RECEIPT_CONFIRMED", "COMPLETED"):
        step(target, move(target))

    assert run_deliveries() == 9
    got = receiver.at("/web")
    statuses = [r.event["data"]["order"]["status"] for r in got]
    assert statuses == ["RECEIVED", "RESERVED", "AWAITING_PAYMENT", "PAID", "SHIPPED",
                        "IN_TRANSIT", "DELIVERED", "RECEIPT_CONFIRMED", "COMPLETED"]  # fmt: skip
    assert all(verified(r) for r in got)
    ids = [r.headers["X-Orderflow-Event-Id"] for r in got]
    assert len(set(ids)) == 9 and ids == [r.event["id"] for r in got]
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
