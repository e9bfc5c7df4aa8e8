"""Read models for a run's report (``orderflow demo`` and the benchmarks): outcomes by status,
captured payments by provider, how fast orders entered a status, and who still has to pay."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from domain.orders import OrderStatus
from domain.payments import CAPTURED
from models import Order, OrderEvent, Payment


def outcome_counts(session: Session) -> list[tuple[str, str | None, str, int]]:
    """``(status, reason, payment provider, orders)``, sorted."""
    rows = session.execute(
        select(Order.status, Order.reason, Order.payment_provider, func.count())
        .group_by(Order.status, Order.reason, Order.payment_provider)
        .order_by(Order.status, Order.reason, Order.payment_provider)
    ).all()
    return [(status, reason, provider, n) for status, reason, provider, n in rows]


def captured_by_provider(session: Session) -> dict[str, int]:
    """Payments recorded as captured (paid, or refunded after), per provider."""
    rows = session.execute(
        select(Payment.provider, func.count())
        .where(Payment.status.in_([str(s) for s in CAPTURED]))
        .group_by(Payment.provider)
    ).all()
    return {provider: n for provider, n in rows}


def entered(session: Session, status: str) -> tuple[int, datetime | None, datetime | None]:
    """How many orders moved into ``status``, and the first and last such move."""
    n, first, last = session.execute(
        select(
            func.count(), func.min(OrderEvent.created_at), func.max(OrderEvent.created_at)
        ).where(OrderEvent.kind == "transition", OrderEvent.to_status == status)
    ).one()
    return int(n), first, last


def awaiting_payment(session: Session) -> list[tuple[str, str, str, str]]:
    """``(order id, external id, provider, out_trade_no)`` of every order awaiting payment."""
    rows = session.execute(
        select(Order.id, Order.external_id, Payment.provider, Payment.out_trade_no)
        .join(Payment, Payment.order_id == Order.id)
        .where(Order.status == OrderStatus.AWAITING_PAYMENT)
    ).all()
    return [(oid, ext, provider, trade) for oid, ext, provider, trade in rows]
