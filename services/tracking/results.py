"""Applying what a poll or a push says about a shipment: events inserted once, the status moved
forward only, and the order moved or flagged as :func:`domain.tracking.order_follows` decides.
Locks the order, then the shipment (the order every stage takes)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import bindparam, select, text
from sqlalchemy.orm import Session

from adapters.logistics.base import TrackingEvent as TrackingEventDTO
from adapters.logistics.base import TrackingResult
from domain.errors import NotFound
from domain.orders import OrderStatus
from domain.parcels import Parcel, follow_parcels
from domain.tracking import (
    ShipmentStatus,
    can_advance,
    is_final,
    order_follows,
)
from models import Order, Shipment
from models.logistics import RETURN
from services import callbacks, timeline
from services.order_state import lock_order, move_order
from services.return_state import parcel_moved

Source = Literal["poll", "push"]
ACTOR = "tracking"


def apply_result(
    session: Session,
    shipment_id: int,
    result: TrackingResult,
    *,
    now: datetime,
    source: Source,
) -> None:
    """Apply what the provider says about a shipment, idempotently and forward-only.

    Locks the order, then the shipment. Events are inserted once (deduplicated on
    :func:`event_dedupe_key`). The status moves only if :func:`domain.tracking.can_advance`
    allows it and the result is not older than what is known (its newest event is not before
    ``last_event_at``); otherwise the result is recorded on the timeline as ignored. A change
    of status moves the order (module docstring). On a shipment whose tracking has ended
    (:mod:`services.tracking.finish`) only unseen events are kept: the status, the order and
    ``last_event_at`` stay, and a result that brought anything is on the timeline as ignored.
    Raises NotFound for an unknown shipment.
    """
    apply_locking(session, shipment_id, result, now=now, source=source)


def event_dedupe_key(at: datetime, raw_code: str, description: str) -> str:
    """sha256 hex (64 chars) of the event's UTC time, raw code and description.

    The time is normalized to UTC so the same event parsed with another offset (a push and a
    query) gets the same key; a separator keeps ``("1", "2x")`` and ``("12", "x")`` apart.
    """
    utc = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    text = "\x1f".join((utc.isoformat(), raw_code, description))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:64]


# Built once (a poll runs these for every shipment): building them cost more than running them.
_LOCK_SHIPMENT = (
    select(Shipment).where(Shipment.id == bindparam("shipment_id")).with_for_update(of=Shipment)
)
_ORDER_OF_SHIPMENT = text("SELECT order_id FROM shipments WHERE id = :shipment_id")


def lock_shipment(session: Session, shipment_id: int) -> Shipment:
    shipment = session.scalars(_LOCK_SHIPMENT, {"shipment_id": shipment_id}).one_or_none()
    if shipment is None:
        raise NotFound(f"shipment {shipment_id} not found", field="shipment_id")
    return shipment


def apply_locking(
    session: Session, shipment_id: int, result: TrackingResult, *, now: datetime, source: Source
) -> Shipment:
    # order_id never changes, so reading it before taking any lock is safe.
    order_id = (
        session.connection()
        .execute(_ORDER_OF_SHIPMENT, {"shipment_id": shipment_id})
        .scalar_one_or_none()
    )
    if order_id is None:
        raise NotFound(f"shipment {shipment_id} not found", field="shipment_id")
    order = lock_order(session, order_id)
    shipment = lock_shipment(session, shipment_id)
    # Pending row changes are flushed once, by the caller's next query or commit, instead of
    # before every insert below (a poll batch does one UPDATE per shipment, not two).
    with session.no_autoflush:
        _apply_locked(session, order, shipment, result, now=now, source=source)
    return shipment


def _apply_locked(
    session: Session,
    order: Order,
    shipment: Shipment,
    result: TrackingResult,
    *,
    now: datetime,
    source: Source,
) -> None:
    new_events = _insert_events(session, shipment.id, result.events)
    current = ShipmentStatus(shipment.status)
    target = ShipmentStatus(result.status)
    newest = max((e.at for e in result.events), default=None)
    # A result whose newest event predates what we know is old data (a delayed push, a lagging
    # provider replica). A result without events makes no claim about time.
    stale = (
        newest is not None
        and shipment.last_event_at is not None
        and (newest < shipment.last_event_at)
    )
    if shipment.tracking_ended_at is not None:  # the provider is finished: a person decides
        _ignore_after_end(session, order.id, shipment.id, current, result, new_events, source)
        return
    if newest is not None and (shipment.last_event_at is None or newest > shipment.last_event_at):
        shipment.last_event_at = newest
    if source == "push":
        shipment.last_push_at = now
    detail: dict[str, Any] = {
        "shipment_id": shipment.id, "source": source, "new_events": new_events,
        "raw_state": result.raw_state,
    }  # fmt: skip
    if target != current and (stale or not can_advance(current, target)):
        detail.update(ignored="stale" if stale else "not_forward", reported=target.value)
        timeline.record(
            session, order.id, "tracking", from_status=current, to_status=current,
            detail=detail, actor=ACTOR,
        )  # fmt: skip
        return
    if not stale and result.raw_state:
        shipment.raw_state = result.raw_state[:32]
    if target == current:
        if new_events:
            timeline.record(
                session, order.id, "tracking", from_status=current, to_status=current,
                detail=detail, actor=ACTOR,
            )  # fmt: skip
        return
    shipment.status = target
    if is_final(target):
        shipment.next_poll_at = None  # polling stops; keeps the due-index scan short
    timeline.record(
        session, order.id, "tracking", from_status=current, to_status=target,
        detail=detail, actor=ACTOR,
    )  # fmt: skip
    _follow_shipment(session, order, shipment, result, current, now=now, source=source)


def _ignore_after_end(
    session: Session,
    order_id: str,
    shipment_id: int,
    current: ShipmentStatus,
    result: TrackingResult,
    new_events: int,
    source: Source,
) -> None:
    """A result for a shipment whose tracking ended: its unseen events are already stored;
    one that brought anything (events or another status) is on the timeline as ignored, a
    plain duplicate writes nothing."""
    if not new_events and ShipmentStatus(result.status) == current:
        return
    detail = {
        "shipment_id": shipment_id, "source": source, "new_events": new_events,
        "raw_state": result.raw_state, "ignored": "tracking_ended",
        "reported": ShipmentStatus(result.status).value,
    }  # fmt: skip
    timeline.record(
        session, order_id, "tracking", from_status=current, to_status=current, detail=detail,
        actor=ACTOR,
    )  # fmt: skip


def _insert_events(session: Session, shipment_id: int, events: Iterable[TrackingEventDTO]) -> int:
    """Insert unseen events; returns how many were new."""
    rows: dict[str, dict[str, Any]] = {}
    for e in events:
        key = event_dedupe_key(e.at, e.raw_code, e.description)
        rows.setdefault(
            key,
            {
                "shipment_id": shipment_id,
                "occurred_at": e.at,
                "status": str(e.status),
                "raw_code": e.raw_code[:32] or None,
                "description": e.description[:500],
                "location": e.location[:200] or None,
                "dedupe_key": key,
            },
        )
    if not rows:
        return 0
    columns = ("occurred_at", "status", "raw_code", "description", "location", "dedupe_key")
    params: dict[str, Any] = {c: [r[c] for r in rows.values()] for c in columns}
    params["shipment_id"] = shipment_id
    return len(session.connection().execute(_INSERT_EVENTS, params).all())


# One statement whatever the number of events (a multi-row VALUES is compiled anew for every
# count); the unique (shipment_id, dedupe_key) drops the ones already stored.
_INSERT_EVENTS = text(
    """
    INSERT INTO tracking_events (shipment_id, occurred_at, status, raw_code, description,
                                 location, dedupe_key)
    SELECT :shipment_id, e.* FROM unnest(
        CAST(:occurred_at AS timestamptz[]), CAST(:status AS text[]), CAST(:raw_code AS text[]),
        CAST(:description AS text[]), CAST(:location AS text[]), CAST(:dedupe_key AS text[])
    ) AS e
    ON CONFLICT ON CONSTRAINT uq_tracking_events_dedupe DO NOTHING
    RETURNING id
    """
)


# -- the order follows its shipment ---------------------------------------------------------


def _follow_shipment(
    session: Session,
    order: Order,
    shipment: Shipment,
    result: TrackingResult,
    previous: ShipmentStatus,
    *,
    now: datetime,
    source: str,
) -> None:
    """Move or flag the (locked) order after its shipment moved from ``previous`` to
    ``shipment.status``: as
    :func:`domain.tracking.order_follows` decides for a one-parcel order (as always), as
    :func:`domain.parcels.follow_parcels` decides from all its live parcels otherwise."""
    if shipment.direction == RETURN:  # a buyer's parcel coming back: its return follows
        parcel_moved(session, shipment, now=now)
        return
    status = ShipmentStatus(shipment.status)
    what = _exception_text(result) if status == ShipmentStatus.EXCEPTION else ""
    parcels = _live_parcels(session, order.id, shipment)
    detail: dict[str, Any] = {"source": source, "waybill": result.waybill}
    if len(parcels) > 1:
        moved = next(p for p in parcels if p.id == shipment.id)
        follow = follow_parcels(order.status, order.reason, parcels, moved,
                                returned=result.returned, exception_text=what)  # fmt: skip
        detail["parcel"] = moved.label
    else:
        follow = order_follows(order.status, order.reason, status, returned=result.returned,
                               exception_text=what)  # fmt: skip
    for target in follow.moves:
        if order.status == OrderStatus.NEEDS_ATTENTION:
            order.reason = None  # the carrier resolved what the order was flagged for
        if target == OrderStatus.PARTIALLY_SHIPPED:
            order.stage_deadline = now  # parcels are left to book: the sweeper re-drives it
        move_order(session, order, target, actor=ACTOR, parcel_id=shipment.id, **detail)
    if follow.flag is not None:
        order.reason = follow.flag[:200]
        move_order(session, order, OrderStatus.NEEDS_ATTENTION, actor=ACTOR, reason=follow.flag,
                   parcel_id=shipment.id, **detail)  # fmt: skip
    if not follow.moves and follow.flag is None:  # the order stays: the parcel tells its move
        callbacks.record_parcel_change(session, order, order.status, shipment.id, previous,
                                       shipment.status)  # fmt: skip


_LIVE_PARCELS = text(
    "SELECT id, warehouse, waybill IS NOT NULL, status FROM shipments "
    "WHERE order_id = :order_id AND cancelled_at IS NULL AND direction = 'OUTBOUND' ORDER BY id"
)


def _live_parcels(session: Session, order_id: str, moved: Shipment) -> list[Parcel]:
    """The order's live parcels, ``moved`` with its new (not yet flushed) status."""
    rows = session.connection().execute(_LIVE_PARCELS, {"order_id": order_id})
    return [
        Parcel(pid, warehouse, booked, ShipmentStatus(moved.status if pid == moved.id else st))
        for pid, warehouse, booked, st in rows
    ]


def _exception_text(result: TrackingResult) -> str:
    """The newest exception event's description (else the provider's note, else the newest
    event's, else the raw state): what an operator reads first."""
    for e in reversed(result.events):
        if ShipmentStatus(e.status) == ShipmentStatus.EXCEPTION:
            return e.description
    if result.note:
        return result.note
    if result.events:
        return result.events[-1].description
    return f"state {result.raw_state or 'unknown'}"
