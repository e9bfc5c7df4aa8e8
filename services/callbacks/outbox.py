"""Recording: one ``callback_deliveries`` row per status change, written inside the transaction
that changes the order (a transactional outbox), so a change is announced iff it commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Row, func, insert, select, text
from sqlalchemy.orm import Session

from domain.orders import OrderStatus
from models import CallbackDelivery, Shipment, TrackingEvent
from services.callbacks.rules import EVENT_TYPE, PAUSED, PENDING, SHIPPED_OR_LATER


class OrderFields(Protocol):
    """What an event says about the order: an ``Order`` row or an :class:`OrderSnapshot`."""

    @property
    def id(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def external_id(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def total_amount(self) -> int: ...
    @property
    def currency(self) -> str: ...


@dataclass(frozen=True, slots=True)
class OrderSnapshot:
    """For callers that changed the order without an ``Order`` object (intake's INSERT)."""

    id: str
    source: str
    external_id: str
    currency: str
    total_amount: int = 0
    reason: str | None = None


# Runs on every status change of every order: a plain statement, built once.
_ACTIVE_ENDPOINT = text(
    "SELECT id, paused_at FROM callback_endpoints WHERE source = :source AND active"
)


def record_status_change(
    session: Session, order: OrderFields, previous: str | None, target: str
) -> None:
    """Queue the event "``order`` moved from ``previous`` to ``target``" for the order's source.

    Must run in the transaction that changes the status (it never commits). Cost: one
    unique-index lookup when the source has no active endpoint; otherwise that, the payment or
    shipment lookups the event needs, and one INSERT. A paused endpoint still gets its rows
    (as PAUSED), delivered once it is resumed.
    """
    record_status_changes(session, [order], previous, target)


def record_status_changes(
    session: Session, orders: Sequence[OrderFields], previous: str | None, target: str
) -> None:
    """:func:`record_status_change` for many orders making the same move (a batch), with one
    endpoint lookup per source instead of one per order."""
    endpoints: dict[str, Row[Any] | None] = {}
    for order in orders:
        if order.source not in endpoints:
            endpoints[order.source] = (
                session.connection()
                .execute(_ACTIVE_ENDPOINT, {"source": order.source})
                .one_or_none()
            )
        endpoint = endpoints[order.source]
        if endpoint is None:
            continue
        session.execute(
            insert(CallbackDelivery).values(
                event_id=uuid.uuid4(),
                endpoint_id=endpoint.id,
                order_id=order.id,
                event_type=EVENT_TYPE,
                payload=_payload(session, order, previous, target),
                status=PENDING if endpoint.paused_at is None else PAUSED,
                next_attempt_at=func.now(),
            )
        )


def _payload(
    session: Session, order: OrderFields, previous: str | None, target: str
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "order": {
            "id": order.id,
            "source": order.source,
            "external_id": order.external_id,
            "status": str(target),
            "previous_status": str(previous) if previous is not None else None,
            "reason": order.reason,
            "total_amount": order.total_amount,
            "currency": order.currency,
        }
    }
    if target == OrderStatus.AWAITING_PAYMENT:
        data["payment"] = _payment_part(session, order.id)
    if target in SHIPPED_OR_LATER or (
        target == OrderStatus.NEEDS_ATTENTION and previous in SHIPPED_OR_LATER
    ):
        data["tracking"] = _tracking_part(session, order.id)
    return data


def _payment_part(session: Session, order_id: str) -> dict[str, Any] | None:
    """What the customer needs to pay: the fields of ``GET /v1/orders/{id}``'s payment."""
    from services.payments import payment_view  # payments -> order_state -> callbacks

    view = payment_view(session, order_id)
    if view is None:
        return None
    keys = ("provider", "status", "out_trade_no", "amount", "currency", "instructions")
    return {key: view[key] for key in keys}


def _tracking_part(session: Session, order_id: str) -> dict[str, Any] | None:
    """Carrier, waybill and the latest tracking event only (not the whole history)."""
    shipment = session.scalar(
        select(Shipment).where(Shipment.order_id == order_id).order_by(Shipment.id.desc()).limit(1)
    )
    if shipment is None:
        return None
    latest = session.scalar(
        select(TrackingEvent)
        .where(TrackingEvent.shipment_id == shipment.id)
        .order_by(TrackingEvent.occurred_at.desc())
        .limit(1)
    )
    return {
        "carrier": shipment.carrier,
        "waybill": shipment.waybill,
        "status": shipment.status,
        "latest": None
        if latest is None
        else {
            "at": latest.occurred_at.isoformat(),
            "status": latest.status,
            "description": latest.description,
            "location": latest.location,
        },
    }
