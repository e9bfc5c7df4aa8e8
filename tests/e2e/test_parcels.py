"""A parcel per warehouse end to end: real workers, the warehouse and Kuaidi100 simulators over
real HTTP. An order whose lines live in two warehouses ships as two parcels, each tracked on
its own, and completes only when both are delivered; a parcel in exception flags its order
naming it while the other goes on; a worker SIGKILLed between two bookings books each parcel
once."""

from __future__ import annotations

import os
import signal

import pytest
from sqlalchemy import select, text

from models import Order, OrderEvent, Shipment
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.helpers import assert_stock_consistent, stock_of

pytestmark = pytest.mark.e2e


def paid_order(p, lines: list[tuple[str, int]]) -> str:
    oid = p.post_order(order_message(lines, provider="alipay"))
    wait_until(lambda: p.get_order(oid)["status"] == "AWAITING_PAYMENT", 60)
    p.stack.pay("alipay", oid.replace("-", ""))
    return oid


def parcels(oid: str) -> list[Shipment]:
    with unit_of_work() as s:
        rows = s.scalars(select(Shipment).where(Shipment.order_id == oid).order_by(Shipment.id))
        out = list(rows)
        s.expunge_all()
        return out


def order(oid: str) -> tuple[str, str]:
    with unit_of_work() as s:
        row = s.get(Order, oid)
        assert row is not None
        return row.status, row.reason or ""


def test_orders_over_two_warehouses_ship_as_parcels_each_tracked(start_pipeline, catalog):
    catalog({"A": 10}, warehouse="north")
    catalog({"B": 10}, warehouse="south")
    catalog({"C": 10}, warehouse="east")
    p = start_pipeline(shipping=True)
    p.stack.warehouse.script_for("east", "exception")  # east's parcels get stuck at the door
    both = paid_order(p, [("A", 2), ("B", 1)])
    troubled = paid_order(p, [("A", 1), ("C", 1)])

    wait_until(lambda: order(both)[0] == "COMPLETED", 90)
    shipped = parcels(both)
    assert [(s.warehouse, s.status) for s in shipped] == [
        ("north", "DELIVERED"), ("south", "DELIVERED"),
    ]  # fmt: skip
    bookings = p.stack.warehouse.ledger()["bookings"]
    assert {bookings[s.booking_key]["waybill"] for s in shipped} == {s.waybill for s in shipped}
    assert sorted((b["warehouse"], b["items"]) for k, b in bookings.items()
                  if k in {s.booking_key for s in shipped}) == [
        ("north", [("A", 2)]), ("south", [("B", 1)]),
    ]  # fmt: skip
    # Both parcels were tracked to DELIVERED before the order was.
    with unit_of_work() as s:
        events = s.execute(
            select(OrderEvent.id, OrderEvent.kind, OrderEvent.to_status, OrderEvent.detail)
            .where(OrderEvent.order_id == both).order_by(OrderEvent.id)
        ).all()  # fmt: skip
    delivered: dict[int, int] = {}  # the first DELIVERED row per parcel (a later push or poll
    for e in events:  # of the same scans writes another one, after the order's move)
        if e.kind == "tracking" and e.to_status == "DELIVERED":
            delivered.setdefault(e.detail["shipment_id"], e.id)
    order_delivered = next(e.id for e in events
                           if e.kind == "transition" and e.to_status == "DELIVERED")  # fmt: skip
    assert set(delivered) == {s.id for s in shipped}
    assert max(delivered.values()) < order_delivered
    # The API shows both parcels, each with its lines, waybill and trace.
    shown = p.get_order(both)["parcels"]
    assert [(v["warehouse"], v["lines"], v["waybill"], v["status"]) for v in shown] == [
        (s.warehouse, lines, s.waybill, "DELIVERED")
        for s, lines in zip(shipped, ([{"sku": "A", "quantity": 2}],
                                      [{"sku": "B", "quantity": 1}]), strict=True)
    ]  # fmt: skip
    assert all(v["events"] and v["events"][-1]["status"] == "DELIVERED" for v in shown)

    east = next(s for s in parcels(troubled) if s.warehouse == "east")
    flagged = f"tracking_exception: parcel {east.id} (east): "
    wait_until(lambda: order(troubled)[1].startswith(flagged), 90)
    # The other parcel is still tracked, to its delivery; the order stays flagged.
    wait_until(lambda: {s.warehouse: s.status for s in parcels(troubled)}
               == {"north": "DELIVERED", "east": "EXCEPTION"}, 90)  # fmt: skip
    assert order(troubled)[0] == "NEEDS_ATTENTION"
    assert stock_of("A", "north") == (7, 0) and stock_of("C", "east") == (9, 0)
    assert_stock_consistent()


def test_a_worker_killed_between_two_bookings_books_each_parcel_once(
    start_pipeline, catalog, monkeypatch
):
    from workers.procs import wait_worker_ready

    monkeypatch.setenv("SHIPPING_REDRIVE_S", "2")  # the sweeper re-drives the rest soon
    catalog({"A": 10}, warehouse="north")
    catalog({"B": 10}, warehouse="south")
    p = start_pipeline(shipping=True)
    warehouse = p.stack.warehouse
    warehouse.hold_after(1)  # the second booking's request is held open
    oid = paid_order(p, [("A", 1), ("B", 1)])
    wait_until(lambda: warehouse.ledger()["held"] == 1, 60)
    assert order(oid)[0] == "PARTIALLY_SHIPPED"
    victim = next(pr for pr in p.procs.procs if pr.name == "shipping")
    os.kill(victim.pid, signal.SIGKILL)
    victim.popen.wait(timeout=10)
    warehouse.release()  # the warehouse books what it was asked, for a caller now dead
    wait_worker_ready(p.procs.worker("shipping2", "shipping,tracking", concurrency=8,
                                     pool="threads"))  # fmt: skip
    wait_until(lambda: order(oid)[0] in ("SHIPPED", "IN_TRANSIT", "PARTIALLY_DELIVERED",
                                          "DELIVERED", "RECEIPT_CONFIRMED", "COMPLETED"),
               60)  # fmt: skip
    ledger = warehouse.ledger()
    shipped = parcels(oid)
    assert len(ledger["bookings"]) == 2 == len(shipped)  # one booking per parcel, per key
    for parcel in shipped:
        assert ledger["bookings"][parcel.booking_key]["waybill"] == parcel.waybill
    # The parcel whose answer was lost was asked again with its key, and answered the same.
    assert ledger["bookings"][shipped[1].booking_key]["replays"] >= 1
    assert stock_of("A", "north") == (9, 0) and stock_of("B", "south") == (9, 0)
    assert_stock_consistent()


def test_a_refused_booking_is_reallocated_and_ships_from_another_warehouse(start_pipeline, catalog):
    catalog({"A": 5}, warehouse="north")
    p = start_pipeline(shipping=True)
    warehouse = p.stack.warehouse
    oid = p.post_order(order_message([("A", 3)], provider="alipay"))
    wait_until(lambda: p.get_order(oid)["status"] == "AWAITING_PAYMENT", 60)
    catalog({"A": 5}, warehouse="south")  # stock arrives in south after north reserved it
    warehouse.refuse("north", "out_of_stock")  # north finds its shelf empty
    p.stack.pay("alipay", oid.replace("-", ""))

    wait_until(lambda: order(oid)[0] == "COMPLETED", 90)
    refused, shipped = parcels(oid)
    assert (refused.warehouse, refused.waybill, refused.cancel_reason) == (
        "north", None, "refused:out_of_stock",
    )  # fmt: skip
    assert (shipped.warehouse, shipped.status, shipped.cancelled_at) == ("south", "DELIVERED", None)
    ledger = warehouse.ledger()
    assert [(r["warehouse"], r["error"]) for r in ledger["refusals"]] == [("north", "out_of_stock")]
    assert ledger["bookings"][shipped.booking_key]["items"] == [("A", 3)]
    assert [k for k, b in ledger["bookings"].items() if b["warehouse"] == "north"] == []
    with unit_of_work() as s:  # the ledger shows the move: released in north, reserved in south
        moves = s.execute(text(
            "SELECT kind, warehouse, delta_reserved FROM stock_movements "
            "WHERE order_id = :o ORDER BY id"), {"o": oid}).all()  # fmt: skip
    assert [tuple(m) for m in moves] == [
        ("reserve", "north", 3), ("release", "north", -3), ("reserve", "south", 3),
        ("ship", "south", -3),
    ]  # fmt: skip
    assert stock_of("A", "north") == (5, 0) and stock_of("A", "south") == (2, 0)
    assert_stock_consistent()
