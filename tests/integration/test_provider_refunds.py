"""Refunds made at the provider (:mod:`services.payments.provider_refunds`) on real PostgreSQL,
driven by the fake provider: each test plays the webhook step (verify, parse, apply once) and,
where the notification asks for one, the ``payments.lookup_refunds`` task's step, exactly in the
order a provider's retries and reorderings could bring them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from domain.errors import ProviderUnavailable, ValidationError
from domain.money import Money
from models import DeadLetter, Order, OrderEvent, Payment, Refund
from models.payments import RefundLookup
from services import payments
from services.followup import Followup
from services.payments import provider_refunds
from services.payments.provider_refunds import LOOKUP_FIRST_S, LOOKUP_MAX_S
from services.task_names import PAYMENTS_LOOKUP_REFUNDS
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


# -- The look-up is owed durably (rule 3 a-c): a lost publish is re-driven by the payment poll --


def owed(oid: str) -> list[tuple[str, int, int]]:
    """The look-ups owed for the order's payment: [(refund_no, attempts, requests)]."""
    with unit_of_work() as s:
        rows = s.scalars(
            select(RefundLookup)
            .join(Payment, Payment.id == RefundLookup.payment_id)
            .where(Payment.order_id == oid)
            .order_by(RefundLookup.id)
        ).all()
        return [(r.refund_no, r.attempts, r.requests) for r in rows]


def poll(at: datetime) -> list[Followup]:
    """The ``maintenance.poll_payments`` beat step at time ``at``: the look-ups it re-drives."""
    with unit_of_work() as s:
        claimed = payments.claim_due(s, now=at, limit=10, first_s=5, max_s=60)
    return [f for f in claimed if f.task == PAYMENTS_LOOKUP_REFUNDS]


def test_a_lookup_whose_publish_was_lost_is_redriven_after_its_due_time_and_then_cleared(catalog):
    """The look-up is owed in the notification's own transaction (a rolled-back delivery owes
    nothing); its message is lost; the poll re-sends it once it is due, and backs off; the task
    records the refund and clears the row; running it again records nothing twice."""
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid, trade_no = paid_order(fake)
    ref = fake.dashboard_refund(trade_no, 250, unlisted=True)
    note = fake.parse_notification({}, fake.outbox[-1])
    with pytest.raises(RuntimeError), unit_of_work() as s:
        payments.apply_notification(s, "alipay", note, now=now())
        raise RuntimeError("the webhook's transaction fails after applying")
    assert owed(oid) == []
    t0 = now()
    with unit_of_work() as s:
        (lookup,) = payments.apply_notification(s, "alipay", note, now=t0)
    assert owed(oid) == [("", 0, 1)]  # and the message is lost: `lookup` is never sent
    assert poll(t0 + timedelta(seconds=LOOKUP_FIRST_S - 1)) == []  # not due yet
    due = t0 + timedelta(seconds=LOOKUP_FIRST_S + 1)
    assert poll(due) == [lookup]
    assert poll(due) == [] and owed(oid) == [("", 1, 1)]  # claimed: backed off, not sent twice
    later = due + timedelta(seconds=2 * LOOKUP_FIRST_S + 1)
    assert poll(later) == [lookup] and owed(oid) == [("", 2, 1)]

    step = provider_refunds.lookup_refunds(str(lookup.arg), lambda name: fake, ports())
    assert step.result == "looked_up_1" and owed(oid) == []
    assert provider_refunds.lookup_refunds(str(lookup.arg), lambda n: fake, ports()).result == (
        "looked_up_1"
    )  # a duplicate message (the lost one turning up after all)
    number = provider_refunds.provider_refund_no(_payment_id(oid), ref)
    recorded = ("PAID", "PARTIALLY_REFUNDED", 250, [("SUCCEEDED", "provider", 250, number)])
    assert money(oid) == recorded
    assert owed(oid) == [] and poll(later + timedelta(hours=2)) == []
    with unit_of_work() as s:
        redrive = (OrderEvent.order_id == oid, OrderEvent.kind == "redrive")
        redrives = s.scalars(select(OrderEvent.detail).where(*redrive)).all()
    assert [d["attempt"] for d in redrives] == [1, 2]


def test_a_notification_during_a_lookup_keeps_the_row_for_the_refund_it_missed(catalog):
    """A second dashboard refund's notification arrives while a look-up is in flight with an
    answer that predates it: that answer is applied, but the row stays owed, and the next
    look-up (here the re-sent message) records the second refund."""
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid, trade_no = paid_order(fake)
    fake.dashboard_refund(trade_no, 100, unlisted=True)
    (lookup,) = deliver(fake, fake.outbox[-1])
    with unit_of_work() as s:
        plan = provider_refunds.prepare_lookup(s, _payment_id(oid), "")
    assert isinstance(plan, provider_refunds.LookupPlan)
    first_answer = fake.list_refunds(plan.call.request)  # the call, no transaction open
    fake.dashboard_refund(trade_no, 200, unlisted=True)
    assert deliver(fake, fake.outbox[-1]) == [lookup] and owed(oid) == [("", 0, 2)]
    with unit_of_work() as s:
        cleared = provider_refunds.finish_lookup(s, plan, first_answer, now=now(), source="t")
    assert not cleared and owed(oid) == [("", 0, 2)] and money(oid)[2] == 100
    provider_refunds.lookup_refunds(str(lookup.arg), lambda name: fake, ports())
    assert owed(oid) == [] and money(oid)[2] == 300 and len(money(oid)[3]) == 2


def test_a_failing_lookup_stays_owed_and_is_held_while_dead_lettered(catalog):
    """A provider error leaves the row (the task retries); once the task is dead-lettered the
    poll stops re-sending it until an operator has dealt with the dead letter."""
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid, trade_no = paid_order(fake)
    key = fake.dashboard_refund(trade_no, 120)
    _, made = fake.refunds.pop(key)
    fake.refunds["HZ-1"] = (trade_no, replace(made, refund_no="HZ-1"))
    fake.refunds["HZ-2"] = (trade_no, replace(made, refund_no="HZ-2", amount=Money(80, "CNY")))
    note = fake.parse_notification({}, fake.outbox[-1])
    t0 = now()
    lookups = []
    for number in ("HZ-1", "HZ-2"):  # Alipay: two refunds we did not issue, one look-up each
        total_only = replace(made, refund_no=number, amount=None, provider_refund_ref=None)
        one = replace(note, event_id=f"n-{number}", refund=total_only)
        with unit_of_work() as s:
            lookups += payments.apply_notification(s, "alipay", one, now=t0)
    assert owed(oid) == [("HZ-1", 0, 1), ("HZ-2", 0, 1)]
    fake.fail_next()
    with pytest.raises(ProviderUnavailable):
        provider_refunds.lookup_refunds(str(lookups[0].arg), lambda name: fake, ports())
    assert owed(oid)[0] == ("HZ-1", 0, 1)
    with unit_of_work() as s:
        s.add(DeadLetter(task_name=PAYMENTS_LOOKUP_REFUNDS, args=[lookups[0].arg], kwargs={},
                         error_class="ProviderUnavailable", error_message="x",
                         attempts=6))  # fmt: skip
    due = t0 + timedelta(seconds=LOOKUP_FIRST_S + 1)
    assert poll(due) == [lookups[1]]  # HZ-1 held; its due time still moves on
    assert owed(oid) == [("HZ-1", 1, 1), ("HZ-2", 1, 1)]
    with unit_of_work() as s:
        s.execute(update(DeadLetter).values(status="REPLAYED"))
    assert poll(due + timedelta(seconds=LOOKUP_MAX_S)) == lookups
    for lookup in lookups:
        provider_refunds.lookup_refunds(str(lookup.arg), lambda name: fake, ports())
    assert owed(oid) == [] and money(oid)[2] == 200
