"""The payment stage: create, confirm, expire, cancel and refund — without ever holding a row
lock during a provider call.

Every provider interaction is split in three (DESIGN.md §3.5):

1. ``prepare_*`` — in a transaction: lock the order, check its status, store the intent (the
   idempotency key, the refund number) and return what to send. Commit.
2. The task layer calls the provider with no transaction open.
3. ``finish_*`` / ``apply_*`` — in a new transaction: lock the order again, re-check, record the
   outcome with forward-only status moves, and return :class:`Followup` tasks to enqueue after
   the commit.

Locks are always taken order first, then payment, then refund, so concurrent webhooks, polls,
expiries and cancels serialize on the order row and never deadlock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from adapters.payments.base import (
    ClosePayment,
    CloseResult,
    CreatePayment,
    Notification,
    NotificationKind,
    PaymentCreated,
    PaymentRef,
    PaymentState,
    RefundRequest,
    RefundResult,
    RefundState,
)
from adapters.payments.base import PaymentStatus as ProviderStatus
from domain.errors import (
    ConflictError,
    NotFound,
    ProviderRejected,
    ProviderUnavailable,
    ValidationError,
)
from domain.money import Money
from domain.orders import CANCELLABLE, OrderStatus, can_transition
from domain.payments import CAPTURED, PaymentStatus, RefundStatus, payment_can_move, refund_can_move
from models import Order, Payment, ProcessedNotification, Refund, Shipment
from services import timeline
from services.followup import Followup
from services.order_state import lock_order, move_order
from services.stock import release_reservations
from services.task_names import PAYMENTS_CLOSE, PAYMENTS_QUERY, PAYMENTS_REFUND, SHIPPING_BOOK

AWAITING = (OrderStatus.RESERVED, OrderStatus.AWAITING_PAYMENT)
#: How long an in-flight close/create keeps the sweeper away from an order.
LEASE_S = 30
REFUND_REDRIVE_S = 30
#: A PAID order whose booking has not started within this is re-driven by the sweeper.
SHIP_BY_S = 60
REFUND_QUERY_S = 10


@dataclass(frozen=True, slots=True)
class ProviderCall:
    """A provider call the task layer must make (no transaction open)."""

    order_id: str
    provider: str
    request: Any  # CreatePayment | ClosePayment | RefundRequest | PaymentRef
    #: Ask, do not send: a refund the provider already accepted (PENDING) is checked with
    #: ``query_refund``. Sending it again would only replay the stored answer (Stripe keeps it
    #: for 24 h, then a re-send could refund twice).
    query_only: bool = False


# -- locking helpers ------------------------------------------------------------------------


_LOCK_PAYMENT = select(Payment).where(Payment.order_id == bindparam("order_id")).with_for_update()


def lock_payment(session: Session, order_id: str) -> Payment | None:
    return session.scalars(_LOCK_PAYMENT, {"order_id": order_id}).one_or_none()


def _move_payment(session: Session, payment: Payment, target: PaymentStatus, **detail: Any) -> bool:
    """Forward-only: returns False (and records nothing) when the move is not forward."""
    if not payment_can_move(payment.status, target):
        return False
    current = payment.status
    payment.status = target
    timeline.record(
        session, payment.order_id, "payment", from_status=current, to_status=target,
        detail=detail or None,
    )  # fmt: skip
    return True


def _ref(payment: Payment) -> PaymentRef:
    return PaymentRef(payment.out_trade_no, payment.provider_ref)


# -- create ---------------------------------------------------------------------------------


def prepare_create(
    session: Session, order_id: str, *, now: datetime, notify_base_url: str, redrive_s: int
) -> ProviderCall | None:
    """Store the payment (and its idempotency key) for a RESERVED order; None if not needed."""
    order = lock_order(session, order_id)
    if order.status != OrderStatus.RESERVED or order.payment_deadline is None:
        return None
    payment = lock_payment(session, order_id)
    if payment is None:
        key = order.id.replace("-", "")  # 32 chars: fits every provider's merchant order number
        payment = Payment(
            order_id=order.id, provider=order.payment_provider, out_trade_no=key,
            idempotency_key=f"pay-{key}", amount=order.total_amount, currency=order.currency,
            status=PaymentStatus.CREATING,
        )  # fmt: skip
        session.add(payment)
        session.flush()
        timeline.record(
            session, order.id, "payment", to_status=PaymentStatus.CREATING,
            detail={"provider": payment.provider, "out_trade_no": key},
        )  # fmt: skip
    elif payment.status not in (PaymentStatus.CREATING, PaymentStatus.PENDING):
        return None
    order.stage_deadline = now + timedelta(seconds=redrive_s)  # re-driven if this task dies
    request = _create_request(order, payment, order.payment_deadline, notify_base_url)
    return ProviderCall(order.id, payment.provider, request)


def _create_request(
    order: Order, payment: Payment, expires_at: datetime, notify_base_url: str
) -> CreatePayment:
    """The create call for ``payment``: the same fields every time, so a repeat is a replay."""
    return CreatePayment(
        out_trade_no=payment.out_trade_no,
        idempotency_key=payment.idempotency_key,
        amount=Money(payment.amount, payment.currency),
        description=f"Order {order.external_id}",
        notify_url=f"{notify_base_url.rstrip('/')}/webhooks/{payment.provider}",
        expires_at=expires_at,
        metadata={"order_id": order.id},
    )


def finish_create(
    session: Session, order_id: str, created: PaymentCreated, *, now: datetime, first_query_s: float
) -> None:
    """Record the instructions; RESERVED -> AWAITING_PAYMENT (unless a webhook already paid it)."""
    order = lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    if payment is None:
        raise NotFound(f"payment of order {order_id}")
    payment.provider_ref = payment.provider_ref or created.provider_ref
    payment.instructions = dict(created.instructions)
    payment.next_query_at = now + timedelta(seconds=first_query_s)
    _move_payment(session, payment, PaymentStatus.PENDING)
    if order.status == OrderStatus.RESERVED:
        shown = sorted(created.instructions)  # the keys only: the timeline holds no secrets
        move_order(
            session, order, OrderStatus.AWAITING_PAYMENT, provider=payment.provider, shown=shown
        )
        order.stage_deadline = order.payment_deadline


def rotate_create_key(session: Session, order_id: str) -> None:
    """The provider replays a stored failure for the current key (``REPLAYED_FAILURE``): mint a
    new one. Only while nothing the customer can pay was returned (payment still CREATING)."""
    lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    if payment is None or payment.status != PaymentStatus.CREATING:
        return
    prefix = f"pay-{payment.out_trade_no}"  # keys are pay-<no>, then pay-<no>-r1, -r2, ...
    attempt = int(payment.idempotency_key.removeprefix(prefix).removeprefix("-r") or 0) + 1
    payment.idempotency_key = f"{prefix}-r{attempt}"
    timeline.record(
        session, order_id, "payment", detail={"idempotency_key": "rotated", "attempt": attempt}
    )


def settled_on_create(
    session: Session, order_id: str, error: ProviderRejected, *, now: datetime
) -> Followup | None:
    """A create found the trade already settled at the provider (``SETTLED_ON_CREATE``): e.g.
    the first create succeeded, its result was never recorded (the database went away), and
    the buyer paid before the retry. Ask the provider for the trade's status instead of
    treating the answer as a refusal; returns the query to publish after the commit."""
    lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    if payment is None or payment.status not in (PaymentStatus.CREATING, PaymentStatus.PENDING):
        return None
    payment.next_query_at = now
    timeline.record(
        session, order_id, "payment", detail={"settled_at_provider": error.code, "then": "query"}
    )
    return Followup(PAYMENTS_QUERY, payment.id)


def fail_create(session: Session, order_id: str, error: ProviderRejected) -> None:
    """The provider refused to create the payment: the order needs an operator."""
    order = lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    if payment is not None:
        payment.last_error = str(error)[:500]
        _move_payment(session, payment, PaymentStatus.CLOSED, error=error.code)
    if order.status == OrderStatus.RESERVED:
        order.reason = f"payment_rejected:{error.code or 'unknown'}"
        order.stage_deadline = None
        move_order(session, order, OrderStatus.NEEDS_ATTENTION, error=str(error)[:200])


# -- confirmation (webhooks and polling) ----------------------------------------------------


def apply_status(
    session: Session,
    order: Order,
    payment: Payment,
    status: ProviderStatus,
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
        _move_payment(session, payment, PaymentStatus.CLOSED, source=source)
        return []
    if status.state is PaymentState.PENDING:
        _move_payment(session, payment, PaymentStatus.PENDING, source=source)
        return []
    if status.state not in (PaymentState.PAID, PaymentState.REFUNDED):
        return []
    if payment.status in CAPTURED:
        return []  # a duplicate: already recorded
    payment.paid_at = status.paid_at or now
    payment.next_query_at = None
    _move_payment(session, payment, PaymentStatus.PAID, source=source, raw=status.raw_status)
    return _after_paid(session, order, payment, status, now=now)


def _after_paid(
    session: Session, order: Order, payment: Payment, status: ProviderStatus, *, now: datetime
) -> list[Followup]:
    expected = Money(payment.amount, payment.currency)
    if status.amount is not None and status.amount != expected:
        order.reason = "amount_mismatch"
        detail = {"expected": str(expected), "paid": str(status.amount)}
        if can_transition(OrderStatus(order.status), OrderStatus.NEEDS_ATTENTION):
            order.stage_deadline = None
            move_order(session, order, OrderStatus.NEEDS_ATTENTION, **detail)
        else:
            timeline.record(session, order.id, "attention", detail=detail)
        return []
    if order.status in AWAITING:
        # The shipping stage must start by this deadline, or the sweeper re-drives the booking.
        order.stage_deadline = now + timedelta(seconds=SHIP_BY_S)
        move_order(session, order, OrderStatus.PAID, provider=payment.provider)
        return [Followup(SHIPPING_BOOK, order.id)]
    if order.status in (OrderStatus.EXPIRED, OrderStatus.CANCELLED):
        refund_no = f"late-{payment.out_trade_no}"
        followup = request_refund(
            session, order, payment, amount=None, refund_no=refund_no,
            reason=f"paid after the order was {order.status.lower()}", actor="system", now=now,
        )  # fmt: skip
        return [followup] if followup else []
    return []


def apply_notification(
    session: Session, provider: str, note: Notification, *, now: datetime
) -> list[Followup]:
    """Apply a verified notification once (deduplicated on the provider's event id)."""
    first = session.execute(
        pg_insert(ProcessedNotification)
        .values(provider=provider, event_id=note.event_id[:128])
        .on_conflict_do_nothing(constraint="uq_processed_notifications_event")
        .returning(ProcessedNotification.id)
    ).scalar_one_or_none()
    if first is None or note.out_trade_no is None:
        return []  # a repeat delivery (already applied), or nothing we act on
    order_id = session.scalar(
        select(Payment.order_id).where(
            Payment.provider == provider, Payment.out_trade_no == note.out_trade_no
        )
    )
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
    if note.refund is not None and note.refund.refund_no:
        refund = session.scalar(select(Refund).where(Refund.refund_no == note.refund.refund_no))
        if refund is not None:
            _record_refund(session, payment, refund, note.refund, now=now)
    return followups


def prepare_query(session: Session, payment_id: int) -> ProviderCall | None:
    payment = session.get(Payment, payment_id)
    if payment is None or payment.status not in (PaymentStatus.CREATING, PaymentStatus.PENDING):
        return None
    return ProviderCall(payment.order_id, payment.provider, _ref(payment))


def finish_query(
    session: Session, order_id: str, status: ProviderStatus, *, now: datetime
) -> list[Followup]:
    order = lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    assert payment is not None
    return apply_status(session, order, payment, status, now=now, source="query")


def claim_due(
    session: Session, *, now: datetime, limit: int, first_s: float, max_s: float
) -> list[Followup]:
    """Payments to query and refunds to (re)drive whose time has come; SKIP LOCKED claims."""
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
    return [Followup(PAYMENTS_QUERY, p.id) for p in payments] + [
        Followup(PAYMENTS_REFUND, r.id) for r in refunds
    ]


# -- expiry and cancel ----------------------------------------------------------------------


def prepare_close(
    session: Session, order_id: str, *, now: datetime, notify_base_url: str
) -> ProviderCall | None:
    """Before expiring or after cancelling: the trade to close at the provider, if any.

    Without the provider's reference (the create's answer never arrived or was never recorded)
    the close carries the create request, so that a provider which closes only by its own
    reference can recover it with the same idempotency key (see :class:`ClosePayment`).
    """
    order = lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    if payment is None or payment.status not in (PaymentStatus.CREATING, PaymentStatus.PENDING):
        # Nothing open at the provider: an overdue order can expire right away.
        overdue = order.payment_deadline is not None and order.payment_deadline <= now
        if order.status in AWAITING and overdue:
            expire_order(session, order, now=now)
        return None
    if order.status in AWAITING:
        order.stage_deadline = now + timedelta(seconds=LEASE_S)
    create = None
    if payment.provider_ref is None:
        create = _create_request(order, payment, order.payment_deadline or now, notify_base_url)
    request = ClosePayment(_ref(payment), f"close-{payment.out_trade_no}", create=create)
    return ProviderCall(order_id, payment.provider, request)


def expire_order(session: Session, order: Order, *, now: datetime) -> None:
    """Release the order's stock and move it to EXPIRED (order row locked by the caller)."""
    release_reservations(session, [order.id], now=now, reason="payment deadline passed")
    order.reason = "payment_timeout"
    order.stage_deadline = None
    move_order(session, order, OrderStatus.EXPIRED, reason="payment_timeout")


def finish_close(
    session: Session,
    order_id: str,
    request: ClosePayment,
    result: CloseResult,
    *,
    now: datetime,
) -> list[Followup]:
    """Record a close. A trade that turned out paid is treated as paid (or refunded if the
    order is already over); a closed one lets an overdue order expire.

    Raises :class:`ProviderUnavailable` (retry the close) when the provider found no trade for
    a create key that was rotated meanwhile: the new key may be creating one right now.
    """
    order = lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    assert payment is not None
    if not result.closed:
        return apply_status(session, order, payment, result.status, now=now, source="close")
    create = request.create
    never_created = result.status.state is PaymentState.NOT_FOUND
    if never_created and create is not None and create.idempotency_key != payment.idempotency_key:
        raise ProviderUnavailable(payment.provider, "create key rotated during close: close again")
    payment.provider_ref = payment.provider_ref or result.status.provider_ref
    _move_payment(session, payment, PaymentStatus.CLOSED, source="close")
    payment.next_query_at = None
    overdue = order.payment_deadline is not None and order.payment_deadline <= now
    if order.status in AWAITING and overdue:
        expire_order(session, order, now=now)
    return []


def cancel_order(
    session: Session, order_id: str, *, now: datetime, actor: str, reason: str
) -> list[Followup]:
    """Cancel before shipping: release stock now; close the trade or refund what was paid.

    Raises :class:`ConflictError` once the order may not be cancelled: past its stage, or PAID
    with a warehouse booking under way (a shipment row, written before the booking call under
    this same order lock). A parcel may be booked by then and the booking port cannot undo
    one, so cancelling would refund an order that still ships; the warehouse must cancel it.
    """
    order = lock_order(session, order_id)
    if order.status not in CANCELLABLE:
        raise ConflictError(f"order {order_id} is {order.status} and can no longer be cancelled")
    booking = select(Shipment.id).where(Shipment.order_id == order_id)
    if order.status == OrderStatus.PAID and session.scalar(booking) is not None:
        raise ConflictError(
            f"order {order_id} is being booked with the warehouse; cancel the parcel there first"
        )
    payment = lock_payment(session, order_id)
    release_reservations(session, [order.id], now=now, reason=f"cancelled: {reason}")
    order.reason = "cancelled"
    order.stage_deadline = None
    move_order(session, order, OrderStatus.CANCELLED, actor=actor, reason=reason)
    if payment is None:
        return []
    if payment.status in CAPTURED:
        followup = request_refund(
            session, order, payment, amount=None, refund_no=f"cancel-{payment.out_trade_no}",
            reason=reason, actor=actor, now=now,
        )  # fmt: skip
        return [followup] if followup else []
    if payment.status in (PaymentStatus.CREATING, PaymentStatus.PENDING):
        return [Followup(PAYMENTS_CLOSE, order_id)]
    return []


# -- refunds --------------------------------------------------------------------------------


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
            raise ConflictError(f"refund {refund_no} already exists with different details")
        return Followup(PAYMENTS_REFUND, existing.id) if existing.status == "REQUESTED" else None
    if payment.status not in CAPTURED:
        raise ValidationError("order", f"payment is {payment.status}; nothing to refund")
    committed = session.scalar(
        select(func.coalesce(func.sum(Refund.amount), 0)).where(
            Refund.payment_id == payment.id, Refund.status != RefundStatus.FAILED
        )
    )
    remaining = payment.amount - int(committed or 0)
    amount = remaining if amount is None else amount
    if amount <= 0 or amount > remaining:
        raise ValidationError("amount", f"must be between 1 and the refundable {remaining}")
    refund = Refund(
        payment_id=payment.id, order_id=order.id, refund_no=refund_no, amount=amount,
        currency=payment.currency, status=RefundStatus.REQUESTED, reason=reason[:200],
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


def prepare_refund(session: Session, refund_id: int) -> ProviderCall | None:
    refund = session.get(Refund, refund_id)
    if refund is None or refund.status not in (RefundStatus.REQUESTED, RefundStatus.PENDING):
        return None
    payment = session.get(Payment, refund.payment_id)
    assert payment is not None
    request = RefundRequest(
        ref=_ref(payment), refund_no=refund.refund_no,
        amount=Money(refund.amount, refund.currency), total=Money(payment.amount, payment.currency),
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
    _record_refund(session, payment, refund, result, now=now)


_REFUND_STATES = {
    RefundState.PENDING: RefundStatus.PENDING,
    RefundState.SUCCEEDED: RefundStatus.SUCCEEDED,
    RefundState.FAILED: RefundStatus.FAILED,
}


def _record_refund(
    session: Session, payment: Payment, refund: Refund, result: RefundResult, *, now: datetime
) -> None:
    target = _REFUND_STATES[result.state]
    refund.provider_refund_ref = refund.provider_refund_ref or result.provider_refund_ref
    if not refund_can_move(refund.status, target):
        return
    current = refund.status
    refund.status = target
    refund.raw_status = result.raw_status[:64]
    refund.next_query_at = now + timedelta(seconds=REFUND_QUERY_S) if target == "PENDING" else None
    timeline.record(
        session, refund.order_id, "refund", from_status=current, to_status=target,
        detail={"refund_no": refund.refund_no, "amount": refund.amount},
    )  # fmt: skip
    if target == RefundStatus.SUCCEEDED:
        payment.refunded_amount += refund.amount
        full = payment.refunded_amount >= payment.amount
        _move_payment(
            session, payment,
            PaymentStatus.REFUNDED if full else PaymentStatus.PARTIALLY_REFUNDED,
            refunded=payment.refunded_amount,
        )  # fmt: skip


def payment_view(session: Session, order_id: str) -> dict[str, Any] | None:
    """The payment and its refunds as shown by ``GET /v1/orders/{id}``."""
    payment = session.scalar(select(Payment).where(Payment.order_id == order_id))
    if payment is None:
        return None
    refunds = session.scalars(
        select(Refund).where(Refund.payment_id == payment.id).order_by(Refund.id)
    )
    return {
        "provider": payment.provider,
        "status": payment.status,
        "out_trade_no": payment.out_trade_no,
        "amount": payment.amount,
        "currency": payment.currency,
        "refunded_amount": payment.refunded_amount,
        "instructions": payment.instructions,
        "paid_at": payment.paid_at.isoformat() if payment.paid_at else None,
        "refunds": [
            {"refund_no": r.refund_no, "amount": r.amount, "status": r.status, "reason": r.reason}
            for r in refunds
        ],
    }
