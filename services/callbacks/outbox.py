"""Recording: one ``callback_deliveries`` row per status change, written inside the transaction
that changes the order (a transactional outbox), so a change is announced iff it commits.

Parcels: an order shipped as several parcels (one per warehouse) announces each parcel's change
exactly once. A parcel change that moves the order is told by the order's
``order.status_changed`` event, whose ``tracking`` is that parcel; one that leaves the order
where it is (the second parcel booked while a third waits, one parcel in transit while the
order already is) is told by an ``order.parcel_updated`` event (:func:`record_parcel_change`)
whose ``parcel`` says what moved. Both carry ``parcels``: every live parcel of the order, with
its warehouse, lines, waybill, status and latest tracking event."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Row, func, insert, select, text
from sqlalchemy.orm import Session

from domain.orders import OrderStatus
from models import CallbackDelivery, Shipment, ShipmentLine, TrackingEvent
from models.logistics import OUTBOUND_ONLY
from services.callbacks.rules import (
    EVENT_TYPE,
    PARCEL_EVENT_TYPE,
    PAUSED,
    PENDING,
    SHIPPED_OR_LATER,
)


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
    session: Session,
    order: OrderFields,
    previous: str | None,
    target: str,
    *,
    parcel_id: int | None = None,
) -> None:
    """Queue the event "``order`` moved from ``previous`` to ``target``" for the order's source.

    Must run in the transaction that changes the status (it never commits). Cost: one
    unique-index lookup when the source has no active endpoint; otherwise that, the payment or
    shipment lookups the event needs, and one INSERT. A paused endpoint still gets its rows
    (as PAUSED), delivered once it is resumed. ``parcel_id``: the parcel whose change moved
    the order, shown as the event's ``tracking`` (else the newest parcel).
    """
    record_status_changes(session, [order], previous, target, parcel_id=parcel_id)


def record_status_changes(
    session: Session,
    orders: Sequence[OrderFields],
    previous: str | None,
    target: str,
    *,
    parcel_id: int | None = None,
) -> None:
    """:func:`record_status_change` for many orders making the same move (a batch), with one
    endpoint lookup per source instead of one per order."""
    endpoints: dict[str, Row[Any] | None] = {}
    for order in orders:
        if order.source not in endpoints:
            endpoints[order.source] = _endpoint(session, order.source)
        endpoint = endpoints[order.source]
        if endpoint is not None:
            payload = _payload(session, order, previous, target, parcel_id)
            _insert(session, endpoint, order.id, EVENT_TYPE, payload)


def record_parcel_change(
    session: Session,
    order: OrderFields,
    order_status: str,
    parcel_id: int,
    previous: str | None,
    target: str,
) -> None:
    """Queue the event "parcel ``parcel_id`` of ``order`` moved from ``previous`` to
    ``target``" (``order.parcel_updated``) for a parcel change that left the order's status
    where it is, ``order_status`` (module docstring; ``previous`` None: the parcel was just
    booked). Same transaction and cost rules as
    :func:`record_status_change`."""
    endpoint = _endpoint(session, order.source)
    if endpoint is None:
        return
    parcels = _parcels_part(session, order.id)
    moved = next((p for p in parcels if p["id"] == parcel_id), None)
    payload: dict[str, Any] = {
        "order": _order_part(order, order_status, order_status),
        "parcel": {**(moved or {"id": parcel_id}), "previous_status": previous,
                   "status": target},
        "parcels": parcels,
    }  # fmt: skip
    _insert(session, endpoint, order.id, PARCEL_EVENT_TYPE, payload)


def _endpoint(session: Session, source: str) -> Row[Any] | None:
    return session.connection().execute(_ACTIVE_ENDPOINT, {"source": source}).one_or_none()


def _insert(
    session: Session, endpoint: Row[Any], order_id: str, event_type: str, payload: dict[str, Any]
) -> None:
    session.execute(
        insert(CallbackDelivery).values(
            event_id=uuid.uuid4(),
            endpoint_id=endpoint.id,
            order_id=order_id,
            event_type=event_type,
            payload=payload,
            status=PENDING if endpoint.paused_at is None else PAUSED,
            next_attempt_at=func.now(),
        )
    )


def _payload(
    session: Session,
    order: OrderFields,
    previous: str | None,
    target: str,
    parcel_id: int | None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"order": _order_part(order, previous, target)}
    if target == OrderStatus.AWAITING_PAYMENT:
        data["payment"] = _payment_part(session, order.id)
    if target in SHIPPED_OR_LATER or (
        target == OrderStatus.NEEDS_ATTENTION and previous in SHIPPED_OR_LATER
    ):
        parcels = _parcels_part(session, order.id)
        data["tracking"] = _tracking_part(parcels, parcel_id)
        data["parcels"] = parcels
    return data


def _order_part(order: OrderFields, previous: str | None, status: str) -> dict[str, Any]:
    return {
        "id": order.id,
        "source": order.source,
        "external_id": order.external_id,
        "status": str(status),
        "previous_status": str(previous) if previous is not None else None,
        "reason": order.reason,
        "total_amount": order.total_amount,
        "currency": order.currency,
    }


def _payment_part(session: Session, order_id: str) -> dict[str, Any] | None:
    """What the customer needs to pay: the fields of ``GET /v1/orders/{id}``'s payment."""
    from services.payments import payment_view  # payments -> order_state -> callbacks

    view = payment_view(session, order_id)
    if view is None:
        return None
    keys = ("provider", "status", "out_trade_no", "amount", "currency", "instructions")
    return {key: view[key] for key in keys}


def _tracking_part(parcels: list[dict[str, Any]], parcel_id: int | None) -> dict[str, Any] | None:
    """Carrier, waybill, status and latest event of the parcel that moved the order (else the
    newest live parcel): the one-parcel view receivers had before parcels."""
    if not parcels:
        return None
    chosen = next((p for p in parcels if p["id"] == parcel_id), parcels[-1])
    return {k: chosen[k] for k in ("carrier", "waybill", "status", "latest")}


def _parcels_part(session: Session, order_id: str) -> list[dict[str, Any]]:
    """Every live (not cancelled) parcel of the order, oldest first. ORM queries, so a parcel
    the session holds shows its unflushed change (tracking flushes once, at commit)."""
    shipments = list(
        session.scalars(
            select(Shipment)
            .where(Shipment.order_id == order_id, Shipment.cancelled_at.is_(None), OUTBOUND_ONLY)
            .order_by(Shipment.id)
        )
    )
    if not shipments:
        return []
    ids = [sh.id for sh in shipments]
    lines: dict[int, list[dict[str, Any]]] = {}
    for sid, sku, qty in session.execute(
        select(ShipmentLine.shipment_id, ShipmentLine.sku, ShipmentLine.quantity)
        .where(ShipmentLine.shipment_id.in_(ids))
        .order_by(ShipmentLine.shipment_id, ShipmentLine.sku)
    ):
        lines.setdefault(sid, []).append({"sku": sku, "quantity": qty})
    latest = {
        e.shipment_id: e
        for e in session.scalars(
            select(TrackingEvent)
            .where(TrackingEvent.shipment_id.in_(ids))
            .order_by(TrackingEvent.shipment_id, TrackingEvent.occurred_at.desc())
            .distinct(TrackingEvent.shipment_id)
        )
    }
    return [_parcel_part(sh, lines.get(sh.id, []), latest.get(sh.id)) for sh in shipments]


def _parcel_part(
    sh: Shipment, lines: list[dict[str, Any]], latest: TrackingEvent | None
) -> dict[str, Any]:
    return {
        "id": sh.id,
        "warehouse": sh.warehouse,
        "lines": lines,
        "carrier": sh.carrier,
        "waybill": sh.waybill,
        "status": str(sh.status),
        "latest": None if latest is None else {
            "at": latest.occurred_at.isoformat(), "status": latest.status,
            "description": latest.description, "location": latest.location,
        },
    }  # fmt: skip
