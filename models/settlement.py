"""Settlement files (the providers' daily bills), their lines, and the differences found when
matching them against our payments and refunds (:mod:`services.settlement`).

* ``settlement_files``: one row per (provider, account, bill date, bill type). ``stored`` holds
  the verified raw file (``content``, ``sha256``, ``size``) and its lines; ``refused`` records a
  bad file's reason (``error``) with no content and no lines, until a later fetch stores a good
  one. ``matched_at`` is set once the day has been matched.
* ``settlement_lines``: the parsed lines of a stored file, unique per file and provider line id;
  ``payment_id``/``refund_id`` name our records once matched.
* ``settlement_differences``: what matching found, unique per (provider, account, date, kind,
  ref) so that matching twice records each once; resolved by a person (``resolved_at``,
  ``resolved_by``, ``resolution_note``), never used to change a payment.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt, Currency, MinorUnits, Timestamp, UpdatedAt


class SettlementFile(Base):
    __tablename__ = "settlement_files"
    __table_args__ = (
        UniqueConstraint(
            "provider", "account", "bill_date", "bill_type", name="uq_settlement_files_bill"
        ),
        CheckConstraint("status IN ('stored', 'refused')", name="status_known"),
        CheckConstraint(
            "status <> 'stored' OR (sha256 IS NOT NULL AND content IS NOT NULL)",
            name="stored_has_content",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(String(64))
    bill_date: Mapped[date] = mapped_column(Date)
    bill_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(BigInteger)
    content: Mapped[bytes | None] = mapped_column(LargeBinary)
    line_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    error: Mapped[str | None] = mapped_column(String(500))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    fetched_at: Mapped[Timestamp]
    matched_at: Mapped[Timestamp | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class SettlementLine(Base):
    __tablename__ = "settlement_lines"
    __table_args__ = (
        UniqueConstraint("file_id", "line_id", name="uq_settlement_lines_file_line"),
        Index("ix_settlement_lines_payment_ref", "payment_ref"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("settlement_files.id", ondelete="CASCADE"))
    line_no: Mapped[int] = mapped_column(Integer)
    line_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    raw_type: Mapped[str] = mapped_column(String(64))
    source_ref: Mapped[str | None] = mapped_column(String(128))
    payment_ref: Mapped[str | None] = mapped_column(String(128))
    refund_ref: Mapped[str | None] = mapped_column(String(128))
    merchant_payment_ref: Mapped[str | None] = mapped_column(String(128))
    merchant_refund_ref: Mapped[str | None] = mapped_column(String(128))
    amount: Mapped[MinorUnits]
    fee: Mapped[MinorUnits]
    net: Mapped[MinorUnits]
    currency: Mapped[Currency]
    occurred_at: Mapped[Timestamp]
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id"))
    refund_id: Mapped[int | None] = mapped_column(ForeignKey("refunds.id"))


class SettlementDifference(Base):
    __tablename__ = "settlement_differences"
    __table_args__ = (
        UniqueConstraint(
            "provider",
            "account",
            "bill_date",
            "kind",
            "ref",
            name="uq_settlement_differences_key",
        ),
        # The unresolved-differences gauge and the report's open list.
        Index(
            "ix_settlement_differences_open",
            "created_at",
            postgresql_where=text("resolved_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(String(64))
    bill_date: Mapped[date] = mapped_column(Date)
    kind: Mapped[str] = mapped_column(String(32))
    ref: Mapped[str] = mapped_column(String(128))
    currency: Mapped[Currency]
    ours: Mapped[int | None] = mapped_column(BigInteger)
    theirs: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[str] = mapped_column(String(300))
    line_id: Mapped[str | None] = mapped_column(String(128))
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id"))
    refund_id: Mapped[int | None] = mapped_column(ForeignKey("refunds.id"))
    created_at: Mapped[CreatedAt]
    resolved_at: Mapped[Timestamp | None]
    resolved_by: Mapped[str | None] = mapped_column(String(100))
    resolution_note: Mapped[str | None] = mapped_column(String(500))
