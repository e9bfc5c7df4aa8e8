"""What every payment use case shares: the statuses an order awaits payment in, the re-drive
intervals, :class:`ProviderCall`, and locking and moving a payment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from adapters.payments.base import (
    PaymentProvider,
    PaymentRef,
)
from domain.money import Money
from domain.orders import OrderStatus
from domain.payments import PaymentStatus, payment_can_move
from models import Order, Payment, ProcessedNotification
from services import timeline
from services.order_state import move_order
from services.stock import release_reservations

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


#: The payment port by provider name (``adapters.registry.payment_provider`` in the workers).
Providers = Callable[[str], PaymentProvider]


@dataclass(frozen=True, slots=True)
class PaymentConfig:
    """The payment stage's settings, passed in (services read no settings themselves)."""

    notify_base_url: str
    #: A create that has not finished within this is re-driven by the sweeper.
    create_redrive_s: int = 30
    #: The first status query after a create; later ones back off (see ``claim_due``).
    first_query_s: float = 5.0
    #: A create with less than this left before the payment deadline is not sent: the order
    #: expires instead (nobody can pay in that time, and WeChat Pay refuses a ``time_expire``
    #: in the past, which would page an operator for work that was simply late).
    create_min_left_s: float = 1.0


_LOCK_PAYMENT = select(Payment).where(Payment.order_id == bindparam("order_id")).with_for_update()


def lock_payment(session: Session, order_id: str) -> Payment | None:
    return session.scalars(_LOCK_PAYMENT, {"order_id": order_id}).one_or_none()


def move_payment(session: Session, payment: Payment, target: PaymentStatus, **detail: Any) -> bool:
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


def first_delivery(session: Session, provider: str, event_id: str) -> bool:
    """Record a verified notification's event id; False when it was recorded before (a repeat
    delivery, to be acknowledged and ignored). In the caller's transaction, so a rollback
    forgets it and the provider's retry is applied."""
    inserted = session.execute(
        pg_insert(ProcessedNotification)
        .values(provider=provider, event_id=event_id[:128])
        .on_conflict_do_nothing(constraint="uq_processed_notifications_event")
        .returning(ProcessedNotification.id)
    ).scalar_one_or_none()
    return inserted is not None


def captured_money(payment: Payment) -> Money:
    """What the provider captured: refunds are bounded by it and sent against it. The order's
    amount until a capture is recorded (and for payments captured before migration 0013)."""
    if payment.captured_amount is None:
        return Money(payment.amount, payment.currency)
    return Money(payment.captured_amount, payment.captured_currency or payment.currency)


def provider_ref(payment: Payment) -> PaymentRef:
    return PaymentRef(payment.out_trade_no, payment.provider_ref)


def expire_order(session: Session, order: Order, *, now: datetime) -> None:
    """Release the order's stock and move it to EXPIRED (order row locked by the caller)."""
    release_reservations(session, [order.id], now=now, reason="payment deadline passed")
    order.reason = "payment_timeout"
    order.stage_deadline = None
    move_order(session, order, OrderStatus.EXPIRED, reason="payment_timeout")
