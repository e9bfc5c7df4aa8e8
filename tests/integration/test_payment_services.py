"""The payment services on real PostgreSQL, driven by the in-memory fake provider.

Each test calls the step a payment task calls (``payments.create``, ``close``, ``refund``:
prepare in one transaction, call the provider with none open, finish in another) with
:class:`tests.fakes.FakePaymentProvider` in place of the adapter, so the awkward interleavings —
an answer lost after the provider did its work, a buyer paying between a cancel and its close, a
notification delivered twice — are played out exactly, step by step, instead of hoped for under
load. The e2e suite covers the same stage through real workers and simulators; the fake's
contract is pinned in ``tests/unit/test_fakes.py``; the steps' decisions alone, without a
database, in ``tests/unit/steps/``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from adapters.payments.base import PaymentState
from domain.errors import ProviderUnavailable
from models import Order, Payment, Refund
from producers.intake import accept_message
from services import payments
from services.followup import Followup
from services.payments import PaymentConfig
from services.ports import Ports
from services.reservation import reserve_order
from services.unit_of_work import unit_of_work
from tests.conftest import order_message
from tests.fakes import FakeGate, FakePaymentProvider
from tests.helpers import assert_stock_consistent, stock_of

NOTIFY_BASE = "http://127.0.0.1:9"  # never called: the fake does not deliver notifications


def now() -> datetime:
    return datetime.now(UTC)


def reserved_order(sku: str = "P", quantity: int = 2) -> str:
    oid = accept_message(order_message(sku, quantity), channel="test").order_id
    with unit_of_work() as s:
        assert reserve_order(s, oid, now=now(), payment_window_s=600).status == "RESERVED"
    return oid


CONFIG = PaymentConfig(notify_base_url=NOTIFY_BASE, create_redrive_s=30, first_query_s=5)


def ports(at: datetime | None = None) -> Ports:
    return Ports(gate=FakeGate(), clock=(lambda: at) if at else now)


def create(fake: FakePaymentProvider, oid: str) -> None:
    """The ``payments.create`` task's step."""
    assert payments.create(oid, lambda name: fake, ports(), CONFIG).result == "created"


def deliver(fake: FakePaymentProvider, body: bytes) -> list[Followup]:
    """POST /webhooks/<provider>: verify, parse, apply once."""
    note = fake.parse_notification({}, body)
    with unit_of_work() as s:
        return payments.apply_notification(s, "alipay", note, now=now())


def close(fake: FakePaymentProvider, oid: str, at: datetime) -> list[Followup] | None:
    """payments.expire / payments.close at time ``at``; None when there was nothing to close."""
    outcome = payments.close(oid, lambda name: fake, ports(at), CONFIG)
    return None if outcome.result == "noop" else list(outcome.followups)


def refund(fake: FakePaymentProvider, refund_id: int) -> None:
    """The ``payments.refund`` task's step."""
    assert payments.refund(refund_id, lambda name: fake, ports()).result != "noop"


def state(oid: str) -> tuple[str, str | None]:
    with unit_of_work() as s:
        order = s.get(Order, oid)
        payment = s.scalar(select(Payment).where(Payment.order_id == oid))
        assert order is not None
        return order.status, payment.status if payment else None


def test_a_lost_create_answer_is_replayed_into_the_same_trade(catalog):
    """The provider creates the trade but its answer is lost: the retry (same stored key) gets
    the same trade back, the buyer pays once, and a repeated notification changes nothing."""
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid = reserved_order()
    fake.fail_next(after=True)  # the work is done, the answer never arrives
    with pytest.raises(ProviderUnavailable):
        create(fake, oid)
    assert state(oid) == ("RESERVED", "CREATING")  # nothing recorded from a lost answer
    create(fake, oid)  # the task's retry
    assert len(fake.trades) == 1
    assert state(oid) == ("AWAITING_PAYMENT", "PENDING")

    (trade_no,) = fake.trades
    fake.pay(trade_no)
    (body,) = fake.outbox
    first, again = deliver(fake, body), deliver(fake, body)
    assert [f.task for f in first] == ["shipping.book"] and again == []
    assert state(oid) == ("PAID", "PAID")


def test_expiry_closes_the_unpaid_trade_and_releases_the_stock_once(catalog):
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid = reserved_order()
    create(fake, oid)
    assert stock_of("P") == (5, 2)
    past_deadline = now() + timedelta(seconds=601)
    assert close(fake, oid, past_deadline) == []
    assert state(oid) == ("EXPIRED", "CLOSED")
    (trade,) = fake.trades.values()
    assert trade.state is PaymentState.CLOSED  # the buyer can no longer pay it
    assert close(fake, oid, past_deadline) is None  # a second expiry run finds nothing to close
    assert stock_of("P") == (5, 0)
    assert_stock_consistent()


def test_expiry_that_finds_the_trade_paid_treats_it_as_paid(catalog):
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid = reserved_order()
    create(fake, oid)
    (trade_no,) = fake.trades
    fake.pay(trade_no)  # paid, but the notification is not delivered before the deadline
    followups = close(fake, oid, now() + timedelta(seconds=601))
    assert [f.task for f in followups] == ["shipping.book"]
    assert state(oid) == ("PAID", "PAID")
    assert stock_of("P") == (5, 2)  # still held for the shipment
    assert fake.refunds == {}


def test_paid_between_cancel_and_close_is_refunded_exactly_once(catalog):
    """Cancel while the trade is open; the buyer pays before the close runs. The notification
    refunds the late payment; the close then finds it paid and refunds nothing more."""
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid = reserved_order()
    create(fake, oid)
    with unit_of_work() as s:
        followups = payments.cancel_order(s, oid, now=now(), actor="test", reason="changed mind")
    assert [f.task for f in followups] == ["payments.close"]
    assert stock_of("P") == (5, 0)  # released at the cancel

    (trade_no,) = fake.trades
    fake.pay(trade_no)
    (paid_note,) = fake.outbox
    (refund_task,) = deliver(fake, paid_note)
    assert refund_task.task == "payments.refund"
    refund(fake, int(refund_task.arg))
    assert close(fake, oid, now()) is None  # the close task finds nothing open: no new refund
    assert deliver(fake, paid_note) == []  # a late duplicate of the payment notification

    assert [(no, r.amount.amount if r.amount else None) for no, (_, r) in fake.refunds.items()] == [
        (f"late-{trade_no}", fake.trades[trade_no].request.amount.amount)
    ]
    with unit_of_work() as s:
        rows = s.scalars(select(Refund).where(Refund.order_id == oid)).all()
        assert [(r.status, r.amount) for r in rows] == [("SUCCEEDED", rows[0].amount)]
    assert state(oid) == ("CANCELLED", "REFUNDED")
    assert stock_of("P") == (5, 0)  # the late payment did not take stock again
    assert_stock_consistent()


def test_cancelling_a_paid_order_refunded_in_full_already_sends_no_second_refund(catalog):
    """An operator refunded the whole payment, then cancels: the cancel releases the stock and
    asks for nothing more (before, it asked for a refund of 0 and was refused: amount)."""
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid = reserved_order()
    create(fake, oid)
    (trade_no,) = fake.trades
    fake.pay(trade_no)
    (paid_note,) = fake.outbox
    deliver(fake, paid_note)
    assert state(oid) == ("PAID", "PAID")
    with unit_of_work() as s:
        first = payments.refund_for_order(s, oid, amount=None, refund_no="ops-1", reason="asked",
                                          actor="test", now=now())  # fmt: skip
    assert first is not None
    with unit_of_work() as s:
        followups = payments.cancel_order(s, oid, now=now(), actor="test", reason="asked")
    assert followups == []
    assert state(oid)[0] == "CANCELLED" and stock_of("P") == (5, 0)
    with unit_of_work() as s:
        assert [r.refund_no for r in s.scalars(select(Refund).where(Refund.order_id == oid))] == [
            "ops-1"
        ]
    assert_stock_consistent()


def test_a_paid_order_whose_booking_started_cannot_be_cancelled(catalog):
    """Once the shipping stage stored its booking intent (before calling the warehouse), a
    cancel is refused with a conflict and changes nothing: the parcel may already be booked."""
    from domain.errors import ConflictError
    from services import shipping

    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid = reserved_order()
    create(fake, oid)
    (trade_no,) = fake.trades
    fake.pay(trade_no)
    deliver(fake, fake.outbox[0])
    assert state(oid) == ("PAID", "PAID")
    with unit_of_work() as s:
        assert shipping.prepare_booking(s, oid, now=now(), redrive_s=60)
    with pytest.raises(ConflictError, match="being booked"), unit_of_work() as s:
        payments.cancel_order(s, oid, now=now(), actor="test", reason="too late")
    assert state(oid) == ("PAID", "PAID")
    assert stock_of("P") == (5, 2) and fake.refunds == {}


def test_a_create_that_comes_after_the_deadline_expires_the_order_without_a_call(catalog):
    """A backlog: the payment task runs after the payment deadline. Nothing is sent (WeChat Pay
    would refuse the past time_expire and page an operator); the order expires, stock once."""
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid = reserved_order()
    late = now() + timedelta(seconds=600)  # the 600 s payment window has passed
    outcome = payments.create(oid, lambda name: fake, ports(late), CONFIG)
    assert (outcome.result, outcome.followups) == ("too_late", ())
    assert fake.trades == {}
    assert state(oid) == ("EXPIRED", None)
    with unit_of_work() as s:
        assert s.get_one(Order, oid).reason == "payment_timeout"
    assert stock_of("P") == (5, 0)
    assert payments.create(oid, lambda name: fake, ports(late), CONFIG).result == "noop"
    assert_stock_consistent()


def test_a_late_create_after_an_attempt_that_may_have_reached_the_provider_closes_first(catalog):
    """The first attempt's answer was lost (the trade may exist); the retry comes after the
    deadline: it sends no create, and hands over to expiry, which closes that trade."""
    catalog({"P": 5})
    fake = FakePaymentProvider()
    oid = reserved_order()
    fake.fail_next(after=True)  # the trade was created; the answer never arrived
    with pytest.raises(ProviderUnavailable):
        payments.create(oid, lambda name: fake, ports(), CONFIG)
    late = now() + timedelta(seconds=600)
    outcome = payments.create(oid, lambda name: fake, ports(late), CONFIG)
    assert outcome.result == "too_late"
    assert outcome.followups == (Followup("payments.expire", oid),)
    assert len(fake.trades) == 1  # no second create
    assert state(oid) == ("RESERVED", "CREATING")
    assert close(fake, oid, late) == []  # what payments.expire runs
    (trade,) = fake.trades.values()
    assert trade.state is PaymentState.CLOSED
    assert state(oid) == ("EXPIRED", "CLOSED") and stock_of("P") == (5, 0)
    assert_stock_consistent()
