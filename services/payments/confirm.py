"""Confirmation: a verified notification or a query result moves the payment (forward only)
and, once captured, the order to PAID; due payments are claimed for polling."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.payments.base import (
    Notification,
    NotificationKind,
    PaymentState,
    TradeStatus,
)
from domain.money import Money, format_money
from domain.orders import OrderStatus
from domain.payments import CAPTURED, AfterCapture, PaymentStatus, RefundStatus, after_capture
from models import Order, Payment, Refund
from services import timeline
from services.followup import Followup
from services.order_state import lock_order, move_order
from services.payments.common import (
    REFUND_REDRIVE_S,
    SHIP_BY_S,
    ProviderCall,
    Providers,
    first_delivery,
    lock_payment,
    move_payment,
    provider_ref,
)
from services.payments.provider_refunds import apply_refund, claim_due_lookups
from services.payments.refunds import request_refund
from services.ports import Outcome, Ports
from services.provider_calls import CircuitOpen
from services.task_names import PAYMENTS_QUERY, PAYMENTS_REFUND, SHIPPING_BOOK


def apply_status(
    session: Session,
    order: Order,
    payment: Payment,
    status: TradeStatus,
    *,
    now: datetime,
    source: str,
) -> list[Followup]:
    """Apply what the provider says about a payment (order and payment rows locked).

    Idempotent and forward-only. A payment for an order that expired or was cancelled is
    refunded in full; one whose amount or currency differs from the order goes to
    NEEDS_ATTENTION.
    """
    if status.provider_ref and not payment.provider_ref:
        payment.provider_ref = status.provider_ref
    payment.raw_status = status.raw_status[:64]
    if status.state is PaymentState.CLOSED:
        move_payment(session, payment, PaymentStatus.CLOSED, source=source)
        return []
    if status.state is PaymentState.PENDING:
        move_payment(session, payment, PaymentStatus.PENDING, source=source)
        return []
    if status.state not in (PaymentState.PAID, PaymentState.REFUNDED):
        return []
    if payment.status in CAPTURED:
        return []  # a duplicate: already recorded
    payment.paid_at = status.paid_at or now
    payment.next_query_at = None
    move_payment(session, payment, PaymentStatus.PAID, source=source, raw=status.raw_status)
    return _after_paid(session, order, payment, status, now=now)


def _after_paid(
    session: Session, order: Order, payment: Payment, status: TradeStatus, *, now: datetime
) -> list[Followup]:
    expected = Money(payment.amount, payment.currency)
    captured = status.amount or expected  # a provider that reports no amount took the asked one
    payment.captured_amount, payment.captured_currency = captured.amount, captured.currency
    matches = captured == expected
    action = after_capture(order.status, amount_matches=matches)
    if action is AfterCapture.REFUND_FLAGGED:
        return _refund_flagged(session, order, payment, expected, captured, now=now)
    if action in (AfterCapture.ATTENTION, AfterCapture.NOTE):
        order.reason = "amount_mismatch"
        detail: dict[str, Any] = {"expected": str(expected), "paid": str(status.amount)}
        if action is AfterCapture.ATTENTION:
            order.stage_deadline = None
            move_order(session, order, OrderStatus.NEEDS_ATTENTION, **detail)
        else:
            timeline.record(session, order.id, "attention", detail=detail)
        return []
    if action is AfterCapture.PAY:
        # The shipping stage must start by this deadline, or the sweeper re-drives the booking.
        order.stage_deadline = now + timedelta(seconds=SHIP_BY_S)
        move_order(session, order, OrderStatus.PAID, provider=payment.provider)
        return [Followup(SHIPPING_BOOK, order.id)]
    if action is AfterCapture.REFUND:
        refund_no = f"late-{payment.out_trade_no}"
        followup = request_refund(
            session, order, payment, amount=None, refund_no=refund_no,
            reason=f"paid after the order was {order.status.lower()}", actor="system", now=now,
        )  # fmt: skip
        return [followup] if followup else []
    return []


def _refund_flagged(
    session: Session,
    order: Order,
    payment: Payment,
    expected: Money,
    captured: Money,
    *,
    now: datetime,
) -> list[Followup]:
    """A wrong amount paid on an order that is over: all of it goes back (bounded by and sent
    against what was captured), and the payment is flagged for the Attention page, since the
    order itself can no longer move."""
    status = order.status.lower()
    payment.attention = (
        f"{_shown(captured)} paid after the order was {status} "
        f"(it asked {_shown(expected)}); refunded in full"
    )[:300]
    timeline.record(
        session, order.id, "attention",
        detail={"expected": str(expected), "paid": str(captured), "action": "refund"},
    )  # fmt: skip
    followup = request_refund(
        session, order, payment, amount=None, refund_no=f"late-{payment.out_trade_no}",
        reason=f"paid {_shown(captured)} after the order was {status}", actor="system",
        now=now,
    )  # fmt: skip
    return [followup] if followup else []


def _shown(money: Money) -> str:
    return format_money(money.amount, money.currency)


def apply_notification(
    session: Session, provider: str, note: Notification, *, now: datetime
) -> list[Followup]:
    """Apply a verified notification once (deduplicated on the provider's event id).

    The payment is found by our ``out_trade_no``, else by the provider's reference (a refund
    made in Stripe's dashboard names only the ``pi_…``). Refunds, ours and those made at the
    provider, are applied by :func:`services.payments.provider_refunds.apply_refund`.
    """
    if not first_delivery(session, provider, note.event_id):
        return []  # a repeat delivery (already applied)
    order_id = _order_of(session, provider, note)
    if order_id is None:
        return []  # genuine, but not ours to act on (e.g. another system's trade)
    order = lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    assert payment is not None
    timeline.record(
        session, order_id, "notification",
        detail={"provider": provider, "event_id": note.event_id, "type": note.raw_type,
                "state": note.status.state if note.status else None},
    )  # fmt: skip
    followups: list[Followup] = []
    if note.status is not None and note.kind is NotificationKind.PAYMENT:
        followups += apply_status(session, order, payment, note.status, now=now, source="notify")
    if note.refund is not None or note.refunds_unlisted:
        followups += apply_refund(session, order, payment, note, now=now)
    return followups


def _order_of(session: Session, provider: str, note: Notification) -> str | None:
    if note.out_trade_no is not None:
        key, where = note.out_trade_no, Payment.out_trade_no == note.out_trade_no
    elif note.provider_ref is not None:
        key, where = note.provider_ref, Payment.provider_ref == note.provider_ref
    else:
        return None
    if "\x00" in key:  # PostgreSQL text cannot hold NUL, so no payment of ours has it
        return None
    return session.scalar(select(Payment.order_id).where(Payment.provider == provider, where))


def query(payment_id: int, providers: Providers, ports: Ports) -> Outcome:
    """Ask the provider about a pending payment (the fallback when no notification came) and
    apply the answer like a notification's. An open circuit skips it: the next poll tick asks
    again. Provider errors are raised for the task (transient ones are retried)."""
    with ports.uow() as session:
        plan = prepare_query(session, payment_id)
    if plan is None:
        return Outcome("noop")
    ref = plan.request
    try:
        status = ports.gate.call(
            plan.provider, "query", plan.order_id, lambda: providers(plan.provider).query(ref),
            request=ref,
        )  # fmt: skip
    except CircuitOpen:
        return Outcome("circuit_open")
    with ports.uow() as session:
        followups = finish_query(session, plan.order_id, status, now=ports.clock())
    return Outcome.of(str(status.state), followups)


def prepare_query(session: Session, payment_id: int) -> ProviderCall | None:
    payment = session.get(Payment, payment_id)
    if payment is None or payment.status not in (PaymentStatus.CREATING, PaymentStatus.PENDING):
        return None
    return ProviderCall(payment.order_id, payment.provider, provider_ref(payment))


def finish_query(
    session: Session, order_id: str, status: TradeStatus, *, now: datetime
) -> list[Followup]:
    order = lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    assert payment is not None
    return apply_status(session, order, payment, status, now=now, source="query")


def claim_due(
    session: Session, *, now: datetime, limit: int, first_s: float, max_s: float
) -> list[Followup]:
    """Payments to query, refunds to (re)drive and refund look-ups owed
    (:func:`~services.payments.provider_refunds.claim_due_lookups`) whose time has come; SKIP
    LOCKED claims."""
    payments = list(
        session.scalars(
            select(Payment)
            .where(Payment.status == PaymentStatus.PENDING, Payment.next_query_at < now)
            .order_by(Payment.next_query_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    for p in payments:
        p.query_attempts += 1
        p.next_query_at = now + timedelta(seconds=min(max_s, first_s * 2**p.query_attempts))
    refunds = list(
        session.scalars(
            select(Refund)
            .where(
                Refund.status.in_([RefundStatus.REQUESTED, RefundStatus.PENDING]),
                Refund.next_query_at < now,
            )
            .order_by(Refund.next_query_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    for r in refunds:
        r.next_query_at = now + timedelta(seconds=REFUND_REDRIVE_S)
    return (
        [Followup(PAYMENTS_QUERY, p.id) for p in payments]
        + [Followup(PAYMENTS_REFUND, r.id) for r in refunds]
        + claim_due_lookups(session, now=now, limit=limit)  # refunds made at the provider
    )
