"""What the API, the CLI and the console show of an order's parcels (read only).

Every parcel of an order is shown, oldest first, cancelled ones included with why: its
warehouse, lines, booking key, waybill, tracking status and events.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Shipment, TrackingEvent
from models.logistics import OUTBOUND_ONLY
from services.parcels import parcel_lines


def shipment_view(session: Session, order_id: str) -> dict[str, Any] | None:
    """The order's first parcel (oldest live one, else the oldest): what the one-shipment
    views show until they show every parcel (:func:`parcels_view`)."""
    shipment = session.scalars(
        select(Shipment)
        .where(Shipment.order_id == order_id, OUTBOUND_ONLY)
        .order_by(Shipment.cancelled_at.is_not(None), Shipment.id)
        .limit(1)
    ).first()
    if shipment is None:
        return None
    view = _parcel_view(session, shipment)
    return {k: v for k, v in view.items() if k in _SHIPMENT_KEYS}


_SHIPMENT_KEYS = ("carrier", "waybill", "status", "raw_state", "subscribed", "next_poll_at",
                  "events")  # fmt: skip


def parcels_view(session: Session, order_id: str) -> list[dict[str, Any]]:
    """Every parcel of the order, oldest first, cancelled ones included (with why), each as
    :func:`shipment_view` shows one plus its id, warehouse, lines and booking key."""
    shipments = session.scalars(
        select(Shipment).where(Shipment.order_id == order_id, OUTBOUND_ONLY).order_by(Shipment.id)
    )
    return [_parcel_view(session, s) for s in shipments]


def _parcel_view(session: Session, shipment: Shipment) -> dict[str, Any]:
    events = session.scalars(
        select(TrackingEvent)
        .where(TrackingEvent.shipment_id == shipment.id)
        .order_by(TrackingEvent.occurred_at)
    )
    return {
        "id": shipment.id,
        "warehouse": shipment.warehouse,
        "lines": [{"sku": sku, "quantity": qty} for sku, qty in parcel_lines(session, shipment.id)],
        "booking_key": shipment.booking_key,
        "cancelled_at": shipment.cancelled_at.isoformat() if shipment.cancelled_at else None,
        "cancel_reason": shipment.cancel_reason,
        "carrier": shipment.carrier,
        "waybill": shipment.waybill,
        "status": shipment.status,
        "raw_state": shipment.raw_state,
        "subscribed": shipment.subscribed,
        "next_poll_at": shipment.next_poll_at.isoformat() if shipment.next_poll_at else None,
        "events": [
            {
                "at": e.occurred_at.isoformat(),
                "status": e.status,
                "raw_code": e.raw_code,
                "description": e.description,
                "location": e.location,
            }
            for e in events
        ],
    }
