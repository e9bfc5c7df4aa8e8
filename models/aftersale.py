"""After-sale: returns (refund-only, return-and-refund, exchange) and their lines (issue 22).

The rules live in :mod:`domain.aftersale`; the use cases in :mod:`services.returns`."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, CreatedAt, Currency, MinorUnits, Timestamp, UpdatedAt


class Return(Base):
    """One after-sale request on an order. ``status`` follows
    :data:`domain.aftersale.RETURN_TRANSITIONS` for its ``kind``.

    ``parcel_due_at``: by when an approved return's parcel must be shipped back (its waybill
    registered), else the sweep closes it. ``refund_no`` is the refund's idempotent number,
    stored with the refund in the transaction that settles the return.
    """

    __tablename__ = "returns"
    __table_args__ = (
        CheckConstraint("refund_amount IS NULL OR refund_amount >= 0", name="refund_not_negative"),
        # The sweep's claim (returns whose parcel was not shipped back in time): small.
        Index(
            "ix_returns_parcel_due_at",
            "parcel_due_at",
            postgresql_where=text("status = 'AWAITING_PARCEL' AND waybill IS NULL"),
        ),
        Index("ix_returns_status_created_at", "status", "created_at"),
        # The client's number for the request: the same number is the same return.
        UniqueConstraint("order_id", "return_no", name="uq_returns_order_return_no"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    return_no: Mapped[str | None] = mapped_column(String(64))  # the client's, if it gave one
    kind: Mapped[str] = mapped_column(String(24))  # domain.aftersale.ReturnKind
    status: Mapped[str] = mapped_column(String(24))  # domain.aftersale.ReturnStatus
    reason: Mapped[str] = mapped_column(String(200))
    requested_by: Mapped[str] = mapped_column(String(100))
    decided_by: Mapped[str | None] = mapped_column(String(100))
    decision_note: Mapped[str | None] = mapped_column(String(200))
    currency: Mapped[Currency]
    refund_amount: Mapped[MinorUnits | None]
    refund_no: Mapped[str | None] = mapped_column(String(64), unique=True)
    parcel_due_at: Mapped[Timestamp | None]
    carrier: Mapped[str | None] = mapped_column(String(32))
    waybill: Mapped[str | None] = mapped_column(String(64))
    warehouse: Mapped[str | None] = mapped_column(String(64))  # where it was received
    approved_at: Mapped[Timestamp | None]
    received_at: Mapped[Timestamp | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]

    lines: Mapped[list[ReturnLine]] = relationship(
        back_populates="ret", order_by="ReturnLine.line_no", lazy="selectin"
    )


class ReturnLine(Base):
    """Units of one order line in a return, and what the warehouse found when it arrived:
    ``restocked + damaged + lost == quantity`` once received (all 0 before)."""

    __tablename__ = "return_lines"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint(
            "restocked >= 0 AND damaged >= 0 AND lost >= 0 "
            "AND restocked + damaged + lost IN (0, quantity)",
            name="disposition_adds_up",
        ),
        UniqueConstraint("return_id", "line_no", name="uq_return_lines_return_line"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    return_id: Mapped[int] = mapped_column(ForeignKey("returns.id", ondelete="CASCADE"))
    line_no: Mapped[int]  # the order line's
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int]
    restocked: Mapped[int] = mapped_column(server_default=text("0"))
    damaged: Mapped[int] = mapped_column(server_default=text("0"))
    lost: Mapped[int] = mapped_column(server_default=text("0"))
    refund_amount: Mapped[MinorUnits | None]

    ret: Mapped[Return] = relationship(back_populates="lines")
