"""Provider disputes (chargebacks and inquiries) on captured payments, one row per dispute.

A row is the newest state orderflow has applied from the provider's notifications
(:mod:`services.payments.disputes`): ``status`` is the provider's own (Stripe's
``warning_needs_response`` … ``won``/``lost``), ``event_at`` the creation time of the event that
last moved it (an older event arriving late does not overwrite it), ``outcome`` set once closed.
"""

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
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt, Currency, MinorUnits, Timestamp, UpdatedAt


class Dispute(Base):
    __tablename__ = "disputes"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="amount_not_negative"),
        CheckConstraint(
            "funds_withdrawn >= 0 AND funds_reinstated >= 0", name="funds_not_negative"
        ),
        UniqueConstraint("provider", "provider_dispute_id", name="uq_disputes_provider_dispute_id"),
        # The Attention page's open disputes, soonest evidence deadline first.
        Index("ix_disputes_open_due", "evidence_due_by", postgresql_where=text("outcome IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    provider_dispute_id: Mapped[str] = mapped_column(String(128))
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id"))
    amount: Mapped[MinorUnits]
    currency: Mapped[Currency]
    reason: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    evidence_due_by: Mapped[Timestamp | None]
    has_evidence: Mapped[bool] = mapped_column(server_default=text("false"))
    # Money the provider took from (and gave back to) the balance, in minor units.
    funds_withdrawn: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    funds_reinstated: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    outcome: Mapped[str | None] = mapped_column(String(16))  # won | lost | closed (inquiry)
    event_at: Mapped[Timestamp]  # creation time of the event whose state this row holds
    closed_at: Mapped[Timestamp | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
