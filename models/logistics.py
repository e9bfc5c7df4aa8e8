"""Shipments and their deduplicated tracking events."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedAt, Timestamp, UpdatedAt


class Shipment(Base):
    """A parcel for an order. ``next_poll_at`` / ``lease_until`` drive the tracking scheduler."""

    __tablename__ = "shipments"
    __table_args__ = (
        UniqueConstraint("carrier", "waybill", name="uq_shipments_carrier_waybill"),
        Index("ix_shipments_next_poll_at", "next_poll_at"),
        Index("ix_shipments_waybill", "waybill"),  # console search (migration 0006)
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    booking_key: Mapped[str] = mapped_column(String(128), unique=True)
    carrier: Mapped[str | None] = mapped_column(String(32))
    waybill: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))  # domain.tracking.ShipmentStatus
    raw_state: Mapped[str | None] = mapped_column(String(32))
    subscribed: Mapped[bool] = mapped_column(server_default=text("false"))
    next_poll_at: Mapped[Timestamp | None]
    last_polled_at: Mapped[Timestamp | None]
    last_push_at: Mapped[Timestamp | None]
    last_event_at: Mapped[Timestamp | None]
    lease_until: Mapped[Timestamp | None]
    poll_failures: Mapped[int] = mapped_column(server_default=text("0"))
    #: When the provider said it had finished tracking the parcel (services.tracking.finish):
    #: never polled again, and no later result moves the shipment or its order.
    tracking_ended_at: Mapped[Timestamp | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class TrackingEvent(Base):
    __tablename__ = "tracking_events"
    __table_args__ = (
        UniqueConstraint("shipment_id", "dedupe_key", name="uq_tracking_events_dedupe"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    shipment_id: Mapped[int] = mapped_column(ForeignKey("shipments.id"), index=True)
    occurred_at: Mapped[Timestamp]
    status: Mapped[str] = mapped_column(String(32))
    raw_code: Mapped[str | None] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(String(500))
    location: Mapped[str | None] = mapped_column(String(200))
    dedupe_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[CreatedAt]
