"""Status callbacks to upstream systems: one endpoint per source, and the delivery log (outbox).

``callback_deliveries`` is a transactional outbox: a row is inserted in the same transaction as
the order's status change (``services.callbacks.record_status_change``), so a change is
announced if and only if it committed. Workers then deliver the rows over HTTP; the latest
attempt's outcome is written back on the row, and every attempt is a ``callback_attempts`` row:
together they are the delivery log.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt, Timestamp, UpdatedAt


class CallbackEndpoint(Base):
    """Where a source wants its orders' status changes, and the endpoint's health.

    ``secret`` is the shared HMAC-SHA256 key. Signing needs it back, so it cannot be hashed: it
    is stored encrypted, and ``secret_format`` says how (``services.secrets_at_rest``):

    * ``fernet``: a Fernet token under ``KEY_ENCRYPTION_KEY`` (what registration writes);
    * ``clear``: the secret itself, in rows written before migration 0009 (the column's server
      default, so a row inserted by code that predates it is marked correctly too). They keep
      working; ``orderflow keys reencrypt`` encrypts them.

    Treat it like a password even encrypted: never log it, never print it after registration,
    never put it (or its token) in an API response.

    ``paused_at`` is set after ``consecutive_failures`` reached the pause threshold; nothing is
    attempted until an operator resumes the endpoint. ``retry_after`` gates the whole endpoint
    after a failure (one probe per backoff period, not one per pending delivery), so a dead
    receiver costs little.
    """

    __tablename__ = "callback_endpoints"
    __table_args__ = (
        CheckConstraint("secret_format IN ('clear', 'fernet')", name="secret_format_known"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source: Mapped[str] = mapped_column(String(64), unique=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(Text)  # a Fernet token of up to 200 characters is longer
    secret_format: Mapped[str] = mapped_column(String(8), server_default=text("'clear'"))
    active: Mapped[bool] = mapped_column(server_default=text("true"))
    paused_at: Mapped[Timestamp | None]
    retry_after: Mapped[Timestamp | None]
    consecutive_failures: Mapped[int] = mapped_column(server_default=text("0"))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]

    def __repr__(self) -> str:  # never the secret
        return f"CallbackEndpoint(id={self.id!r}, source={self.source!r}, url={self.url!r})"


class CallbackDelivery(Base):
    """One event for one endpoint. ``event_id`` is stable across retries and resends.

    ``status``: PENDING (due at ``next_attempt_at``; while claimed, ``next_attempt_at`` is pushed
    forward as a lease) -> DELIVERED, or FAILED after the last allowed attempt, or PAUSED while
    the endpoint is paused (back to PENDING on resume). ``payload`` is the event's ``data``; it
    may carry payment instructions (e.g. a Stripe client secret) meant for the upstream system,
    so it is as sensitive as ``payments.instructions``.
    """

    __tablename__ = "callback_deliveries"
    __table_args__ = (
        CheckConstraint(
            "status IN ('PENDING', 'DELIVERED', 'FAILED', 'PAUSED')", name="status_known"
        ),
        Index("ix_callback_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_callback_deliveries_order_id", "order_id"),
        Index("ix_callback_deliveries_endpoint_id_status", "endpoint_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    endpoint_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("callback_endpoints.id", ondelete="CASCADE")
    )
    order_id: Mapped[str] = mapped_column(String(36))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), server_default=text("'PENDING'"))
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    next_attempt_at: Mapped[Timestamp | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[CreatedAt]
    delivered_at: Mapped[Timestamp | None]


class CallbackAttempt(Base):
    """One counted POST of a delivery (``callback_deliveries.attempts`` counts these rows): when,
    the receiver's status code or our error (never a secret or the body), and how long it took.
    Deleted with its delivery."""

    __tablename__ = "callback_attempts"
    __table_args__ = (Index("ix_callback_attempts_delivery_id_id", "delivery_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("callback_deliveries.id", ondelete="CASCADE")
    )
    at: Mapped[Timestamp]
    ok: Mapped[bool]
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None]
