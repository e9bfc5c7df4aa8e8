"""Operator actions and the delivery log: resend an event with its own id, list deliveries with
their attempts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.errors import NotFound, ValidationError
from models import CallbackDelivery, CallbackEndpoint
from models.callbacks import CallbackAttempt
from services.callbacks.rules import DELIVERY_STATUSES, EVENT_TYPE, PAUSED, PENDING


def resend(
    session: Session, *, now: datetime, event_id: str | None = None, order_id: str | None = None
) -> int:
    """Send an event (or every event of an order) again, with the SAME event id.

    The delivery gets a fresh retry budget (``attempts`` starts again from 0) and is due now;
    on a paused endpoint it waits, PAUSED, for :func:`resume`. Returns how many were queued.
    """
    if (event_id is None) == (order_id is None):
        raise ValidationError("event_id", "give exactly one of an event id or an order id")
    stmt = select(CallbackDelivery).with_for_update()
    if event_id is not None:
        try:
            stmt = stmt.where(CallbackDelivery.event_id == uuid.UUID(event_id))
        except ValueError:
            raise ValidationError("event_id", f"not a UUID: {event_id!r}") from None
    else:
        stmt = stmt.where(CallbackDelivery.order_id == order_id)
    deliveries = list(session.scalars(stmt.order_by(CallbackDelivery.id)))
    if not deliveries:
        what = f"event {event_id}" if event_id is not None else f"order {order_id}"
        raise NotFound(
            f"no callback deliveries for {what}",
            field="event_id" if event_id is not None else "order_id",
        )
    paused = set(
        session.scalars(
            select(CallbackEndpoint.id).where(
                CallbackEndpoint.id.in_({d.endpoint_id for d in deliveries}),
                CallbackEndpoint.paused_at.is_not(None),
            )
        )
    )
    for d in deliveries:
        d.status = PAUSED if d.endpoint_id in paused else PENDING
        d.attempts, d.next_attempt_at, d.delivered_at = 0, now, None
    return len(deliveries)


@dataclass(frozen=True, slots=True)
class AttemptView:
    at: datetime
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class DeliveryView:
    id: int
    event_id: str
    source: str
    order_id: str
    order_status: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: tuple[AttemptView, ...] = ()
    #: ``order.status_changed`` or ``order.parcel_updated``; for the latter, what moved:
    #: ``"parcel 12 (north) → IN_TRANSIT"``.
    event_type: str = EVENT_TYPE
    parcel: str | None = None


def list_deliveries(
    session: Session,
    *,
    order_id: str | None = None,
    status: str | None = None,
    source: str | None = None,
    limit: int = 100,
) -> list[DeliveryView]:
    """The delivery log, newest first, each with its attempts oldest first (payloads are not
    included: they may hold secrets)."""
    if status is not None and status not in DELIVERY_STATUSES:
        raise ValidationError("status", f"one of {', '.join(DELIVERY_STATUSES)}")
    if not 1 <= limit <= 10_000:
        raise ValidationError("limit", "1 to 10000")
    stmt = (
        select(CallbackDelivery, CallbackEndpoint.source)
        .join(CallbackEndpoint, CallbackEndpoint.id == CallbackDelivery.endpoint_id)
        .order_by(CallbackDelivery.id.desc())
        .limit(limit)
    )
    if order_id is not None:
        stmt = stmt.where(CallbackDelivery.order_id == order_id)
    if status is not None:
        stmt = stmt.where(CallbackDelivery.status == status)
    if source is not None:
        stmt = stmt.where(CallbackEndpoint.source == source)
    found = session.execute(stmt).tuples().all()
    log = _attempts(session, [d.id for d, _ in found])
    return [
        DeliveryView(
            d.id,
            str(d.event_id),
            src,
            d.order_id,
            str(d.payload.get("order", {}).get("status")),
            d.status,
            d.attempts,
            d.last_status_code,
            d.last_error,
            d.next_attempt_at,
            d.created_at,
            d.delivered_at,
            tuple(log.get(d.id, ())),
            d.event_type,
            _parcel_moved(d.payload),
        )
        for d, src in found
    ]


def _parcel_moved(payload: dict[str, Any]) -> str | None:
    parcel = payload.get("parcel")
    if not isinstance(parcel, dict):
        return None
    return f"parcel {parcel.get('id')} ({parcel.get('warehouse')}) → {parcel.get('status')}"


def _attempts(session: Session, delivery_ids: list[int]) -> dict[int, list[AttemptView]]:
    log: dict[int, list[AttemptView]] = {}
    if not delivery_ids:
        return log
    rows = session.scalars(
        select(CallbackAttempt)
        .where(CallbackAttempt.delivery_id.in_(delivery_ids))
        .order_by(CallbackAttempt.delivery_id, CallbackAttempt.id)
    )
    for a in rows:
        log.setdefault(a.delivery_id, []).append(
            AttemptView(a.at, a.ok, a.status_code, a.error, a.duration_ms)
        )
    return log
