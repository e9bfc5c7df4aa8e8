"""Refunds: requested by amount (never more than captured), sent with a stored refund number,
queried while pending, recorded forward only."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.payments.base import (
    RefundRequest,
    RefundResult,
    RefundState,
)
from domain.errors import (
    ConflictError,
    ValidationError,
)
from domain.money import Money
from domain.payments import CAPTURED, PaymentStatus, RefundStatus, refund_can_move
from models import Order, Payment, Refund
from services import timeline
from services.followup import Followup
from services.order_state import lock_order
from services.payments.common import (
    REFUND_QUERY_S,
    REFUND_REDRIVE_S,
    ProviderCall,
    Providers,
    captured_money,
    lock_payment,
    move_payment,
    provider_ref,
)
from services.ports import Outcome, Ports
from services.provider_calls import CircuitOpen
from services.task_names import PAYMENTS_REFUND


def refundable(session: Session, payment: Payment) -> int:
    """What is left to refund: the amount captured (:func:`captured_money`, which may differ
    from the order's) less every refund not FAILED (requested ones included: they are on
    their way)."""
    committed = session.scalar(
        select(func.coalesce(func.sum(Refund.amount), 0)).where(
            Refund.payment_id == payment.id, Refund.status != RefundStatus.FAILED
        )
    )
    return captured_money(payment).amount - int(committed or 0)


def request_refund(
    session: Session,
    order: Order,
    payment: Payment,
    *,
    amount: int | None,
    refund_no: str,
    reason: str,
    actor: str,
    now: datetime,
) -> Followup | None:
    """Store a refund (idempotent by ``refund_no``); returns the task that carries it out.

    ``amount=None`` refunds everything not yet refunded. The same refund number with the same
    amount is the same refund; with another amount it is a conflict.
    """
    existing = session.scalar(select(Refund).where(Refund.refund_no == refund_no))
    if existing is not None:
        if existing.payment_id != payment.id or (amount is not None and existing.amount != amount):
            raise ConflictError(
                f"refund {refund_no} already exists with different details", field="refund_no"
            )
        return Followup(PAYMENTS_REFUND, existing.id) if existing.status == "REQUESTED" else None
    if payment.status not in CAPTURED:
        raise ValidationError("order", f"payment is {payment.status}; nothing to refund")
    remaining = refundable(session, payment)
    amount = remaining if amount is None else amount
    if amount <= 0 or amount > remaining:
        raise ValidationError("amount", f"must be between 1 and the refundable {remaining}")
    refund = Refund(
        payment_id=payment.id, order_id=order.id, refund_no=refund_no, amount=amount,
        currency=captured_money(payment).currency, status=RefundStatus.REQUESTED,
        reason=reason[:200],
        actor=actor, next_query_at=now + timedelta(seconds=REFUND_REDRIVE_S),
    )  # fmt: skip
    session.add(refund)
    session.flush()
    timeline.record(
        session, order.id, "refund", to_status=RefundStatus.REQUESTED,
        detail={"refund_no": refund_no, "amount": amount, "reason": reason}, actor=actor,
    )  # fmt: skip
    return Followup(PAYMENTS_REFUND, refund.id)


def refund_for_order(
    session: Session,
    order_id: str,
    *,
    amount: int | None,
    refund_no: str,
    reason: str,
    actor: str,
    now: datetime,
) -> Followup | None:
    """The API/CLI entry point for a refund of an order's payment."""
    order = lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    if payment is None:
        raise ValidationError("order", "order has no payment")
    return request_refund(
        session, order, payment, amount=amount, refund_no=refund_no, reason=reason,
        actor=actor, now=now,
    )  # fmt: skip


def refund(refund_id: int, providers: Providers, ports: Ports) -> Outcome:
    """Carry out a requested refund, or check on one the provider accepted as pending (then it
    is queried, never sent again: see :attr:`ProviderCall.query_only`); the stored refund
    number makes a repeat harmless. An open circuit skips it: the poll job re-drives it."""
    with ports.uow() as session:
        plan = prepare_refund(session, refund_id)
    if plan is None:
        return Outcome("noop")
    req: RefundRequest = plan.request
    adapter = providers(plan.provider)
    if plan.query_only:
        operation, fn = "query_refund", lambda: adapter.query_refund(req.ref, req.refund_no)
    else:
        operation, fn = "refund", lambda: adapter.refund(req)
    try:
        result = ports.gate.call(plan.provider, operation, plan.order_id, fn, request=req)
    except CircuitOpen:
        return Outcome("circuit_open")
    with ports.uow() as session:
        finish_refund(session, plan.order_id, req.refund_no, result, now=ports.clock())
    return Outcome(str(result.state))


def prepare_refund(session: Session, refund_id: int) -> ProviderCall | None:
    refund = session.get(Refund, refund_id)
    if refund is None or refund.status not in (RefundStatus.REQUESTED, RefundStatus.PENDING):
        return None
    if refund.actor == PROVIDER_ACTOR:
        return None  # made at the provider: never sent, and its notifications move it
    payment = session.get(Payment, refund.payment_id)
    assert payment is not None
    request = RefundRequest(
        ref=provider_ref(payment), refund_no=refund.refund_no,
        amount=Money(refund.amount, refund.currency), total=captured_money(payment),
        reason=refund.reason or "refund",
    )  # fmt: skip
    pending = refund.status == RefundStatus.PENDING
    return ProviderCall(payment.order_id, payment.provider, request, query_only=pending)


def finish_refund(
    session: Session, order_id: str, refund_no: str, result: RefundResult, *, now: datetime
) -> None:
    lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    refund = session.scalars(
        select(Refund).where(Refund.refund_no == refund_no).with_for_update()
    ).one()
    assert payment is not None
    record_refund(session, payment, refund, result, now=now)


_REFUND_STATES = {
    RefundState.PENDING: RefundStatus.PENDING,
    RefundState.SUCCEEDED: RefundStatus.SUCCEEDED,
    RefundState.FAILED: RefundStatus.FAILED,
}


def refund_status(state: RefundState) -> RefundStatus:
    """Our status for a refund in the provider's normalized ``state``."""
    return _REFUND_STATES[state]


#: ``refunds.actor`` of a refund made at the provider (its dashboard, its support), not by us.
PROVIDER_ACTOR = "provider"


def record_refund(
    session: Session, payment: Payment, refund: Refund, result: RefundResult, *, now: datetime
) -> bool:
    """Move ``refund`` to what ``result`` says, forward only; returns whether it moved. A
    refund that reaches SUCCEEDED is counted once into ``payments.refunded_amount``. Only a
    refund we made is queried while PENDING (one made at the provider is moved by its
    notifications: we have no number of ours to ask about it by)."""
    target = refund_status(result.state)
    refund.provider_refund_ref = refund.provider_refund_ref or result.provider_refund_ref
    if not refund_can_move(refund.status, target):
        return False
    current = refund.status
    refund.status = target
    refund.raw_status = result.raw_status[:64]
    ours = refund.actor != PROVIDER_ACTOR
    refund.next_query_at = (
        now + timedelta(seconds=REFUND_QUERY_S) if target == "PENDING" and ours else None
    )
    timeline.record(
        session, refund.order_id, "refund", from_status=current, to_status=target,
        detail={"refund_no": refund.refund_no, "amount": refund.amount},
        actor="system" if ours else PROVIDER_ACTOR,
    )  # fmt: skip
    if target == RefundStatus.SUCCEEDED:
        count_refunded(session, payment, refund.amount)
    return True


def count_refunded(session: Session, payment: Payment, amount: int) -> None:
    """Add a succeeded refund's ``amount`` to the payment, which becomes PARTIALLY_REFUNDED, or
    REFUNDED once the refunds reach what was captured."""
    payment.refunded_amount += amount
    full = payment.refunded_amount >= captured_money(payment).amount
    move_payment(
        session, payment,
        PaymentStatus.REFUNDED if full else PaymentStatus.PARTIALLY_REFUNDED,
        refunded=payment.refunded_amount,
    )  # fmt: skip
