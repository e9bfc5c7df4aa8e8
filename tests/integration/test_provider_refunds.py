"""Refunds made at the provider (:mod:`services.payments.provider_refunds`) on real PostgreSQL,
driven by the fake provider: each test plays the webhook step (verify, parse, apply once) and,
where the notification asks for one, the ``payments.lookup_refunds`` task's step, exactly in the
order a provider's retries and reorderings could bring them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from domain.errors import ValidationError
from domain.money import Money
from models import Order, OrderEvent, Payment, Refund
from services import payments
from services.followup import Followup
from services.payments import provider_refunds
from services.unit_of_work import unit_of_work
from tests.fakes import FakePaymentProvider
from tests.helpers import assert_stock_consistent, stock_of
from tests.integration.test_payment_services import create, ports, reserved_order


def now() -> datetime:
    return datetime.now(UTC)


def deliver(fake: FakePaymentProvider, body: bytes) -> list[Followup]:
    note = fake.parse_notification({}, body)
    with unit_of_work() as s:
        return payments.apply_notification(s, "alipay", note, now=now())


def paid_order(fake: FakePaymentProvider) -> tuple[str, str]:
    oid = reserved_order()
    create(fake, oid)
    (trade_no,) = fake.trades
    fake.pay(trade_no)
    deliver(fake, fake.outbox[-1])
    return oid, trade_no


def money(oid: str) -> tuple[str, str, int, list[tuple[str, str | None, int, str]]]:
    """(order status, payment status, refunded, [(refund status, actor, amount, refund_no)])."""
    with unit_of_work() as s:
        order = s.get_one(Order, oid)
        payment = s.scalars(select(Payment).where(Payment.order_id == oid)).one()
        rows = s.scalars(select(Refund).where(Refund.order_id == oid).order_by(Refund.id)).all()
        refunds = [(r.status, r.actor, r.amount, r.refund_no) for r in rows]
        return order.status, payment.status, payment.refunded_amount, refunds


def provider_timeline(oid: str) -> list[tuple[str, str | None]]:
    with unit_of_work() as s:
        events = s.scalars(
            select(OrderEvent)
            .where(OrderEvent.order_id == oid, OrderEvent.actor == "provider")
            .order_by(OrderEvent.id)
        ).all()
        return [(e.kind, e.to_status) for e in events]


def test_a_dashboard_refund_is_recorded_once_and_counted_against_the_capture(catalog):
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid, trade_no = paid_order(fake)
    total = fake.trades[trade_no].request.amount.amount
    ref = fake.dashboard_refund(trade_no, 300)
    body = fake.outbox[-1]
    assert deliver(fake, body) == [] and deliver(fake, body) == []  # a duplicate delivery
    number = provider_refunds.provider_refund_no(_payment_id(oid), ref)
    assert money(oid) == (
        "PAID",
        "PARTIALLY_REFUNDED",
        300,
        [("SUCCEEDED", "provider", 300, number)],
    )
    assert provider_timeline(oid) == [("refund", "SUCCEEDED")]
    # What is left to refund is the capture less the provider's refund.
    with pytest.raises(ValidationError, match="amount"), unit_of_work() as s:
        payments.refund_for_order(s, oid, amount=total - 299, refund_no="ops-1", reason="x",
                                  actor="test", now=now())  # fmt: skip
    assert stock_of("P") == (5, 2)  # nothing moved


def test_a_full_dashboard_refund_of_an_unshipped_order_needs_a_person(catalog):
    """Not cancelled, not shipped: NEEDS_ATTENTION (reason provider_refund), stock still held."""
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid, trade_no = paid_order(fake)
    total = fake.trades[trade_no].request.amount.amount
    fake.dashboard_refund(trade_no)
    deliver(fake, fake.outbox[-1])
    status, payment_status, refunded, [(row_status, actor, amount, _)] = money(oid)
    assert (status, payment_status, refunded) == ("NEEDS_ATTENTION", "REFUNDED", total)
    assert (row_status, actor, amount) == ("SUCCEEDED", "provider", total)
    with unit_of_work() as s:
        order = s.get_one(Order, oid)
        assert order.reason == "provider_refund" and order.stage_deadline is None
    assert stock_of("P") == (5, 2)
    # An operator who decides not to ship cancels: the stock goes back, nothing more is refunded.
    with unit_of_work() as s:
        assert payments.cancel_order(s, oid, now=now(), actor="ops", reason="refunded") == []
    assert money(oid)[:3] == ("CANCELLED", "REFUNDED", total) and len(money(oid)[3]) == 1
    assert stock_of("P") == (5, 0)
    assert_stock_consistent()


def test_a_pending_refund_found_by_the_providers_reference_moves_forward_only(catalog):
    """A dashboard refund names only the provider's payment reference (no out_trade_no). It is
    pending, then succeeds; the stale pending notification arriving last changes nothing."""
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid, trade_no = paid_order(fake)
    ref = fake.dashboard_refund(trade_no, 400, pending=True, anonymous=True)
    pending = fake.outbox[-1]
    deliver(fake, pending)
    assert money(oid)[1:3] == ("PAID", 0)  # recorded, not counted: not succeeded yet
    fake.settle_refund(ref)
    deliver(fake, fake.outbox[-1])
    deliver(fake, pending)  # reordered: a pending state after success does not move it back
    number = provider_refunds.provider_refund_no(_payment_id(oid), ref)
    assert money(oid) == (
        "PAID",
        "PARTIALLY_REFUNDED",
        400,
        [("SUCCEEDED", "provider", 400, number)],
    )
    assert provider_timeline(oid) == [("refund", "PENDING"), ("refund", "SUCCEEDED")]


def test_a_notification_without_the_refund_asks_for_a_lookup_that_records_it_once(catalog):
    """Stripe's charge.refunded today: refunds happened, which is not said. The webhook enqueues
    a look-up; the look-up (run twice) records the provider's refund once and leaves ours be."""
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid, trade_no = paid_order(fake)
    with unit_of_work() as s:
        ours = payments.refund_for_order(s, oid, amount=100, refund_no="ops-1", reason="asked",
                                         actor="test", now=now())  # fmt: skip
    assert ours is not None
    assert payments.refund(int(ours.arg), lambda name: fake, ports()).result == "SUCCEEDED"
    ref = fake.dashboard_refund(trade_no, 250, unlisted=True)
    (lookup,) = deliver(fake, fake.outbox[-1])
    assert lookup == Followup("payments.lookup_refunds", f"{_payment_id(oid)}:")
    assert money(oid)[2] == 100  # nothing recorded from a notification that names no refund
    for _ in range(2):
        provider_refunds.lookup_refunds(str(lookup.arg), lambda name: fake, ports())
    number = provider_refunds.provider_refund_no(_payment_id(oid), ref)
    assert money(oid) == ("PAID", "PARTIALLY_REFUNDED", 350, [
        ("SUCCEEDED", "test", 100, "ops-1"), ("SUCCEEDED", "provider", 250, number)])  # fmt: skip


def test_a_refund_named_by_a_number_we_never_issued_is_looked_up_by_it(catalog):
    """Alipay's notification names the refund by its own number (``out_biz_no``) but gives only
    the trade's running total: the look-up asks for that one refund and records its amount."""
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid, trade_no = paid_order(fake)
    key = fake.dashboard_refund(trade_no, 120)
    _, made = fake.refunds.pop(key)
    fake.refunds["HZ-1"] = (trade_no, replace(made, refund_no="HZ-1"))
    running_total_only = replace(made, refund_no="HZ-1", amount=None, provider_refund_ref=None)
    note = replace(fake.parse_notification({}, fake.outbox[-1]), refund=running_total_only)
    with unit_of_work() as s:
        (lookup,) = payments.apply_notification(s, "alipay", note, now=now())
    assert lookup.arg == f"{_payment_id(oid)}:HZ-1" and money(oid)[3] == []
    provider_refunds.lookup_refunds(str(lookup.arg), lambda name: fake, ports())
    number = provider_refunds.provider_refund_no(_payment_id(oid), "HZ-1")
    assert money(oid) == (
        "PAID",
        "PARTIALLY_REFUNDED",
        120,
        [("SUCCEEDED", "provider", 120, number)],
    )


def _payment_id(oid: str) -> int:
    with unit_of_work() as s:
        return s.scalars(select(Payment.id).where(Payment.order_id == oid)).one()


def test_a_provider_refund_of_more_than_is_left_is_not_recorded(catalog):
    """No provider refunds more than it captured: such a notification is written down for a
    person and changes no money (the same for another currency)."""
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid, trade_no = paid_order(fake)
    total = fake.trades[trade_no].request.amount.amount
    fake.dashboard_refund(trade_no, 100)
    note = fake.parse_notification({}, fake.outbox[-1])
    assert note.refund is not None and note.refund.amount is not None
    for i, amount in enumerate([replace(note.refund.amount, amount=total + 1), Money(100, "USD")]):
        bad = replace(note, event_id=f"bad-{i}", refund=replace(note.refund, amount=amount))
        with unit_of_work() as s:
            assert payments.apply_notification(s, "alipay", bad, now=now()) == []
    assert money(oid) == ("PAID", "PAID", 0, [])
    with unit_of_work() as s:
        kinds = s.scalars(
            select(OrderEvent.kind).where(
                OrderEvent.order_id == oid, OrderEvent.actor == "provider"
            )
        ).all()
    assert kinds == ["attention", "attention"]
