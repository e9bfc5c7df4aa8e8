"""Payments at providers and their refunds. Idempotency keys are stored before any call."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt, Currency, MinorUnits, Timestamp, UpdatedAt


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        UniqueConstraint("provider", "out_trade_no", name="uq_payments_provider_out_trade_no"),
        Index("ix_payments_next_query_at", "next_query_at"),
        # A dispute names its payment by the provider's reference (Stripe pi_…): the webhook
        # finds it through this index (migration 0012).
        Index(
            "ix_payments_provider_provider_ref",
            "provider",
            "provider_ref",
            postgresql_where=text("provider_ref IS NOT NULL"),
        ),
        # The Attention page's flagged payments (migration 0013).
        Index(
            "ix_payments_attention", "updated_at", postgresql_where=text("attention IS NOT NULL")
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # One payment per order: a retry reuses it (and its idempotency key), never a second one.
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), unique=True)
    provider: Mapped[str] = mapped_column(String(32))
    out_trade_no: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    amount: Mapped[MinorUnits]
    currency: Mapped[Currency]
    refunded_amount: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    status: Mapped[str] = mapped_column(String(32))
    raw_status: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(String(500))
    provider_ref: Mapped[str | None] = mapped_column(String(128))
    instructions: Mapped[dict[str, Any] | None]
    paid_at: Mapped[Timestamp | None]
    # What the provider captured (NULL before a capture); may differ from amount/currency.
    captured_amount: Mapped[int | None] = mapped_column(BigInteger)
    captured_currency: Mapped[str | None] = mapped_column(String(3))
    # Why a person should look at this payment (its order cannot move any more); cleared when
    # acknowledged.
    attention: Mapped[str | None] = mapped_column(String(300))
    next_query_at: Mapped[Timestamp | None]
    query_attempts: Mapped[int] = mapped_column(server_default=text("0"))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class Refund(Base):
    __tablename__ = "refunds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        Index("ix_refunds_next_query_at", "next_query_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id"), index=True)
    order_id: Mapped[str] = mapped_column(String(36), index=True)
    refund_no: Mapped[str] = mapped_column(String(64), unique=True)
    amount: Mapped[MinorUnits]
    currency: Mapped[Currency]
    status: Mapped[str] = mapped_column(String(32))
    raw_status: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(String(200))
    provider_refund_ref: Mapped[str | None] = mapped_column(String(128))
    next_query_at: Mapped[Timestamp | None]
    actor: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class RefundLookup(Base):
    """A provider refund look-up that is owed (``services.payments.provider_refunds``, rule 3):
    written in the transaction of the notification that asked for it, deleted once its answer
    is applied, re-driven by the payment poll when ``due_at`` passes (migration 0016). A table,
    not a column on ``payments``: Alipay can owe several at once (one per unknown refund)."""

    __tablename__ = "refund_lookups"
    __table_args__ = (
        UniqueConstraint("payment_id", "refund_no", name="uq_refund_lookups_payment_refund"),
        Index("ix_refund_lookups_due_at", "due_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id"))
    # The provider's number of the one refund to ask about; '' asks for all of the payment's.
    refund_no: Mapped[str] = mapped_column(String(64), server_default=text("''"))
    due_at: Mapped[Timestamp]
    # Re-drives so far (the backoff's exponent); a new notification asking again resets it.
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    # Notifications that asked: a look-up deletes the row only if none asked after it read it.
    requests: Mapped[int] = mapped_column(server_default=text("1"))
    created_at: Mapped[CreatedAt]
