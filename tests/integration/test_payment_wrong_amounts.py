"""A payment of another amount than the order asked, on real PostgreSQL with the fake provider
(which, like the real ones, refuses a refund of more than was paid): refunds are bounded by and
sent against what was captured, and a wrong amount paid on an order that is over goes back in
full and is flagged for a person until acknowledged. Steps as in test_payment_services.py."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from domain.errors import ValidationError
from domain.money import Money
from models import OrderEvent, Payment, Refund
from services import console, payments
from services.followup import Followup
from services.unit_of_work import unit_of_work
from tests.fakes import FakePaymentProvider
from tests.helpers import assert_stock_consistent, stock_of
from tests.integration.test_payment_services import (
    create,
    deliver,
    now,
    refund,
    reserved_order,
    state,
)

ASKED = 2 * 1000  # reserved_order(): two units of P, priced 10.00 CNY by the catalog fixture


def _payment(oid: str) -> Payment:
    with unit_of_work() as s:
        payment = s.scalar(select(Payment).where(Payment.order_id == oid))
        assert payment is not None
        s.expunge(payment)
        return payment


def _refunds(oid: str) -> list[tuple[str, int, str]]:
    with unit_of_work() as s:
        rows = s.scalars(select(Refund).where(Refund.order_id == oid).order_by(Refund.id))
        return [(r.status, r.amount, r.currency) for r in rows]


def _paid_after_cancel(fake: FakePaymentProvider, paid: int) -> tuple[str, str, list[Followup]]:
    """An order cancelled with its trade open, then paid ``paid`` fen: (order id, trade number,
    what the notification asked for)."""
    oid = reserved_order()
    create(fake, oid)
    with unit_of_work() as s:
        payments.cancel_order(s, oid, now=now(), actor="test", reason="changed mind")
    (trade_no,) = fake.trades
    fake.pay(trade_no, Money(paid, "CNY"))
    (note,) = fake.outbox
    return oid, trade_no, deliver(fake, note)


@pytest.mark.parametrize("paid", [1, ASKED + 500], ids=["underpaid", "overpaid"])
def test_a_wrong_amount_paid_after_cancel_goes_back_in_full_and_is_flagged(catalog, paid):
    catalog({"P": 5}, price=1000)
    fake = FakePaymentProvider()
    oid, trade_no, (refund_task,) = _paid_after_cancel(fake, paid)
    assert refund_task.task == "payments.refund"
    refund(fake, int(refund_task.arg))

    assert [(no, r.amount) for no, (_, r) in fake.refunds.items()] == [
        (f"late-{trade_no}", Money(paid, "CNY"))
    ]
    assert _refunds(oid) == [("SUCCEEDED", paid, "CNY")]
    assert state(oid) == ("CANCELLED", "REFUNDED")
    payment = _payment(oid)
    assert (payment.captured_amount, payment.captured_currency) == (paid, "CNY")
    shown = f"{paid // 100}.{paid % 100:02d} CNY"
    assert payment.attention == (
        f"{shown} paid after the order was cancelled (it asked 20.00 CNY); refunded in full"
    )
    with unit_of_work() as s:
        (flagged,) = console.flagged_payments(s)
    assert (flagged["order_id"], flagged["status"]) == (oid, "CANCELLED")
    assert stock_of("P") == (5, 0)
    assert_stock_consistent()


def test_acknowledging_a_flag_clears_it_once_with_a_note_on_the_timeline(catalog):
    catalog({"P": 5}, price=1000)
    oid, _, _ = _paid_after_cancel(FakePaymentProvider(), 1)
    with unit_of_work() as s, pytest.raises(ValidationError, match="note"):
        payments.acknowledge(s, oid, actor="op", note="  ")
    with unit_of_work() as s:
        was = payments.acknowledge(s, oid, actor="op", note="buyer told by phone")
    assert was.startswith("0.01 CNY paid after the order was cancelled")
    with unit_of_work() as s:
        assert console.flagged_payments(s) == []
        event = s.scalars(
            select(OrderEvent).where(
                OrderEvent.order_id == oid, OrderEvent.kind == "attention_acknowledged"
            )
        ).one()
        assert (event.actor, event.detail["note"], event.detail["was"]) == (
            "op", "buyer told by phone", was,
        )  # fmt: skip
    with unit_of_work() as s, pytest.raises(ValidationError, match="no payment waiting"):
        payments.acknowledge(s, oid, actor="op", note="again")


def test_an_underpaid_order_needing_attention_refunds_what_was_paid(catalog):
    """Before, "refund everything left" asked for the order's 20.00 CNY of a 0.01 CNY capture
    and the provider refused it: the buyer's money stayed with the shop."""
    catalog({"P": 5}, price=1000)
    fake = FakePaymentProvider()
    oid = reserved_order()
    create(fake, oid)
    fake.pay(next(iter(fake.trades)), Money(1, "CNY"))
    assert deliver(fake, fake.outbox[0]) == []
    assert state(oid) == ("NEEDS_ATTENTION", "PAID")
    assert _payment(oid).attention is None  # the order itself is flagged, not the payment
    with unit_of_work() as s:
        view = payments.payment_view(s, oid)
        assert view is not None and (view["captured_amount"], view["refundable"]) == (1, 1)
        followup = payments.refund_for_order(
            s, oid, amount=None, refund_no="r-all", reason="underpaid", actor="op", now=now()
        )
    assert followup is not None
    refund(fake, int(followup.arg))
    assert _refunds(oid) == [("SUCCEEDED", 1, "CNY")]
    assert state(oid) == ("NEEDS_ATTENTION", "REFUNDED")
