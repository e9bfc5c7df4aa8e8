"""The payment as the API and the console show it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Payment, Refund
from services.payments.refunds import refundable


def payment_view(session: Session, order_id: str) -> dict[str, Any] | None:
    """The payment and its refunds as shown by ``GET /v1/orders/{id}``: ``amount`` is what the
    order asked for, ``captured_amount``/``captured_currency`` what the provider took (NULL
    before a capture), ``refundable`` what a refund may still take, ``attention`` why a person
    should look (NULL when nobody needs to)."""
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
        "captured_amount": payment.captured_amount,
        "captured_currency": payment.captured_currency,
        "refunded_amount": payment.refunded_amount,
        "refundable": refundable(session, payment) if payment.captured_amount is not None else 0,
        "attention": payment.attention,
        "instructions": payment.instructions,
        "paid_at": payment.paid_at.isoformat() if payment.paid_at else None,
        "refunds": [
            {"refund_no": r.refund_no, "amount": r.amount, "status": r.status, "reason": r.reason}
            for r in refunds
        ],
    }
