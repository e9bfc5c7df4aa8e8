"""The dispute service on real PostgreSQL: an order paid through the fake provider, then dispute
notifications applied the way the webhook applies them (:mod:`api.payments`). What the orders
in each status do (moved, or left and listed), deduplication on the event id, and a dispute on a
payment that is not ours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from adapters.payments.base import DisputeEvent, Notification, NotificationKind
from domain.money import Money
from models import Dispute, Order, OrderEvent, Payment
from services.payments.disputes import apply_dispute_notification, count_open, open_disputes
from services.unit_of_work import unit_of_work
from tests.fakes import FakePaymentProvider
from tests.helpers import assert_stock_consistent, stock_of
from tests.integration.test_payment_services import create, deliver, reserved_order

T0 = datetime.now(UTC).replace(microsecond=0)


def paid_order(status: str) -> tuple[str, str]:
    """An order paid through the fake provider, then put in ``status``; returns (order id,
    provider)."""
    fake = FakePaymentProvider()
    oid = reserved_order()
    create(fake, oid)
    (trade_no,) = fake.trades
    fake.pay(trade_no)
    deliver(fake, fake.outbox[0])
    with unit_of_work() as s:
        s.execute(update(Order).where(Order.id == oid).values(status=status))
        payment = s.scalars(select(Payment).where(Payment.order_id == oid)).one()
        payment.provider_ref = f"pi_{oid[:8]}"
        return oid, payment.provider


def note(oid: str, event_id: str, status: str = "needs_response", at_s: int = 0) -> Notification:
    event = DisputeEvent(
        dispute_id=f"dp_{oid[:8]}", provider_ref=f"pi_{oid[:8]}", charge_ref="ch_1",
        amount=Money(2000, "CNY"), reason="fraudulent", status=status,
        evidence_due_by=T0 + timedelta(days=7), has_evidence=False, funds_withdrawn=0,
        funds_reinstated=0, event_at=T0 + timedelta(seconds=at_s),
    )  # fmt: skip
    return Notification(
        NotificationKind.DISPUTE, event_id, None, dispute=event, raw_type="charge.dispute.created"
    )


def apply(provider: str, n: Notification) -> None:
    with unit_of_work() as s:
        assert apply_dispute_notification(s, provider, n, now=T0) == []


def kinds(oid: str) -> list[str]:
    with unit_of_work() as s:
        return list(
            s.scalars(
                select(OrderEvent.kind).where(OrderEvent.order_id == oid).order_by(OrderEvent.id)
            )
        )


def order_of(oid: str) -> tuple[str, str | None]:
    with unit_of_work() as s:
        order = s.get(Order, oid)
        assert order is not None
        return order.status, order.reason


@pytest.mark.parametrize(
    ("status", "expected"),
    [("PAID", "NEEDS_ATTENTION"), ("IN_TRANSIT", "NEEDS_ATTENTION"), ("DELIVERED", "DELIVERED"),
     ("RECEIPT_CONFIRMED", "RECEIPT_CONFIRMED"), ("COMPLETED", "COMPLETED")],
)  # fmt: skip
def test_an_opened_dispute_flags_or_lists_the_order(catalog, status: str, expected: str) -> None:
    catalog({"P": 5})
    oid, provider = paid_order(status)
    stock_before = stock_of("P")
    apply(provider, note(oid, "evt_1"))
    assert order_of(oid) == (expected, "dispute" if expected == "NEEDS_ATTENTION" else None)
    moved = expected == "NEEDS_ATTENTION"
    assert kinds(oid)[-2:] == (["dispute", "transition"] if moved else ["dispute", "attention"])
    with unit_of_work() as s:
        (listed,) = open_disputes(s, now=T0)
        assert (listed["order_id"], listed["order_status"], listed["amount"]) == (
            oid,
            expected,
            2000,
        )
        assert listed["evidence_due_by"] == T0 + timedelta(days=7) and not listed["overdue"]
        assert open_disputes(s, now=T0 + timedelta(days=8))[0]["overdue"]
        assert count_open(s) == 1
    assert stock_of("P") == stock_before
    assert_stock_consistent()


def test_a_repeated_event_is_applied_once_and_a_close_stays(catalog) -> None:
    catalog({"P": 5})
    oid, provider = paid_order("PAID")
    apply(provider, note(oid, "evt_1"))
    apply(provider, note(oid, "evt_1"))
    assert kinds(oid).count("dispute") == 1
    apply(provider, note(oid, "evt_2", status="lost", at_s=5))
    apply(provider, note(oid, "evt_3", status="under_review", at_s=9))
    with unit_of_work() as s:
        row = s.scalars(select(Dispute)).one()
        assert (row.status, row.outcome, row.closed_at) == ("lost", "lost", T0)
        assert count_open(s) == 0 and open_disputes(s, now=T0) == []
    assert kinds(oid).count("dispute") == 3
    assert order_of(oid) == ("NEEDS_ATTENTION", "dispute")  # moved once, never back
    with unit_of_work() as s:
        moves = s.scalar(
            select(func.count()).where(
                OrderEvent.order_id == oid, OrderEvent.to_status == "NEEDS_ATTENTION"
            )
        )
    assert moves == 1


def test_a_dispute_on_a_payment_not_ours_is_ignored(catalog) -> None:
    catalog({"P": 5})
    oid, provider = paid_order("PAID")
    stranger = note("ffffffff-0000", "evt_9")
    apply(provider, stranger)
    with unit_of_work() as s:
        assert s.scalars(select(Dispute)).all() == []
    assert order_of(oid) == ("PAID", None)
