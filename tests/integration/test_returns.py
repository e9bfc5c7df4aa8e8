"""Returns on real PostgreSQL (services.returns, services.return_receipt), the payment at the
fake provider: request, decision, parcel, receipt with dispositions, stock and line refunds."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from domain.errors import ConflictError, NotFound, ValidationError
from models import Order, OrderEvent, Product, Refund, Return
from services import payments, return_receipt, returns
from services.queries import stock_drift
from services.receipt import confirm_receipt, sweep_receipts
from services.returns import ReturnPolicy
from services.unit_of_work import unit_of_work
from tests.helpers import stock_of
from tests.integration.returns_support import (
    THREE,
    delivered_order,
    ledger_of,
    now,
    ports,
    refunds_of,
)

POLICY = ReturnPolicy(window_s=7 * 86_400, ship_back_s=3 * 86_400)


def ask(oid, lines, kind="RETURN_AND_REFUND", policy=POLICY, at=None):
    with unit_of_work() as s:
        return returns.request_return(s, oid, kind=kind, lines=lines, reason="does not fit",
                                      actor="api:web", policy=policy, now=at or now())  # fmt: skip


def decide(rid, approve=True, at=None):
    with unit_of_work() as s:
        return returns.decide(s, rid, approve=approve, actor="cli", note="ok", policy=POLICY,
                              now=at or now())  # fmt: skip


def receive(rid, found, warehouse=None):
    with unit_of_work() as s:
        return return_receipt.receive(
            s, rid, found, warehouse=warehouse, default_warehouse="main", actor="api:wh", now=now()
        )


def carry_out(followups, fake, expect="SUCCEEDED"):
    """Run the refund tasks as a worker would; ``expect`` what each answers."""
    for f in followups:
        assert payments.refund(f.arg, lambda _: fake, ports()).result == expect


def a_return(rid) -> Return:
    with unit_of_work() as s:
        ret = s.get_one(Return, rid)
        s.expunge(ret)
        return ret


def test_one_line_of_three_returned_refunds_exactly_its_share_and_restocks(shop):
    oid = delivered_order(shop, THREE)
    with unit_of_work() as s:
        confirm_receipt(s, oid, actor="api:web")
    before = stock_of("B")
    asked = ask(oid, [("B", 1)])
    assert asked.status == "REQUESTED" and asked.followups == []  # no policy: an operator
    assert decide(asked.return_id).status == "AWAITING_PARCEL"
    with unit_of_work() as s:
        returns.register_parcel(s, asked.return_id, carrier="yuantong", waybill="YTR2345678",
                                actor="api:web", now=now(), first_poll_s=60)  # fmt: skip
    status, followups = receive(asked.return_id, [("B", (1, 0, 0))])
    assert status == "REFUNDED"
    assert refunds_of(oid) == [(f"return-{asked.return_id}", 3000, "REQUESTED")]
    carry_out(followups, shop)
    carry_out(followups, shop, "noop")  # a redelivered task: refunded already, not sent again
    assert refunds_of(oid) == [(f"return-{asked.return_id}", 3000, "SUCCEEDED")]
    assert [r.amount.amount for _t, r in shop.refunds.values()] == [3000]
    assert stock_of("B")[0] == before[0] + 1  # back on hand where it shipped from
    assert ledger_of(oid) == [("return_restock", "B", 1)]
    with unit_of_work() as s:
        assert stock_drift(s) == []
    ret = a_return(asked.return_id)
    assert (ret.refund_amount, [line.refund_amount for line in ret.lines]) == (3000, [3000])


def test_a_discount_is_split_over_the_lines_and_parts_add_up_to_what_was_charged(shop):
    oid = delivered_order(shop, THREE, discount=1300)  # 6500 listed, 5200 charged
    with unit_of_work() as s:  # the discount split over the lines, stored on them
        stored = [(ln.sku, ln.charged_amount) for ln in s.get_one(Order, oid).lines]
    assert stored == [("A", 1600), ("B", 2400), ("C", 1200)]
    paid = []
    for lines in ([("A", 1)], [("A", 1), ("C", 1)], [("B", 1), ("C", 2)]):
        asked = ask(oid, lines, kind="REFUND_ONLY",
                    policy=ReturnPolicy(auto_approve_max=10_000))  # fmt: skip
        assert asked.status == "REFUNDED"
        carry_out(asked.followups, shop)
        paid.append(a_return(asked.return_id).refund_amount)
    # Shares: A 2000*0.8 = 1600, B 3000*0.8 = 2400, C 1500*0.8 = 1200; together 5200.
    assert paid == [800, 800 + 400, 2400 + 800]
    assert sum(paid) == 5200 and [a for _n, a, _s in refunds_of(oid)] == paid
    with pytest.raises(ValidationError) as nothing_left:
        ask(oid, [("A", 1)], kind="REFUND_ONLY")
    assert nothing_left.value.field == "lines.0.quantity"


def test_the_refund_is_cut_to_what_is_left_after_other_refunds(shop):
    oid = delivered_order(shop, THREE)
    with unit_of_work() as s:
        payments.refund_for_order(s, oid, amount=5000, refund_no="goodwill-1", reason="sorry",
                                  actor="cli", now=now())  # fmt: skip
    asked = ask(oid, [("B", 1)], kind="REFUND_ONLY", policy=ReturnPolicy(auto_approve_max=10_000))
    assert a_return(asked.return_id).refund_amount == 1500  # 6500 captured - 5000 refunded
    assert sum(a for _n, a, _s in refunds_of(oid)) == 6500


def test_two_concurrent_returns_on_one_line_never_exceed_its_quantity(shop):
    oid = delivered_order(shop, [("C", 3)])
    outcomes: list[object] = []

    def one() -> None:
        try:
            outcomes.append(ask(oid, [("C", 2)]).status)
        except ValidationError as exc:
            outcomes.append(exc.field)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(map(str, outcomes)) == ["REQUESTED", "lines.0.quantity"]
    with unit_of_work() as s:
        assert len(s.scalars(select(Return).where(Return.order_id == oid)).all()) == 1


def test_a_rejected_or_withdrawn_return_gives_its_units_back(shop):
    oid = delivered_order(shop, [("C", 3)])
    rid = ask(oid, [("C", 3)]).return_id
    assert decide(rid, approve=False).status == "REJECTED"
    assert decide(rid, approve=False).status == "REJECTED"  # the same decision again
    with pytest.raises(ConflictError) as flip:
        decide(rid, approve=True)
    assert flip.value.field == "status"
    assert ask(oid, [("C", 3)]).status == "REQUESTED"


@pytest.mark.parametrize(
    ("lines", "kind", "field"),
    [
        ([("A", 3)], "RETURN_AND_REFUND", "lines.0.quantity"),  # above what was delivered
        ([("Z", 1)], "RETURN_AND_REFUND", "lines.0.sku"),  # not a line of the order
        ([("A", 1), ("A", 1)], "RETURN_AND_REFUND", "lines.1.sku"),  # named twice
        ([], "RETURN_AND_REFUND", "lines"),
        ([("A", 1)], "SWAP", "kind"),
    ],
)
def test_bad_requests_name_the_field_and_change_nothing(shop, lines, kind, field):
    oid = delivered_order(shop, THREE)
    with pytest.raises(ValidationError) as bad:
        ask(oid, lines, kind=kind)
    assert bad.value.field == field
    with unit_of_work() as s:
        assert s.scalars(select(Return).where(Return.order_id == oid)).all() == []


def test_a_return_after_the_window_or_before_delivery_is_refused(shop):
    oid = delivered_order(shop, THREE)
    with unit_of_work() as s:
        confirm_receipt(s, oid, actor="api:web")
    with unit_of_work() as s:
        received = s.get_one(Order, oid).receipt_confirmed_at
    late = received + timedelta(seconds=POLICY.window_s)
    with pytest.raises(ConflictError) as closed:
        ask(oid, [("A", 1)], at=late)
    assert closed.value.field == "status" and "window" in str(closed.value)
    with unit_of_work() as s:
        s.execute(update(Order).where(Order.id == oid).values(status="IN_TRANSIT"))
    with pytest.raises(ConflictError) as early:
        ask(oid, [("A", 1)])
    assert early.value.field == "status" and "delivered" in str(early.value)
    assert ask(oid, [("A", 1)], kind="REFUND_ONLY").status == "REQUESTED"  # lost on the way
    with pytest.raises(NotFound):
        decide(999_999)


def test_auto_approval_needs_a_returnable_product_and_an_amount_under_the_threshold(shop):
    oid = delivered_order(shop, THREE)
    policy = ReturnPolicy(auto_approve_max=1000)
    assert ask(oid, [("C", 1)], policy=policy).status == "AWAITING_PARCEL"  # 500 <= 1000
    assert ask(oid, [("B", 1)], policy=policy).status == "REQUESTED"  # 3000 > 1000
    with unit_of_work() as s:
        s.execute(update(Product).where(Product.sku == "A").values(returnable=False))
    assert ask(oid, [("A", 1)], policy=policy).status == "REQUESTED"  # not returnable


def test_damaged_units_are_written_off_and_refunded_lost_ones_are_not(shop):
    oid = delivered_order(shop, THREE)
    before = {sku: stock_of(sku) for sku in "AC"}
    rid = ask(oid, [("A", 2), ("C", 3)], policy=ReturnPolicy(auto_approve_max=10_000)).return_id
    status, followups = receive(rid, [("C", (1, 1, 1)), ("A", (0, 2, 0))])
    assert status == "REFUNDED"
    assert a_return(rid).refund_amount == 2000 + 2 * 500  # A's two damaged, C's restock + damaged
    assert ledger_of(oid) == [
        ("write_off", "A", 0),
        ("return_restock", "C", 1),
        ("write_off", "C", 0),
    ]
    assert stock_of("A") == before["A"] and stock_of("C")[0] == before["C"][0] + 1
    with unit_of_work() as s:
        assert stock_drift(s) == []
    carry_out(followups, shop)


def test_a_return_whose_every_unit_was_lost_closes_with_nothing_refunded(shop):
    oid = delivered_order(shop, THREE)
    rid = ask(oid, [("B", 1)], policy=ReturnPolicy(auto_approve_max=10_000)).return_id
    assert receive(rid, [("B", (0, 0, 1))]) == ("CLOSED", [])
    assert receive(rid, [("B", (0, 0, 1))]) == ("CLOSED", [])  # the same receipt again
    assert refunds_of(oid) == [] and ledger_of(oid) == []


@pytest.mark.parametrize(
    ("found", "field"),
    [
        ([("B", (2, 0, 0))], "lines.0.restock"),  # more than was returned
        ([("A", (1, 0, 0))], "lines.0.sku"),  # not a line of this return
        ([("B", (1, 0, 0)), ("B", (1, 0, 0))], "lines.1.sku"),
    ],
)
def test_a_receipt_that_does_not_add_up_is_refused_and_changes_nothing(shop, found, field):
    oid = delivered_order(shop, THREE)
    rid = ask(oid, [("B", 1)], policy=ReturnPolicy(auto_approve_max=10_000)).return_id
    with pytest.raises(ValidationError) as bad:
        receive(rid, found)
    assert bad.value.field == field
    assert a_return(rid).status == "AWAITING_PARCEL" and ledger_of(oid) == []


def test_a_parcel_not_shipped_back_in_time_closes_and_one_shipped_does_not(shop):
    oid = delivered_order(shop, THREE)
    policy = ReturnPolicy(ship_back_s=3600, auto_approve_max=10_000)
    idle, sent = (ask(oid, [(sku, 1)], policy=policy).return_id for sku in "AC")
    with unit_of_work() as s:
        returns.register_parcel(s, sent, carrier="zto", waybill="ZT00000001", actor="api:web",
                                now=now(), first_poll_s=60)  # fmt: skip
    with unit_of_work() as s:
        assert returns.sweep_overdue(s, now=now() + timedelta(seconds=3599), limit=10) == []
        assert returns.sweep_overdue(s, now=now() + timedelta(seconds=3601), limit=10) == [idle]
    assert (a_return(idle).status, a_return(sent).status) == ("CLOSED", "AWAITING_PARCEL")
    with pytest.raises(ConflictError) as other, unit_of_work() as s:
        returns.register_parcel(s, sent, carrier="zto", waybill="ZT00000002", actor="x",
                                now=now(), first_poll_s=60)  # fmt: skip
    assert other.value.field == "waybill"
    assert ask(oid, [("A", 2)], policy=policy).status == "AWAITING_PARCEL"  # A's unit is free


def test_an_open_return_holds_the_order_back_from_completing(shop):
    oid = delivered_order(shop, THREE)
    rid = ask(oid, [("B", 1)]).return_id
    with unit_of_work() as s:
        confirm_receipt(s, oid, actor="api:web")
    later = now() + timedelta(days=30)
    with unit_of_work() as s:
        assert sweep_receipts(s, auto_receive_s=0, window_s=0, limit=10, now=later).completed == []
    decide(rid, approve=False)
    with unit_of_work() as s:
        done = sweep_receipts(s, auto_receive_s=0, window_s=0, limit=10, now=later).completed
    assert done == [oid]


def test_the_refund_number_is_stored_with_the_return_before_any_provider_call(shop):
    """A crash between the commit and the provider call: the task runs again (or the poll job
    re-drives the REQUESTED refund) with the stored number, so the provider refunds once."""
    oid = delivered_order(shop, THREE)
    asked = ask(oid, [("A", 1)], kind="REFUND_ONLY", policy=ReturnPolicy(auto_approve_max=10_000))
    with unit_of_work() as s:
        refund = s.scalars(select(Refund).where(Refund.order_id == oid)).one()
        assert (refund.refund_no, refund.status) == (f"return-{asked.return_id}", "REQUESTED")
    shop.fail_next()  # the first attempt dies at the provider (as a crash would)
    with pytest.raises(Exception):
        payments.refund(asked.followups[0].arg, lambda _: shop, ports())
    carry_out(asked.followups, shop)
    carry_out(asked.followups, shop, "noop")
    assert [r.amount.amount for _t, r in shop.refunds.values()] == [1000]


def test_the_reliability_invariants_hold_after_returns_and_catch_a_broken_one(shop):
    from sqlalchemy import insert

    from models import StockMovement
    from tests.reliability.invariants import check

    oid = delivered_order(shop, THREE)
    rid = ask(oid, [("B", 1), ("C", 2)], policy=ReturnPolicy(auto_approve_max=10_000)).return_id
    receive(rid, [("B", (1, 0, 0)), ("C", (0, 1, 1))])
    assert check([oid])["lost"] == 0
    with unit_of_work() as s:  # a restock the return never recorded
        s.execute(insert(StockMovement).values(sku="A", warehouse="main", kind="return_restock",
                                               delta_on_hand=1, order_id=oid))  # fmt: skip
    with pytest.raises(AssertionError) as broken:
        check([oid])
    assert "returned units differ from the ledger" in str(broken.value)


def test_an_exchange_reserves_and_books_a_replacement_the_order_stays_delivered(shop):
    from models import Shipment, ShipmentLine
    from services import shipping
    from services.shipping import ShippingConfig
    from tests.fakes.logistics import FakeBookingService

    oid = delivered_order(shop, THREE)
    before = stock_of("C")
    rid = ask(oid, [("C", 2)], kind="EXCHANGE").return_id
    decide(rid)
    status, followups = receive(rid, [("C", (1, 1, 0))])  # one back on the shelf, one broken
    assert status == "RESHIPPED" and [f.task for f in followups] == ["shipping.book"]
    assert refunds_of(oid) == []
    # The restocked unit is back on hand, and two units are held for the replacement.
    assert stock_of("C") == (before[0] + 1, before[1] + 2)
    warehouse = FakeBookingService(carrier="zto")  # its own waybill numbers
    for _ in range(2):  # a redelivered task books nothing twice
        shipping.book(oid, warehouse, ports(), ShippingConfig(first_poll_s=3600))
    assert len(warehouse.bookings) == 1  # the replacement, once
    with unit_of_work() as s:
        replacement = s.scalars(select(Shipment).where(Shipment.order_id == oid)
                                .order_by(Shipment.id.desc())).first()  # fmt: skip
        assert replacement is not None and replacement.waybill is not None
        lines = s.execute(select(ShipmentLine.sku, ShipmentLine.quantity)
                          .where(ShipmentLine.shipment_id == replacement.id)).all()  # fmt: skip
        assert [tuple(x) for x in lines] == [("C", 2)]
        assert s.get_one(Order, oid).status == "DELIVERED"
    assert stock_of("C") == (before[0] + 1 - 2, before[1])  # the two units left
    with unit_of_work() as s:
        assert stock_drift(s) == []


def test_an_exchange_with_no_stock_left_is_refunded_instead(shop):
    oid = delivered_order(shop, [("C", 3)])
    with unit_of_work() as s:  # the rest of C is sold meanwhile
        from models import Stock

        s.execute(update(Stock).where(Stock.sku == "C").values(on_hand=Stock.reserved))
        from sqlalchemy import insert

        from models import StockMovement

        s.execute(insert(StockMovement).values(sku="C", warehouse="main", kind="adjust",
                                               delta_on_hand=-7, actor="test"))  # fmt: skip
    rid = ask(oid, [("C", 2)], kind="EXCHANGE").return_id
    decide(rid)
    status, followups = receive(rid, [("C", (0, 2, 0))])  # both broken: nothing to send back
    assert status == "REFUNDED" and [f.task for f in followups] == ["payments.refund"]
    assert a_return(rid).refund_amount == 1000
    with unit_of_work() as s:
        assert stock_drift(s) == []


def test_a_lost_replacement_booking_is_driven_again_by_the_sweep(shop):
    from services.exchange import redrive_replacements

    oid = delivered_order(shop, THREE)
    rid = ask(oid, [("A", 1)], kind="EXCHANGE").return_id
    decide(rid)
    receive(rid, [("A", (1, 0, 0))])  # its shipping.book message is then lost
    with unit_of_work() as s:
        assert redrive_replacements(s, now=now(), redrive_s=30, limit=10) == []  # not yet due
    with unit_of_work() as s:
        again = redrive_replacements(s, now=now() + timedelta(seconds=60), redrive_s=30, limit=10)
    assert [(f.task, f.arg) for f in again] == [("shipping.book", oid)]


def test_the_return_parcel_is_tracked_back_and_its_arrival_receives_the_return(shop):
    from adapters.logistics.base import TrackingEvent, TrackingResult
    from domain.tracking import ShipmentStatus as TS
    from models import Shipment
    from services import tracking
    from services.parcel_views import parcels_view

    oid = delivered_order(shop, THREE)
    with unit_of_work() as s:
        confirm_receipt(s, oid, actor="api:web")
    rid = ask(oid, [("B", 1)], policy=ReturnPolicy(auto_approve_max=10_000)).return_id
    with unit_of_work() as s:
        out = returns.register_parcel(s, rid, carrier="zto", waybill="ZTR0000001", actor="api:web",
                                      now=now(), first_poll_s=60)  # fmt: skip
    assert [f.task for f in out.followups] == ["shipping.subscribe"]
    with unit_of_work() as s:
        parcel = s.scalars(select(Shipment).where(Shipment.return_id == rid)).one()
        sid, direction = parcel.id, parcel.direction
        assert parcel.next_poll_at is not None  # polled like any parcel, until delivered
        assert [p["id"] for p in parcels_view(s, oid)] != [] and sid not in [
            p["id"] for p in parcels_view(s, oid)
        ]  # never one of the order's parcels
    assert direction == "RETURN"
    t0 = now() - timedelta(hours=5)

    def push(status, *events, raw="0"):
        result = TrackingResult("zto", "ZTR0000001", status, raw,
                                [TrackingEvent(t0 + timedelta(hours=h), what, "Hangzhou", st, c)
                                 for h, st, c, what in events])  # fmt: skip
        with unit_of_work() as s:
            tracking.apply_result(s, sid, result, now=now(), source="push")

    moving = (1, TS.IN_TRANSIT, "0", "collected")
    arrived = (3, TS.DELIVERED, "3", "signed at the warehouse")
    push(TS.IN_TRANSIT, moving)
    assert a_return(rid).status == "AWAITING_PARCEL"
    push(TS.DELIVERED, moving, arrived, raw="3")
    push(TS.DELIVERED, moving, arrived, raw="3")  # a duplicate push
    push(TS.IN_TRANSIT, moving)  # a late, out-of-order one
    ret = a_return(rid)
    assert ret.status == "RECEIVED" and ret.received_at is not None
    with unit_of_work() as s:
        assert s.get_one(Order, oid).status == "RECEIPT_CONFIRMED"  # the order did not move
        moves = s.scalars(select(OrderEvent.to_status).where(
            OrderEvent.order_id == oid, OrderEvent.kind == "return",
            OrderEvent.to_status == "RECEIVED")).all()  # fmt: skip
    assert moves == ["RECEIVED"]  # once, whatever the pushes
    status, followups = receive(rid, [("B", (1, 0, 0))])  # the warehouse inspects it
    assert status == "REFUNDED" and a_return(rid).refund_amount == 3000
    carry_out(followups, shop)


def test_a_return_parcel_in_exception_does_not_flag_the_order(shop):
    from adapters.logistics.base import TrackingEvent, TrackingResult
    from domain.tracking import ShipmentStatus as TS
    from models import Shipment
    from services import tracking

    oid = delivered_order(shop, THREE)
    rid = ask(oid, [("A", 1)], policy=ReturnPolicy(auto_approve_max=10_000)).return_id
    with unit_of_work() as s:
        returns.register_parcel(s, rid, carrier="zto", waybill="ZTR0000002", actor="api:web",
                                now=now(), first_poll_s=60)  # fmt: skip
    with unit_of_work() as s:
        sid = s.scalars(select(Shipment.id).where(Shipment.return_id == rid)).one()
    lost = TrackingEvent(now(), "parcel damaged in transit", "Hangzhou", TS.EXCEPTION, "2")
    with unit_of_work() as s:
        tracking.apply_result(s, sid, TrackingResult("zto", "ZTR0000002", TS.EXCEPTION, "2",
                                                     [lost]), now=now(), source="push")  # fmt: skip
    with unit_of_work() as s:
        order = s.get_one(Order, oid)
        assert (order.status, order.reason) == ("DELIVERED", None)
    assert a_return(rid).status == "AWAITING_PARCEL"  # the warehouse may still receive it


def test_a_refund_only_before_shipping_releases_its_units_and_the_rest_ships(shop):
    from services import shipping
    from services.shipping import ShippingConfig
    from tests.fakes.logistics import FakeBookingService
    from tests.integration.returns_support import paid_order
    from tests.reliability.invariants import check

    oid = paid_order(shop, THREE)
    before = stock_of("A")
    asked = ask(oid, [("A", 1)], kind="REFUND_ONLY", policy=ReturnPolicy(auto_approve_max=10_000))
    assert asked.status == "REFUNDED" and a_return(asked.return_id).refund_amount == 1000
    assert stock_of("A") == (before[0], before[1] - 1)  # one unit no longer held for it
    assert ledger_of(oid) == []  # no stock came back: it never left
    warehouse = FakeBookingService()
    shipping.book(oid, warehouse, ports(), ShippingConfig(first_poll_s=3600))
    ((request, _booked),) = warehouse.bookings.values()
    assert dict(request.items)["A"] == 1  # the parcel carries what is left
    assert stock_of("A") == (before[0] - 1, before[1] - 2)
    with unit_of_work() as s:
        assert stock_drift(s) == []
    assert check([oid])["stock_moved_twice"] == 0  # release_part then ship: one reservation
    # After delivery only the unit that shipped may be returned.
    with pytest.raises(ValidationError) as over:
        ask(oid, [("A", 2)], kind="REFUND_ONLY")
    assert over.value.field == "lines.0.quantity"


def test_planned_parcels_lose_the_units_and_a_sent_booking_is_too_late(shop):
    from services.parcel_planning import plan_order
    from services.parcels import live_parcels, parcel_lines
    from tests.integration.returns_support import paid_order

    oid = paid_order(shop, THREE)
    with unit_of_work() as s:  # planned but not sent (e.g. waiting for a manual waybill)
        plan_order(s, s.get_one(Order, oid))
    policy = ReturnPolicy(auto_approve_max=10_000)
    ask(oid, [("B", 1)], kind="REFUND_ONLY", policy=policy)  # B's only unit: its line goes
    with unit_of_work() as s:
        (parcel,) = live_parcels(s, oid)
        assert parcel_lines(s, parcel.id) == [("A", 2), ("C", 3)]
        parcel.booking_sent_at = now()  # the booking call may have reached the warehouse
    with pytest.raises(ConflictError) as late:
        ask(oid, [("C", 1)], kind="REFUND_ONLY", policy=policy)
    assert late.value.field == "status" and "being shipped" in str(late.value)


def test_a_refund_only_of_every_unit_before_shipping_is_a_cancel(shop):
    from tests.integration.returns_support import paid_order

    oid = paid_order(shop, [("C", 2)])
    with pytest.raises(ConflictError) as whole:
        ask(oid, [("C", 2)], kind="REFUND_ONLY", policy=ReturnPolicy(auto_approve_max=10_000))
    assert "cancel" in str(whole.value)
    with unit_of_work() as s:  # nothing stored, nothing released
        assert s.scalars(select(Return).where(Return.order_id == oid)).all() == []
    assert refunds_of(oid) == []
