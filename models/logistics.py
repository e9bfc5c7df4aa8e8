"""Shipments (parcels: one per warehouse of an order), their lines and their deduplicated
tracking events."""

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

from models.base import Base, CreatedAt, Timestamp, UpdatedAt


class Shipment(Base):
    """A parcel of an order, leaving from ``warehouse`` with its :class:`ShipmentLine` units.
    ``next_poll_at`` / ``lease_until`` drive the tracking scheduler.

    One parcel per (order, warehouse, seq) (migration 0018): the planned parcel of a warehouse
    is ``seq`` 1, created once under the order's lock, so a crash or retry never creates (or,
    its booking key being derived from the three, books) a second one; a parcel re-allocated
    to a warehouse that already had one of this order gets the next ``seq``. A parcel is live
    until ``cancelled_at`` (refused by the warehouse and re-allocated, or cancelled with the
    order's unshipped part); it is booked once it has a waybill. ``booking_sent_at``: the
    booking call may have reached the warehouse, so the shop alone can no longer cancel it.

    ``direction`` is OUTBOUND for the order's parcels (and an exchange's replacements) and
    RETURN for a buyer's parcel coming back (``return_id``, issue 22): tracked the same way,
    but never one of the order's parcels (:data:`OUTBOUND_ONLY` filters every query of those).
    """

    __tablename__ = "shipments"
    __table_args__ = (
        UniqueConstraint("carrier", "waybill", name="uq_shipments_carrier_waybill"),
        UniqueConstraint("order_id", "warehouse", "seq", name="uq_shipments_order_warehouse_seq"),
        CheckConstraint("seq > 0", name="seq_positive"),
        Index("ix_shipments_next_poll_at", "next_poll_at"),
        Index("ix_shipments_waybill", "waybill"),  # console search (migration 0006)
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    booking_key: Mapped[str] = mapped_column(String(128), unique=True)
    #: The warehouse the parcel leaves from; NULL only for a legacy parcel whose order's
    #: reservations named several warehouses (it carries the whole order).
    warehouse: Mapped[str | None] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(server_default=text("1"))
    booking_sent_at: Mapped[Timestamp | None]
    cancelled_at: Mapped[Timestamp | None]
    cancel_reason: Mapped[str | None] = mapped_column(String(200))
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
    direction: Mapped[str] = mapped_column(String(8), server_default=text("'OUTBOUND'"))
    return_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("returns.id"))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


OUTBOUND, RETURN = "OUTBOUND", "RETURN"
#: The order's own parcels (outbound), not a buyer's return coming back.
OUTBOUND_ONLY = Shipment.direction == OUTBOUND


class ShipmentLine(Base):
    """The units a parcel carries: one row per SKU."""

    __tablename__ = "shipment_lines"
    __table_args__ = (
        UniqueConstraint("shipment_id", "sku", name="uq_shipment_lines_shipment_sku"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    shipment_id: Mapped[int] = mapped_column(ForeignKey("shipments.id", ondelete="CASCADE"))
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int]


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
