"""A parcel per warehouse on real PostgreSQL: planning, booking each parcel with its own key,
re-allocating a refused parcel (the ledger shows every move), following every parcel's
tracking, cancelling what has not shipped, and what an operator's retry, cancel or resolve
does with lines no warehouse took. The warehouse and payment provider are the
in-memory fakes; the e2e suite runs the same through real workers and simulators."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from adapters.logistics.base import Booked
from domain.errors import ConflictError, ValidationError
from domain.parcels import booking_key
from models import Order, Refund, Shipment, ShipmentLine
from producers.intake import accept_message
from services import attention_actions, payments, shipping, stock_admin
from services.payments import PaymentConfig
from services.ports import Ports
from services.reservation import reserve_order
from services.shipping import ShippingConfig
from services.task_names import PAYMENTS_REFUND, SHIPPING_BOOK, SHIPPING_SUBSCRIBE
from services.unit_of_work import unit_of_work
from tests.conftest import order_message
from tests.fakes import FakeBookingService, FakeGate, FakePaymentProvider
from tests.helpers import assert_stock_consistent, stock_of
from tests.integration.tracking_support import TS, apply, ev, res
from tests.reliability import invariants

PAY = PaymentConfig(notify_base_url="http://127.0.0.1:9", create_redrive_s=30, first_query_s=5)
SHIP = ShippingConfig(redrive_s=60, first_poll_s=30)


def now() -> datetime:
    return datetime.now(UTC)


def ports(gate: FakeGate | None = None) -> Ports:
    return Ports(gate=gate or FakeGate(), clock=now)


@pytest.fixture
def two_warehouses(catalog):
    """A (1000 each) lives in north, B (300) in south: an order of both ships as two parcels."""
    catalog({"A": 5}, price=1000, warehouse="north")
    catalog({"B": 5}, price=300, warehouse="south")


def paid_order(lines: list[tuple[str, int]]) -> tuple[str, FakePaymentProvider]:
    oid = accept_message(order_message(lines), channel="test").order_id
    with unit_of_work() as s:
        assert reserve_order(s, oid, now=now(), payment_window_s=600).status == "RESERVED"
    fake = FakePaymentProvider()
    assert payments.create(oid, lambda _n: fake, ports(), PAY).result == "created"
    fake.pay(next(iter(fake.trades)))
    with unit_of_work() as s:
        payments.apply_notification(s, "alipay", fake.parse_notification({}, fake.outbox[0]),
                                    now=now())  # fmt: skip
    assert status(oid) == "PAID"
    return oid, fake


def status(oid: str) -> str:
    with unit_of_work() as s:
        order = s.get(Order, oid)
        assert order is not None
        return order.status


def reason(oid: str) -> str:
    with unit_of_work() as s:
        order = s.get(Order, oid)
        assert order is not None
        return order.reason or ""


def parcels(oid: str) -> list[tuple[int, str | None, int, bool, str | None, list[tuple[str, int]]]]:
    """(id, warehouse, seq, live, waybill, lines) of each parcel, oldest first."""
    with unit_of_work() as s:
        rows = s.scalars(select(Shipment).where(Shipment.order_id == oid).order_by(Shipment.id))
        return [
            (p.id, p.warehouse, p.seq, p.cancelled_at is None, p.waybill,
             [(ln.sku, ln.quantity) for ln in s.scalars(
                 select(ShipmentLine).where(ShipmentLine.shipment_id == p.id)
                 .order_by(ShipmentLine.sku))])
            for p in rows
        ]  # fmt: skip


def movements(oid: str) -> list[tuple[str, str, str, int]]:
    """(kind, sku, warehouse, delta_reserved) of the order's ledger rows, in order."""
    with unit_of_work() as s:
        rows = s.execute(
            text("SELECT kind, sku, warehouse, delta_reserved FROM stock_movements "
                 "WHERE order_id = :o ORDER BY id"), {"o": oid},
        )  # fmt: skip
        return [tuple(r) for r in rows]


def test_planning_twice_creates_nothing_more(two_warehouses):
    oid, _ = paid_order([("A", 2), ("B", 1)])
    for _ in range(2):
        with unit_of_work() as s:
            call = shipping.prepare_booking(s, oid, now=now(), redrive_s=60)
            assert call is not None and call.request.warehouse == "north"
    planned = parcels(oid)
    assert [(w, seq, lines) for _, w, seq, _, _, lines in planned] == [
        ("north", 1, [("A", 2)]), ("south", 1, [("B", 1)]),
    ]  # fmt: skip
    with pytest.raises(IntegrityError), unit_of_work() as s:  # the constraint backs it up
        s.add(Shipment(order_id=oid, warehouse="north", seq=1, status="PENDING",
                       booking_key="another-key"))  # fmt: skip
        s.flush()


class DiesAt(FakeBookingService):
    """The fake warehouse, with the run stopping (an error out of the call) at the given call
    numbers: after the warehouse booked (``after``) or before."""

    def __init__(self, **dies: bool) -> None:
        super().__init__()
        self.dies = {int(k[1:]): after for k, after in dies.items()}  # c1=True: call 1, after
        self.n = 0

    def book(self, request):
        self.n += 1
        after = self.dies.get(self.n)
        if after is False:
            raise RuntimeError(f"died before call {self.n}")
        booked = super().book(request)
        if after:
            raise RuntimeError(f"died after call {self.n}")
        return booked


def test_each_parcel_is_booked_once_with_its_key_and_the_order_ships(two_warehouses):
    oid, _ = paid_order([("A", 2), ("B", 1)])
    warehouse = DiesAt(c1=True, c3=False)  # north booked, answer lost; then south's call fails
    with pytest.raises(RuntimeError, match="after call 1"):
        shipping.book(oid, warehouse, ports(), SHIP)
    assert status(oid) == "PAID"
    with pytest.raises(RuntimeError, match="before call 3"):  # north replayed, south dies
        shipping.book(oid, warehouse, ports(), SHIP)
    assert status(oid) == "PARTIALLY_SHIPPED"  # a worker dying here leaves this
    outcome = shipping.book(oid, warehouse, ports(), SHIP)
    assert status(oid) == "SHIPPED"
    keys = {r.idempotency_key: (r.warehouse, list(r.items)) for r, _ in warehouse.bookings.values()}
    assert sorted(keys.values()) == [("north", [("A", 2)]), ("south", [("B", 1)])]
    assert len(keys) == 2  # each parcel booked once, under its own key
    # Both parcels are subscribed, the one booked by the failed run included.
    assert sorted(f.task for f in outcome.followups) == [SHIPPING_SUBSCRIBE] * 2
    assert stock_of("A", "north") == (3, 0) and stock_of("B", "south") == (4, 0)
    assert [m for m in movements(oid) if m[0] == "ship"] == [
        ("ship", "A", "north", -2), ("ship", "B", "south", -1),
    ]  # fmt: skip
    assert_stock_consistent()
    assert shipping.book(oid, warehouse, ports(), SHIP).result == "noop"  # nothing left
    assert len(warehouse.bookings) == 2


def test_a_refused_parcel_is_reallocated_in_the_ledger_and_booked_elsewhere(
    two_warehouses, catalog
):
    catalog({"A": 2}, price=1000, warehouse="west")  # the only other home of A
    oid, _ = paid_order([("A", 2), ("B", 1)])
    warehouse = FakeBookingService()
    warehouse.refusing["north"] = "out_of_stock"
    shipping.book(oid, warehouse, ports(), SHIP)
    assert status(oid) == "SHIPPED"
    got = [(w, seq, live, lines) for _, w, seq, live, _, lines in parcels(oid)]
    assert got == [
        ("north", 1, False, [("A", 2)]), ("south", 1, True, [("B", 1)]),
        ("west", 1, True, [("A", 2)]),
    ]  # fmt: skip
    assert [r.warehouse for r, _ in warehouse.bookings.values()] == ["south", "west"]
    assert movements(oid) == [
        ("reserve", "A", "north", 2), ("reserve", "B", "south", 1),
        ("release", "A", "north", -2), ("reserve", "A", "west", 2),
        ("ship", "B", "south", -1), ("ship", "A", "west", -2),
    ]  # fmt: skip
    assert stock_of("A", "north") == (5, 0) and stock_of("A", "west") == (0, 0)
    assert_stock_consistent()


def test_a_refused_parcel_no_warehouse_can_take_needs_attention_naming_its_lines(
    two_warehouses,
):
    oid, _ = paid_order([("A", 2), ("B", 1)])
    assert parcels(oid) == []  # planned by the booking run
    warehouse = FakeBookingService()
    warehouse.refusing["north"] = "warehouse_closed"
    assert shipping.book(oid, warehouse, ports(), SHIP).result == "rejected"
    assert status(oid) == "NEEDS_ATTENTION"
    first = parcels(oid)[0]
    assert reason(oid).startswith(
        f"reallocation_failed: A x2 (parcel {first[0]} (north) refused: warehouse_closed"
    )
    assert ("release", "A", "north", -2) in movements(oid)
    assert stock_of("A", "north") == (5, 0) and stock_of("B", "south") == (5, 1)
    assert warehouse.bookings == {}
    assert_stock_consistent()


def test_any_other_refusal_needs_attention_with_the_code_and_the_parcel(two_warehouses):
    oid, _ = paid_order([("A", 2), ("B", 1)])
    warehouse = FakeBookingService()
    warehouse.reject_next("invalid_request")
    shipping.book(oid, warehouse, ports(), SHIP)
    first = parcels(oid)[0]
    assert (status(oid), reason(oid)) == (
        "NEEDS_ATTENTION",
        f"booking_rejected:invalid_request parcel {first[0]} (north)",
    )
    assert stock_of("A", "north") == (5, 2)  # nothing released: a person decides


def test_every_parcel_is_tracked_and_the_order_completes_when_all_are_delivered(
    two_warehouses,
):
    oid, _ = paid_order([("A", 2), ("B", 1)])
    shipping.book(oid, FakeBookingService(), ports(), SHIP)
    (north, *_), (south, *_) = parcels(oid)
    t = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    apply(north, res(TS.IN_TRANSIT, ev(t, TS.IN_TRANSIT, "0")))
    assert status(oid) == "IN_TRANSIT"
    apply(north, res(TS.DELIVERED, ev(t + timedelta(hours=1), TS.DELIVERED, "3")))
    assert status(oid) == "PARTIALLY_DELIVERED"
    broken = ev(t + timedelta(hours=2), TS.EXCEPTION, "2", "包裹破损")
    apply(south, res(TS.EXCEPTION, broken, raw_state="2"))
    assert (status(oid), reason(oid)) == (
        "NEEDS_ATTENTION",
        f"tracking_exception: parcel {south} (south): 包裹破损",
    )
    apply(south, res(TS.DELIVERED, broken, ev(t + timedelta(hours=3), TS.DELIVERED, "3")))
    assert (status(oid), reason(oid)) == ("DELIVERED", "")


def _book_first_parcel_only(oid: str) -> int:
    """Book the north parcel by hand; the south one is planned, never sent."""
    with unit_of_work() as s:
        call = shipping.prepare_booking(s, oid, now=now(), redrive_s=60)
        assert call is not None
    with unit_of_work() as s:
        shipping.ship_parcel(s, call.shipment_id, Booked("yuantong", "YT0000000042"), now=now(),
                             actor="test", first_poll_s=30)  # fmt: skip
    assert status(oid) == "PARTIALLY_SHIPPED"
    return call.shipment_id


def test_cancelling_a_partly_booked_order_cancels_and_refunds_only_the_unbooked_parcels(
    two_warehouses,
):
    oid, fake = paid_order([("A", 2), ("B", 2)])  # 2000 + 600 captured
    north = _book_first_parcel_only(oid)
    with unit_of_work() as s:
        followups = payments.cancel_order(s, oid, now=now(), actor="test", reason="changed mind")
    assert status(oid) == "SHIPPED"  # it follows the parcel that left
    got = [(pid, w, live) for pid, w, _, live, _, _ in parcels(oid)]
    assert got[0] == (north, "north", True) and got[1][1:] == ("south", False)
    with unit_of_work() as s:
        refunds = [(r.refund_no, r.amount) for r in s.scalars(select(Refund))]
    trade = next(iter(fake.trades))
    assert refunds == [(f"cancel-{trade}-p{got[1][0]}", 600)]  # B's share only
    assert [f.arg for f in followups] == [r for r in _refund_ids()]
    assert stock_of("B", "south") == (5, 0) and stock_of("A", "north") == (3, 0)
    assert ("release", "B", "south", -2) in movements(oid)
    assert_stock_consistent()
    with pytest.raises(ConflictError), unit_of_work() as s:  # SHIPPED: nothing left to cancel
        payments.cancel_order(s, oid, now=now(), actor="test", reason="again")


def _refund_ids() -> list[int]:
    with unit_of_work() as s:
        return list(s.scalars(select(Refund.id).order_by(Refund.id)))


def test_a_partly_booked_order_whose_other_parcel_was_sent_cannot_be_cancelled(two_warehouses):
    oid, _ = paid_order([("A", 2), ("B", 1)])
    _book_first_parcel_only(oid)
    with unit_of_work() as s:  # the south booking is sent: it may be booked at the warehouse
        assert shipping.prepare_booking(s, oid, now=now(), redrive_s=60) is not None
    sent = r"parcel \d+ \(south\) is being booked"
    with pytest.raises(ConflictError, match=sent), unit_of_work() as s:
        payments.cancel_order(s, oid, now=now(), actor="test", reason="too late")
    assert status(oid) == "PARTIALLY_SHIPPED" and stock_of("B", "south") == (5, 1)


def test_a_paid_order_with_parcels_planned_but_never_sent_cancels_them(two_warehouses):
    oid, _ = paid_order([("A", 2), ("B", 1)])
    gate = FakeGate()
    gate.open.add("warehouse")  # planned, the call never leaves
    assert shipping.book(oid, FakeBookingService(), ports(gate), SHIP).result == "circuit_open"
    with unit_of_work() as s:
        payments.cancel_order(s, oid, now=now(), actor="test", reason="changed mind")
    assert status(oid) == "CANCELLED"
    assert [live for _, _, _, live, _, _ in parcels(oid)] == [False, False]
    assert_stock_consistent()


# --- lines no warehouse took: retry, cancel, resolve ------------------------------------------


def _south_refused_after_north_booked(
    code: str = "warehouse_closed",
) -> tuple[str, FakeBookingService, FakePaymentProvider]:
    """A (2 x 1000) booked at north, B (2 x 300) refused at south with ``code`` and nowhere
    else: NEEDS_ATTENTION ``reallocation_failed`` with one parcel on its way."""
    oid, fake = paid_order([("A", 2), ("B", 2)])
    warehouse = FakeBookingService()
    warehouse.refusing["south"] = code
    shipping.book(oid, warehouse, ports(), SHIP)
    assert (status(oid), reason(oid)[:28]) == ("NEEDS_ATTENTION", "reallocation_failed: B x2 (p")
    assert stock_of("B", "south") == (5, 0) and stock_of("A", "north") == (3, 0)
    return oid, warehouse, fake


def operator(oid: str, action: str, note: str = "") -> attention_actions.Done:
    with unit_of_work() as s:
        return attention_actions.act(s, oid, action, now=now(), actor="operator:ops",
                                     address="127.0.0.1", note=note)  # fmt: skip


def state(oid: str) -> tuple[object, ...]:
    """Everything a refused action must leave as it was."""
    with unit_of_work() as s:
        refunds = s.execute(text("SELECT refund_no, amount FROM refunds WHERE order_id = :o "
                                 "ORDER BY id"), {"o": oid}).all()  # fmt: skip
        stock = s.execute(text("SELECT sku, warehouse, on_hand, reserved FROM stock "
                               "ORDER BY sku, warehouse")).all()  # fmt: skip
        reasons = s.scalars(select(Shipment.cancel_reason).where(Shipment.order_id == oid))
        return (status(oid), reason(oid), parcels(oid), movements(oid), refunds, stock,
                sorted(r or "" for r in reasons))  # fmt: skip


def test_retry_reserves_the_lines_no_warehouse_took_again_and_books_them(two_warehouses):
    oid, warehouse, _ = _south_refused_after_north_booked()
    del warehouse.refusing["south"]  # the warehouse opens again
    done = operator(oid, "retry")
    assert status(oid) == "PARTIALLY_SHIPPED" and reason(oid) == ""  # north is on its way
    assert [f.task for f in done.followups] == [SHIPPING_BOOK]
    assert "B x2 at south reserved again" in done.summary
    assert shipping.book(oid, warehouse, ports(), SHIP).result != "noop"
    assert status(oid) == "SHIPPED"
    got = [(w, seq, live, lines) for _, w, seq, live, _, lines in parcels(oid)]
    assert got == [
        ("north", 1, True, [("A", 2)]), ("south", 1, False, [("B", 2)]),
        ("south", 2, True, [("B", 2)]),
    ]  # fmt: skip
    keys = sorted(r.idempotency_key[-8:] for r, _ in warehouse.bookings.values())
    assert keys == ["-north-1", "-south-2"]  # north booked once; south under a new key
    # Reserved again where it was released: the checker's alternation allows it.
    assert [m for m in movements(oid) if m[1] == "B"] == [
        ("reserve", "B", "south", 2), ("release", "B", "south", -2),
        ("reserve", "B", "south", 2), ("ship", "B", "south", -2),
    ]  # fmt: skip
    assert stock_of("B", "south") == (3, 0)
    invariants.check([oid])


def test_retry_with_still_no_stock_is_refused_naming_the_lines_and_changes_nothing(
    two_warehouses,
):
    oid, _, _ = _south_refused_after_north_booked("out_of_stock")
    with unit_of_work() as s:  # the operator counts south's shelf: no B there after all
        stock_admin.adjust(s, "B", "south", -5, reason="counted", actor="operator:ops")
    before = state(oid)
    with pytest.raises(ConflictError, match=r"no warehouse has stock for B x2.*cancel"):
        operator(oid, "retry")
    assert state(oid) == before


def test_cancel_with_a_parcel_booked_refunds_only_the_lines_no_warehouse_took(two_warehouses):
    oid, _, fake = _south_refused_after_north_booked()
    with unit_of_work() as s:
        followups = payments.cancel_order(s, oid, now=now(), actor="cli", reason="no B after all")
    assert (status(oid), reason(oid)) == ("SHIPPED", "")  # it follows the parcel on its way
    with unit_of_work() as s:
        refunds = [(r.refund_no, r.amount) for r in s.scalars(select(Refund))]
    south = parcels(oid)[1][0]
    assert refunds == [(f"cancel-{next(iter(fake.trades))}-p{south}", 600)]  # B's share only
    assert [f.task for f in followups] == [PAYMENTS_REFUND]
    assert stock_of("B", "south") == (5, 0) and stock_of("A", "north") == (3, 0)
    assert [m[0] for m in movements(oid) if m[1] == "B"] == ["reserve", "release"]  # once
    assert_stock_consistent()
    with pytest.raises(ConflictError):  # SHIPPED: nothing left to cancel, nothing refunded twice
        operator(oid, "cancel")


def test_the_cancel_refund_never_exceeds_what_is_left_of_the_capture(two_warehouses):
    oid, _, _ = _south_refused_after_north_booked()
    with unit_of_work() as s:  # 2,600 captured; 2,500 already given back
        payments.refund_for_order(s, oid, amount=2500, refund_no="goodwill", reason="sorry",
                                  actor="ops", now=now())  # fmt: skip
    done = operator(oid, "cancel")
    assert "what had not shipped is cancelled" in done.summary and status(oid) == "SHIPPED"
    with unit_of_work() as s:
        refunds = sorted((r.refund_no[:6], r.amount) for r in s.scalars(select(Refund)))
    assert refunds == [("cancel", 100), ("goodwi", 2500)]  # 600 owed, 100 left


def test_a_flagged_order_with_no_parcel_booked_still_cancels_in_full(two_warehouses):
    oid, _ = paid_order([("A", 2), ("B", 1)])
    warehouse = FakeBookingService()
    warehouse.refusing["north"] = "warehouse_closed"  # refused first, south never booked
    shipping.book(oid, warehouse, ports(), SHIP)
    operator(oid, "cancel")
    assert status(oid) == "CANCELLED"
    with unit_of_work() as s:
        assert [r.amount for r in s.scalars(select(Refund))] == [2300]
    assert stock_of("B", "south") == (5, 0)
    assert_stock_consistent()


def test_resolve_refunds_the_lines_no_warehouse_took_and_ships_the_rest(two_warehouses):
    oid, _ = paid_order([("A", 2), ("B", 1)])
    warehouse = FakeBookingService()
    warehouse.refusing["north"] = "warehouse_closed"  # A has nowhere else to go
    shipping.book(oid, warehouse, ports(), SHIP)
    done = operator(oid, "resolve", note="buyer takes B alone")
    assert (status(oid), reason(oid)) == ("PAID", "")
    assert sorted(f.task for f in done.followups) == [PAYMENTS_REFUND, SHIPPING_BOOK]
    with unit_of_work() as s:
        assert [r.amount for r in s.scalars(select(Refund))] == [2000]  # A's share
    shipping.book(oid, warehouse, ports(), SHIP)
    assert status(oid) == "SHIPPED"
    assert [r.warehouse for r, _ in warehouse.bookings.values()] == ["south"]
    with unit_of_work() as s:  # settled: a later cancel would not refund A again
        reasons = list(s.scalars(select(Shipment.cancel_reason).where(Shipment.order_id == oid)))
    assert reasons == ["refused:warehouse_closed [refunded]", None]
    invariants.check([oid])


def test_the_checker_catches_a_double_reserve_but_not_a_reserve_after_a_release(
    two_warehouses,
):
    oid, warehouse, _ = _south_refused_after_north_booked()
    del warehouse.refusing["south"]
    operator(oid, "retry")  # B reserved again at south, where it was released
    invariants.check([oid])
    with unit_of_work() as s:  # the same units reserved a second time, counters to match
        s.execute(text("INSERT INTO stock_movements (sku, warehouse, kind, delta_reserved, "
                       "order_id) VALUES ('B', 'south', 'reserve', 2, :o)"),
                  {"o": oid})  # fmt: skip
        s.execute(text("UPDATE stock SET reserved = reserved + 2 WHERE sku = 'B' "
                       "AND warehouse = 'south'"))  # fmt: skip
    with pytest.raises(AssertionError, match=r"reserved twice"):
        invariants.check([oid])


def test_each_parcel_change_is_announced_once_naming_the_parcel(two_warehouses, receiver):
    """A parcel change that moves the order is told by the order's event (``tracking`` is that
    parcel); one that leaves the order where it is, by an ``order.parcel_updated`` event. Both
    list every live parcel with its warehouse, lines and latest event."""
    from tests.integration.callbacks_support import register, run_deliveries

    oid, _ = paid_order([("A", 2), ("B", 1)])
    register("web", receiver.url + "/web")
    shipping.book(oid, FakeBookingService(), ports(), SHIP)
    (north, *_), (south, *_) = parcels(oid)
    t = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    apply(north, res(TS.IN_TRANSIT, ev(t, TS.IN_TRANSIT, "0", "left Beijing")))
    apply(south, res(TS.IN_TRANSIT, ev(t, TS.IN_TRANSIT, "0", "left Guangzhou")))
    apply(north, res(TS.DELIVERED, ev(t + timedelta(hours=1), TS.DELIVERED, "3", "signed")))
    apply(south, res(TS.EXCEPTION, ev(t + timedelta(hours=2), TS.EXCEPTION, "2", "包裹破损")))
    apply(south, res(TS.DELIVERED, ev(t + timedelta(hours=3), TS.DELIVERED, "3", "signed")))

    assert run_deliveries() > 0
    got = [r.event for r in receiver.at("/web")]
    told = [
        (e["type"], e["data"]["order"]["status"],
         e["data"]["parcel" if "parcel" in e["data"] else "tracking"]["status"],
         (e["data"].get("parcel") or {}).get("id"))
        for e in got
    ]  # fmt: skip
    status_changed, parcel_updated = "order.status_changed", "order.parcel_updated"
    assert told == [
        (status_changed, "PARTIALLY_SHIPPED", "PENDING", None),
        (status_changed, "SHIPPED", "PENDING", None),
        (status_changed, "IN_TRANSIT", "IN_TRANSIT", None),
        (parcel_updated, "IN_TRANSIT", "IN_TRANSIT", south),  # the order was in transit already
        (status_changed, "PARTIALLY_DELIVERED", "DELIVERED", None),
        (status_changed, "NEEDS_ATTENTION", "EXCEPTION", None),
        (status_changed, "DELIVERED", "DELIVERED", None),
    ]  # fmt: skip
    waybills = {p[0]: p[4] for p in parcels(oid)}
    moved = [waybills[north], waybills[south], waybills[north], None, waybills[north],
             waybills[south], waybills[south]]  # fmt: skip
    assert [e["data"].get("tracking", {}).get("waybill") for e in got] == moved
    assert got[3]["data"]["parcel"]["previous_status"] == "PENDING"
    assert got[3]["data"]["order"]["previous_status"] == "IN_TRANSIT"
    last = got[-1]["data"]["parcels"]
    assert [(p["id"], p["warehouse"], p["lines"], p["status"]) for p in last] == [
        (north, "north", [{"sku": "A", "quantity": 2}], "DELIVERED"),
        (south, "south", [{"sku": "B", "quantity": 1}], "DELIVERED"),
    ]  # fmt: skip
    assert [p["latest"]["description"] for p in last] == ["signed", "signed"]
    assert len({e["id"] for e in got}) == len(got)


def test_a_waybill_reported_by_hand_ships_the_parcel_of_its_warehouse(two_warehouses):
    oid, _ = paid_order([("A", 2), ("B", 1)])

    def report(waybill: str, warehouse: str | None) -> None:
        with unit_of_work() as s:
            shipping.register_waybill(s, oid, "yuantong", waybill, now=now(), actor="test",
                                      first_poll_s=30, warehouse=warehouse)  # fmt: skip

    with pytest.raises(ValidationError) as which:  # two parcels wait: which one is it?
        report("YTNORTH001", None)
    assert which.value.field == "warehouse" and "north, south" in str(which.value)
    assert parcels(oid) == [] and status(oid) == "PAID"  # nothing recorded, not even the plan
    with pytest.raises(ValidationError, match="no parcel at 'west'"):
        report("YTNORTH001", "west")
    report("YTNORTH001", "north")
    assert status(oid) == "PARTIALLY_SHIPPED"
    report("YTNORTH001", "north")  # the same report again changes nothing
    with pytest.raises(ConflictError) as shipped:
        report("YTNORTH002", "north")
    assert shipped.value.field == "warehouse"
    report("YTSOUTH001", None)  # one parcel left: no need to name it
    assert status(oid) == "SHIPPED"
    assert [(w, wb, lines) for _, w, _, _, wb, lines in parcels(oid)] == [
        ("north", "YTNORTH001", [("A", 2)]), ("south", "YTSOUTH001", [("B", 1)]),
    ]  # fmt: skip
    assert stock_of("A", "north") == (3, 0) and stock_of("B", "south") == (4, 0)
    assert_stock_consistent()


def test_the_api_shows_every_parcel_and_asks_which_warehouse_a_waybill_is_for(
    two_warehouses, api_key
):
    from fastapi.testclient import TestClient

    from api.app import create_app

    oid, _ = paid_order([("A", 2), ("B", 1)])
    headers = {"X-API-Key": api_key}
    with TestClient(create_app()) as client:
        url = f"/v1/orders/{oid}/shipments"
        r = client.post(url, json={"carrier": "yuantong", "waybill": "YTNORTH001"},
                        headers=headers)  # fmt: skip
        assert r.status_code == 422, r.text
        assert [d["field"] for d in r.json()["details"]] == ["warehouse"]
        assert client.get(f"/v1/orders/{oid}", headers=headers).json()["parcels"] == []
        r = client.post(url, json={"carrier": "yuantong", "waybill": "YTNORTH001",
                                   "warehouse": "north"}, headers=headers)  # fmt: skip
        assert r.status_code == 201 and r.json()["status"] == "PARTIALLY_SHIPPED", r.text
        view = client.get(f"/v1/orders/{oid}", headers=headers).json()
    assert view["status"] == "PARTIALLY_SHIPPED"
    shown = [(p["warehouse"], p["lines"], p["waybill"], p["booking_key"]) for p in view["parcels"]]
    assert shown == [
        ("north", [{"sku": "A", "quantity": 2}], "YTNORTH001", booking_key(oid, "north", 1)),
        ("south", [{"sku": "B", "quantity": 1}], None, booking_key(oid, "south", 1)),
    ]  # fmt: skip
    assert view["shipment"]["waybill"] == "YTNORTH001"  # the first parcel, for older clients


def test_retry_and_resolve_of_a_tracking_exception_look_at_the_parcel_in_trouble(
    two_warehouses,
):
    oid, _ = paid_order([("A", 2), ("B", 1)])
    shipping.book(oid, FakeBookingService(), ports(), SHIP)
    (north, *_), (south, *_) = parcels(oid)
    t = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    apply(north, res(TS.IN_TRANSIT, ev(t, TS.IN_TRANSIT, "0")))
    apply(south, res(TS.EXCEPTION, ev(t + timedelta(hours=1), TS.EXCEPTION, "2", "破损")))
    assert reason(oid).startswith(f"tracking_exception: parcel {south} (south)")
    with unit_of_work() as s:  # neither is due soon
        s.execute(text("UPDATE shipments SET next_poll_at = now() + interval '1 hour' "
                       "WHERE order_id = :o"), {"o": oid})  # fmt: skip
    done = operator(oid, "retry")
    assert done.detail["shipment_id"] == south  # the parcel in exception, not the first one
    with unit_of_work() as s:
        due = dict(s.execute(text("SELECT id, next_poll_at <= now() FROM shipments "
                                  "WHERE order_id = :o"), {"o": oid}).all())  # fmt: skip
    assert due == {north: False, south: True}
    with unit_of_work() as s:  # the carrier gives up on south: nothing would move it on
        s.execute(text("UPDATE shipments SET tracking_ended_at = now() WHERE id = :s"),
                  {"s": south})  # fmt: skip
    with pytest.raises(ConflictError, match="tracking has ended"):
        operator(oid, "resolve", note="checked with the carrier")
    assert status(oid) == "NEEDS_ATTENTION"  # north still moving does not make it resolvable
