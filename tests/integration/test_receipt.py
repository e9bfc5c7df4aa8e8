"""Receipt and the after-sale window (services.receipt) on real PostgreSQL: a delivered order
is confirmed by the buyer or by the clock, and completes when its window has passed."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from domain.errors import ConflictError, NotFound
from models import OrderEvent
from services.receipt import confirm_receipt, sweep_receipts
from services.unit_of_work import unit_of_work
from tests.integration.callbacks_support import deliveries, register
from tests.integration.tracking_support import (
    T0,
    TS,
    apply,
    ev,
    get_order,
    make_order,
    make_shipment,
    res,
    transitions,
)

DAY = 86_400


def delivered_order() -> str:
    """A SHIPPED order whose parcel is then delivered by a tracking result (the real path)."""
    oid = make_order("SHIPPED")
    sid = make_shipment(oid, "IN_TRANSIT")
    apply(sid, res(TS.DELIVERED, ev(T0, TS.DELIVERED, "3", "signed"), raw_state="3"))
    assert get_order(oid).status == "DELIVERED"
    return oid


def db_now():
    with unit_of_work() as s:
        return s.scalar(text("SELECT now()"))


def sweep(now=None, *, auto_s=7 * DAY, window_s=7 * DAY, limit=500):
    with unit_of_work() as s:
        return sweep_receipts(s, auto_receive_s=auto_s, window_s=window_s, limit=limit, now=now)


def confirm(oid: str, actor: str = "api:web") -> str:
    with unit_of_work() as s:
        return confirm_receipt(s, oid, actor=actor)


def test_delivery_stamps_the_order_and_the_buyer_confirms_receipt(db):
    oid = delivered_order()
    order = get_order(oid)
    assert order.delivered_at is not None and order.receipt_confirmed_at is None
    assert confirm(oid) == "RECEIPT_CONFIRMED"
    assert confirm(oid) == "RECEIPT_CONFIRMED"  # a retried request is answered, not refused
    order = get_order(oid)
    assert (
        order.receipt_confirmed_at is not None and order.receipt_confirmed_at >= order.delivered_at
    )
    assert transitions(oid)[-1] == ("DELIVERED", "RECEIPT_CONFIRMED")
    assert len([t for t in transitions(oid) if t[1] == "RECEIPT_CONFIRMED"]) == 1


@pytest.mark.parametrize("status", ["PAID", "SHIPPED", "IN_TRANSIT", "CANCELLED"])
def test_receipt_before_delivery_is_refused_naming_the_status(db, status):
    oid = make_order(status)
    with pytest.raises(ConflictError) as refused:
        confirm(oid)
    assert refused.value.field == "status" and status in str(refused.value)
    assert get_order(oid).status == status and transitions(oid) == []


def test_an_unknown_order_is_not_found(db):
    with pytest.raises(NotFound):
        confirm("00000000-0000-0000-0000-000000000000")


def test_the_clock_receives_an_order_only_once_its_delay_has_passed(db):
    oid = delivered_order()
    delivered_at = get_order(oid).delivered_at
    before = delivered_at + timedelta(seconds=DAY - 1)
    assert sweep(before, auto_s=DAY).confirmed == []
    assert get_order(oid).status == "DELIVERED"
    at = delivered_at + timedelta(seconds=DAY)  # the deadline itself is past it
    result = sweep(at, auto_s=DAY)
    assert result.confirmed == [oid] and result.completed == []
    assert get_order(oid).status == "RECEIPT_CONFIRMED"
    detail = _last_transition_detail(oid)
    assert detail == ({"auto": True, "after_s": DAY}, "sweeper")


def test_the_window_completes_an_order_counted_from_its_receipt(db):
    oid = delivered_order()
    confirm(oid)
    received_at = get_order(oid).receipt_confirmed_at
    assert sweep(received_at + timedelta(seconds=3 * DAY - 1), window_s=3 * DAY).completed == []
    assert sweep(received_at + timedelta(seconds=3 * DAY), window_s=3 * DAY).completed == [oid]
    assert get_order(oid).status == "COMPLETED"
    assert confirm(oid) == "COMPLETED"  # late confirmation: answered with where it stands
    assert transitions(oid)[-2:] == [
        ("DELIVERED", "RECEIPT_CONFIRMED"), ("RECEIPT_CONFIRMED", "COMPLETED"),
    ]  # fmt: skip


def test_the_sweep_uses_the_databases_clock_by_default(db):
    oid = delivered_order()
    assert sweep(auto_s=DAY).confirmed == []  # delivered just now by the database's clock
    result = sweep(auto_s=0, window_s=0)  # one sweep: received, and the window of 0 passed
    assert (result.confirmed, result.completed) == ([oid], [oid])
    assert db_now() >= get_order(oid).receipt_confirmed_at


def test_each_claim_takes_at_most_the_limit_oldest_first(db):
    oids = [delivered_order() for _ in range(3)]
    later = db_now() + timedelta(seconds=10)
    assert sweep(later, auto_s=0, window_s=DAY, limit=2).confirmed == oids[:2]
    assert sweep(later, auto_s=0, window_s=DAY, limit=2).confirmed == oids[2:]


def test_a_confirmation_racing_the_sweep_moves_the_order_once(db):
    oids = [delivered_order() for _ in range(20)]
    later = db_now() + timedelta(seconds=10)
    errors: list[BaseException] = []

    def run(fn) -> None:
        try:
            fn()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    def buyers() -> None:
        for oid in oids:
            confirm(oid)

    threads = [threading.Thread(target=run, args=(buyers,)),
               threading.Thread(target=run, args=(lambda: sweep(later, auto_s=0),))]  # fmt: skip
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    sweep(later, auto_s=0)  # whatever the sweep skipped (locked by a buyer) it takes now
    for oid in oids:
        assert get_order(oid).status == "RECEIPT_CONFIRMED"
        assert [t for t in transitions(oid) if t[1] == "RECEIPT_CONFIRMED"] == [
            ("DELIVERED", "RECEIPT_CONFIRMED")
        ]


def test_receipt_and_completion_are_told_to_the_status_callbacks(db):
    register("test", "http://127.0.0.1:9/hook")  # make_order's source; never called here
    oid = delivered_order()
    confirm(oid)
    sweep(db_now() + timedelta(seconds=10), window_s=0)
    told = [d.payload["order"]["status"] for d in deliveries(order_id=oid)]
    assert told[-3:] == ["DELIVERED", "RECEIPT_CONFIRMED", "COMPLETED"]


def _last_transition_detail(oid: str) -> tuple[dict | None, str]:
    with unit_of_work() as s:
        event = s.scalars(
            select(OrderEvent)
            .where(OrderEvent.order_id == oid, OrderEvent.kind == "transition")
            .order_by(OrderEvent.id.desc())
            .limit(1)
        ).one()
        return event.detail, event.actor


def test_the_api_confirms_receipt_and_names_the_status_when_too_early(db, api_key):
    from fastapi.testclient import TestClient

    from api.app import create_app

    oid, early = delivered_order(), make_order("IN_TRANSIT")
    headers = {"X-API-Key": api_key}
    with TestClient(create_app()) as client:
        ok = client.post(f"/v1/orders/{oid}/receipt", headers=headers)
        again = client.post(f"/v1/orders/{oid}/receipt", headers=headers)
        refused = client.post(f"/v1/orders/{early}/receipt", headers=headers)
        view = client.get(f"/v1/orders/{oid}", headers=headers).json()
    assert (ok.status_code, ok.json()) == (200, {"id": oid, "status": "RECEIPT_CONFIRMED"})
    assert again.json()["status"] == "RECEIPT_CONFIRMED"
    assert refused.status_code == 409
    assert refused.json()["details"][0]["field"] == "status"
    assert get_order(early).status == "IN_TRANSIT"
    assert view["delivered_at"] and view["receipt_confirmed_at"]
    assert view["timeline"][-1]["actor"] == "api:*"  # the test key is the wildcard


def test_the_cli_confirms_receipt_and_refuses_in_one_line(db):
    from tests.integration.test_cli import cli

    oid, early = delivered_order(), make_order("PAID")
    done = cli("orders", "confirm-receipt", oid)
    assert done.returncode == 0, done.stderr
    assert f"{oid} is RECEIPT_CONFIRMED" in done.stdout
    refused = cli("orders", "confirm-receipt", early)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr + refused.stdout
    assert "DELIVERED" in refused.stderr + refused.stdout
    assert get_order(early).status == "PAID"
