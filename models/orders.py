"""Orders, their lines, stock reservations and the per-order timeline."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, CreatedAt, Currency, Json, MinorUnits, Timestamp, UpdatedAt


class Order(Base):
    """An order as accepted from upstream. ``status`` follows ``domain.orders`` transitions.

    ``stage_deadline`` is when the sweeper must act if nothing else has moved the order on
    (re-drive a lost message, or expire an unpaid reservation). ``delivered_at`` and
    ``receipt_confirmed_at`` are stamped (by the database's clock) when the order enters
    DELIVERED and RECEIPT_CONFIRMED; the receipt sweep (:mod:`services.receipt`) counts the
    auto-receive delay and the after-sale window from them. ``body_hash`` detects the same
    ``(source, external_id)`` sent again with a different body.
    """

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("source", "external_id", name="uq_orders_source_external_id"),
        CheckConstraint("total_amount >= 0", name="total_not_negative"),
        CheckConstraint("discount_amount >= 0", name="discount_not_negative"),
        Index("ix_orders_status_deadline", "status", "stage_deadline"),
        Index("ix_orders_created_at", "created_at"),
        Index("ix_orders_external_id", "external_id"),  # console search (migration 0006)
        # The console's order list, newest first per filter (migration 0011).
        Index("ix_orders_status_created_at", "status", "created_at"),
        Index("ix_orders_source_created_at", "source", "created_at"),
        Index("ix_orders_payment_provider_created_at", "payment_provider", "created_at"),
        # The receipt sweep's two claims (migration 0020): small, only the orders waiting.
        Index(
            "ix_orders_delivered_at",
            "delivered_at",
            postgresql_where=text("status = 'DELIVERED'"),
        ),
        Index(
            "ix_orders_receipt_confirmed_at",
            "receipt_confirmed_at",
            postgresql_where=text("status = 'RECEIPT_CONFIRMED'"),
        ),
        Index(
            "ix_orders_reason_created_at",
            "created_at",
            postgresql_where=text("reason IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(128))
    body_hash: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("users.id"), index=True)
    customer_ref: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(String(200))
    currency: Mapped[Currency]
    total_amount: Mapped[MinorUnits]
    #: Minor units off the lines' catalog total (the order message's ``discount``); the total
    #: is charged less it, and each line's share is stored on the line (``charged_amount``).
    discount_amount: Mapped[MinorUnits] = mapped_column(server_default=text("0"))
    payment_provider: Mapped[str] = mapped_column(String(32))
    shipping_address: Mapped[Json]
    stage_deadline: Mapped[Timestamp | None]
    payment_deadline: Mapped[Timestamp | None]  # set at reservation; unpaid orders expire then
    stage_attempts: Mapped[int] = mapped_column(server_default=text("0"))
    delivered_at: Mapped[Timestamp | None]
    receipt_confirmed_at: Mapped[Timestamp | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]

    lines: Mapped[list[OrderLine]] = relationship(
        back_populates="order", order_by="OrderLine.line_no", lazy="selectin"
    )


class OrderLine(Base):
    __tablename__ = "order_lines"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        UniqueConstraint("order_id", "line_no", name="uq_order_lines_order_line"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    line_no: Mapped[int]
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int]
    unit_amount: Mapped[MinorUnits | None]  # priced at reservation time from the catalog
    #: What the line was charged once an order-level discount is split over the lines
    #: (:func:`domain.aftersale.line_shares`); None when the order had no discount.
    charged_amount: Mapped[MinorUnits | None]

    order: Mapped[Order] = relationship(back_populates="lines")


class Reservation(Base):
    """Stock held for an order in one warehouse until ``expires_at``.

    ``status``: ACTIVE -> RELEASED (expired/cancelled) or CONSUMED (shipped). A partial unique
    index keeps one active reservation per (order, sku, warehouse).
    """

    __tablename__ = "reservations"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        Index(
            "uq_reservations_active",
            "order_id",
            "sku",
            "warehouse",
            unique=True,
            postgresql_where=text("status = 'ACTIVE'"),
        ),
        Index(
            "ix_reservations_active_expiry",
            "expires_at",
            postgresql_where=text("status = 'ACTIVE'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    sku: Mapped[str] = mapped_column(String(64))
    warehouse: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), server_default=text("'ACTIVE'"))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[CreatedAt]
    released_at: Mapped[Timestamp | None]


class OrderEvent(Base):
    """The order's timeline: transitions, task attempts, provider calls, notifications, notes."""

    __tablename__ = "order_events"
    __table_args__ = (
        Index("ix_order_events_order_id_id", "order_id", "id"),
        # Console throughput over the last hour (migration 0006).
        Index(
            "ix_order_events_transition_created_at",
            "created_at",
            postgresql_where=text("kind = 'transition'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[str] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict[str, Any] | None]
    actor: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[CreatedAt]
