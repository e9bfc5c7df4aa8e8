"""Operational tables: dead letters and processed inbound notifications."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Index, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt, Timestamp


class DeadLetter(Base):
    """A task that exhausted its retries (or failed for good), with what is needed to replay it."""

    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_status", "status"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    task_name: Mapped[str] = mapped_column(String(200))
    task_id: Mapped[str | None] = mapped_column(String(64))
    args: Mapped[list[Any]] = mapped_column(JSONB)
    kwargs: Mapped[dict[str, Any]]
    queue: Mapped[str | None] = mapped_column(String(64))
    order_id: Mapped[str | None] = mapped_column(String(36), index=True)
    error_class: Mapped[str] = mapped_column(String(200))
    error_message: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), server_default=text("'OPEN'"))
    created_at: Mapped[CreatedAt]
    resolved_at: Mapped[Timestamp | None]


class ProcessedNotification(Base):
    """Inbound provider notifications already applied, keyed by the provider's event id."""

    __tablename__ = "processed_notifications"
    __table_args__ = (
        UniqueConstraint("provider", "event_id", name="uq_processed_notifications_event"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(128))
    order_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[CreatedAt]
