"""The tracking stage: which shipments to poll, and what a poll or push result changes.

Scheduling (beat, then a task; DESIGN.md §3.5 — no row lock during a provider call):

1. :func:`claim_due` — one short transaction: ``FOR UPDATE SKIP LOCKED`` the shipments whose
   ``next_poll_at`` passed and set a lease, so two beats never claim the same shipment. Commit.
2. The task layer takes rate-limit tokens (``adapters.ratelimit.TokenBucket.reserve``), hands
   the shipments it has no token for back with :func:`release_lease`, and queries the provider
   for the rest with no transaction open (:func:`poll_targets` gives what to send).
3. :func:`record_poll` — a new transaction per result (or per batch): apply it, clear the lease
   and schedule the next poll from the policy in :mod:`domain.tracking`.

Pushes go straight to :func:`apply_result` (``source="push"``). Locks are taken order first, then
shipment — the same order as every other stage — so a push and a poll of the same parcel
serialize on the order row and never deadlock. Shipment statuses only move forward
(:func:`domain.tracking.can_advance`); a stale or out-of-order result still adds its unseen
events, and is recorded on the timeline as ignored.

The order follows its shipment: SHIPPED -> IN_TRANSIT -> DELIVERED -> COMPLETED; EXCEPTION and
EXPIRED -> NEEDS_ATTENTION with the reason. An order flagged by a tracking exception is moved on
again when the carrier resolves the problem (a later IN_TRANSIT or DELIVERED); an order flagged
for any other reason is left to the operator.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import bindparam, case, func, null, or_, select, text, update
from sqlalchemy.orm import Session

from adapters.logistics.base import TrackingEvent as TrackingEventDTO
from adapters.logistics.base import TrackingResult
from domain.errors import NotFound
from domain.orders import OrderStatus
from domain.tracking import (
    FINAL,
    Cadence,
    ShipmentStatus,
    can_advance,
    is_final,
    next_poll_delay,
    order_follows,
)
from models import Order, Shipment
from services import timeline
from services.order_state import lock_order, move_order

Source = Literal["poll", "push"]

_FINAL = sorted(s.value for s in FINAL)
_ACTOR = "tracking"


@dataclass(frozen=True, slots=True)
class PollTarget:
    """What the task layer needs to query one claimed shipment."""

    shipment_id: int
    order_id: str
    carrier: str
    waybill: str
    phone: str | None  # Kuaidi100 needs it for some carriers (SF, ZTO)
    has_push: bool


# -- scheduling -----------------------------------------------------------------------------


def claim_due(
    session: Session, *, now: datetime, limit: int, lease_s: float, min_interval_s: float
) -> list[int]:
    """Claim up to ``limit`` shipments due for a poll now; their ids, most overdue first.

    :func:`claim_ahead` with no horizon.
    """
    claimed = claim_ahead(
        session, now=now, horizon_s=0.0, limit=limit, lease_s=lease_s,
        min_interval_s=min_interval_s,
    )  # fmt: skip
    return [sid for sid, _ in claimed]


def claim_ahead(
    session: Session,
    *,
    now: datetime,
    horizon_s: float,
    limit: int,
    lease_s: float,
    min_interval_s: float,
) -> list[tuple[int, datetime]]:
    """Claim up to ``limit`` shipments due within ``horizon_s``; ``(id, due)`` pairs, most
    overdue first, where ``due`` is ``max(next_poll_at, now)``.

    Due: ``next_poll_at <= now + horizon_s``, carrier and waybill known, status not final, no
    live lease (``lease_until`` NULL or past) and not polled within ``min_interval_s`` of its
    due time (Kuaidi100 locks a number queried more often). The caller must not query a
    shipment before its ``due``: the scheduler publishes each chunk for its latest due time,
    so a beat tick of ``horizon_s`` polls every shipment on time rather than up to a tick late.
    Claimed rows get ``lease_until =`` :func:`lease_expiry` — the claim's *lease token*: a
    re-claim happens only after the lease expired, so it writes a later value, and a poll task
    holding an older token finds its rows gone (:func:`poll_targets`). Rows another transaction
    holds are skipped, and a committed lease excludes them from the next claim, so concurrent
    claimers never get the same shipment. ``lease_s`` must exceed the poll task's hard time
    limit: an expired lease makes the shipment claimable again.
    """
    horizon = now + timedelta(seconds=horizon_s)
    lease_until = lease_expiry(now, horizon_s=horizon_s, lease_s=lease_s)
    due_at = func.greatest(Shipment.next_poll_at, now)  # when the poll may go out
    due = (
        select(Shipment.id)
        .where(
            Shipment.next_poll_at <= horizon,
            Shipment.carrier.is_not(None),
            Shipment.waybill.is_not(None),
            Shipment.status.not_in(_FINAL),
            or_(Shipment.lease_until.is_(None), Shipment.lease_until < now),
            or_(
                Shipment.last_polled_at.is_(None),
                Shipment.last_polled_at <= due_at - timedelta(seconds=min_interval_s),
            ),
        )
        .order_by(Shipment.next_poll_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    rows = session.execute(
        update(Shipment)
        .where(Shipment.id == due.c.id)
        .values(lease_until=lease_until)
        .returning(Shipment.id, Shipment.next_poll_at)
        .execution_options(synchronize_session=False)
    ).all()
    # next_poll_at is never NULL on a claimed row (the WHERE compares it).
    ordered = sorted((at, int(sid)) for sid, at in rows if at is not None)
    return [(sid, at if at > now else now) for at, sid in ordered]


def lease_expiry(now: datetime, *, horizon_s: float, lease_s: float) -> datetime:
    """The ``lease_until`` a claim at ``now`` writes (and the token its poll tasks carry)."""
    return now + timedelta(seconds=horizon_s) + timedelta(seconds=lease_s)


def release_lease(
    session: Session,
    shipment_ids: Sequence[int],
    *,
    now: datetime,
    retry_in_s: float,
    lease_until: datetime | None = None,
) -> None:
    """Hand back claimed shipments that were not polled (e.g. no rate-limit token): clear the
    lease and retry at ``now + retry_in_s``. ``last_polled_at`` is untouched — no query went
    out. A shipment that became final meanwhile (a push) keeps ``next_poll_at`` NULL. With
    ``lease_until`` (the claim's token) only rows still leased under it are touched."""
    if not shipment_ids:
        return
    retry_at = now + timedelta(seconds=retry_in_s)
    held = [] if lease_until is None else [Shipment.lease_until == lease_until]
    session.execute(
        update(Shipment)
        .where(Shipment.id.in_(list(shipment_ids)), *held)
        .values(
            lease_until=None,
            next_poll_at=case((Shipment.status.in_(_FINAL), null()), else_=retry_at),
        )
        .execution_options(synchronize_session=False)
    )


def _still_ours(lease_until: datetime | None, now: datetime) -> Any:
    """Rows still leased to the caller: under its token, or (no token) under any live lease."""
    if lease_until is None:
        return Shipment.lease_until >= now
    return Shipment.lease_until == lease_until


def _outside_min_interval(now: datetime, min_interval_s: float) -> Any:
    return or_(
        Shipment.last_polled_at.is_(None),
        Shipment.last_polled_at <= now - timedelta(seconds=min_interval_s),
    )


def poll_targets(
    session: Session,
    shipment_ids: Sequence[int],
    *,
    now: datetime,
    push_window_s: float,
    lease_until: datetime | None,
    min_interval_s: float,
) -> list[PollTarget]:
    """Carrier, waybill and phone of the claimed shipments that may be queried now (no locks).

    Only shipments still leased to the caller (``lease_until`` = the claim's token; None: any
    live lease) and last queried at least ``min_interval_s`` ago are returned: a recorded poll
    clears the lease, so a retried or redelivered chunk skips the members already done, and a
    chunk whose lease expired and was claimed again skips them all. :func:`start_poll` makes the
    final, atomic check right before each query.

    ``has_push`` is true for a subscribed shipment that received a push within
    ``push_window_s`` — pass it to :func:`record_poll`. A subscription that never pushed does
    not count: Kuaidi100 only pushes once it has a trace.
    """
    if not shipment_ids:
        return []
    rows = session.execute(
        select(Shipment, Order.shipping_address)
        .join(Order, Order.id == Shipment.order_id)
        .where(
            Shipment.id.in_(list(shipment_ids)),
            _still_ours(lease_until, now),
            _outside_min_interval(now, min_interval_s),
        )
        .order_by(Shipment.id)
    ).all()
    targets = []
    for shipment, address in rows:
        if shipment.carrier is None or shipment.waybill is None:
            continue
        phone = address.get("phone") if isinstance(address, dict) else None
        targets.append(
            PollTarget(
                shipment_id=shipment.id,
                order_id=shipment.order_id,
                carrier=shipment.carrier,
                waybill=shipment.waybill,
                phone=str(phone) if phone else None,
                has_push=_recent_push(shipment, now, push_window_s),
            )
        )
    return targets


@dataclass(frozen=True, slots=True)
class PollStarted:
    """A query may go out: ``last_polled_at`` is now ``at``; ``previous`` is what it was, for
    :func:`abandon_poll` should the query not be sent after all."""

    previous: datetime | None
    at: datetime


def start_poll(
    session: Session,
    shipment_id: int,
    *,
    now: datetime,
    lease_until: datetime | None,
    min_interval_s: float,
) -> PollStarted | None:
    """Atomically take the right to query one claimed shipment now; None if it must not be.

    Compare-and-set: succeeds only if the shipment is still leased to the caller (as in
    :func:`poll_targets`) and was last queried at least ``min_interval_s`` ago, and then sets
    ``last_polled_at = now`` *before* the query goes out. So two executions of the same chunk
    (a retry, an acks-late redelivery running beside the original) never both query a waybill,
    and a query whose outcome was never recorded (the task died) still counts for the minimum
    interval. A shipment refused because it is inside its minimum interval but still leased to
    the caller is handed back, due once the interval has passed.
    """
    prev = (
        select(Shipment.id, Shipment.last_polled_at.label("prev"))
        .where(Shipment.id == shipment_id)
        .with_for_update()
        .subquery()
    )
    row = session.execute(
        update(Shipment)
        .where(
            Shipment.id == prev.c.id,
            _still_ours(lease_until, now),
            _outside_min_interval(now, min_interval_s),
            Shipment.status.not_in(_FINAL),
        )
        .values(last_polled_at=now)
        .returning(prev.c.prev)
        .execution_options(synchronize_session=False)
    ).first()
    if row is not None:
        return PollStarted(previous=row[0], at=now)
    hand_back_recent(
        session, [shipment_id], now=now, lease_until=lease_until, min_interval_s=min_interval_s
    )
    return None


def hand_back_recent(
    session: Session,
    shipment_ids: Sequence[int],
    *,
    now: datetime,
    lease_until: datetime | None,
    min_interval_s: float,
) -> int:
    """Hand back the shipments still leased to the caller but queried within ``min_interval_s``
    (an earlier run of the chunk queried them and died before recording, or the task runs a
    hair before its due time): lease cleared, due once the interval has passed. Returns how
    many."""
    if not shipment_ids:
        return 0
    allowed_at = Shipment.last_polled_at + timedelta(seconds=min_interval_s)
    result = session.execute(
        update(Shipment)
        .where(
            Shipment.id.in_(list(shipment_ids)),
            _still_ours(lease_until, now),
            Shipment.last_polled_at > now - timedelta(seconds=min_interval_s),
        )
        .values(
            lease_until=None,
            next_poll_at=case(
                (Shipment.status.in_(_FINAL), null()),
                else_=func.greatest(Shipment.next_poll_at, allowed_at),
            ),
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def abandon_poll(
    session: Session,
    shipment_id: int,
    started: PollStarted,
    *,
    now: datetime,
    retry_in_s: float,
) -> None:
    """The query taken by :func:`start_poll` was not sent (e.g. the circuit is open): restore
    ``last_polled_at``, clear the lease and retry at ``now + retry_in_s``."""
    retry_at = now + timedelta(seconds=retry_in_s)
    session.execute(
        update(Shipment)
        .where(Shipment.id == shipment_id, Shipment.last_polled_at == started.at)
        .values(
            last_polled_at=started.previous,
            lease_until=None,
            next_poll_at=case((Shipment.status.in_(_FINAL), null()), else_=retry_at),
        )
        .execution_options(synchronize_session=False)
    )


def defer_pushed(
    session: Session,
    shipment_ids: Sequence[int],
    *,
    now: datetime,
    lease_until: datetime | None,
    cadence: Cadence,
) -> list[int]:
    """Hand back the claimed shipments a push refreshed since their last poll; their ids.

    Polling is the fallback to pushes: a shipment whose last push is newer than its last query
    is due again only one push-stretched interval (:func:`domain.tracking.next_poll_delay` with
    ``has_push``) after that push. Those still inside it get ``next_poll_at`` pushed back to
    that moment and their lease cleared; the rest stay claimed.
    """
    if not shipment_ids:
        return []
    rows = session.scalars(
        select(Shipment)
        .where(
            Shipment.id.in_(list(shipment_ids)),
            _still_ours(lease_until, now),
            Shipment.subscribed.is_(True),
            Shipment.last_push_at.is_not(None),
            or_(Shipment.last_polled_at.is_(None), Shipment.last_push_at > Shipment.last_polled_at),
            Shipment.poll_failures == 0,  # backing off after errors: the backoff rules
        )
        .with_for_update(skip_locked=True)
    ).all()
    deferred = []
    for shipment in rows:
        assert shipment.last_push_at is not None  # the WHERE says so
        age = (now - (shipment.last_event_at or shipment.created_at)).total_seconds()
        delay = next_poll_delay(
            shipment.status, last_event_age_s=age, has_push=True, failures=0, cadence=cadence
        )
        if delay is None:
            continue  # final: the poll is skipped anyway
        fallback_at = shipment.last_push_at + timedelta(seconds=delay)
        if fallback_at > now:
            shipment.next_poll_at = fallback_at
            shipment.lease_until = None
            deferred.append(shipment.id)
    return deferred


def _recent_push(shipment: Shipment, now: datetime, window_s: float) -> bool:
    last = shipment.last_push_at
    return shipment.subscribed and last is not None and (now - last).total_seconds() <= window_s


def record_poll(
    session: Session,
    shipment_id: int,
    *,
    now: datetime,
    result: TrackingResult | None,
    failed: bool,
    cadence: Cadence,
    has_push: bool,
    error: str | None = None,
) -> None:
    """Record one poll of a claimed shipment and schedule the next one.

    Applies ``result`` (as :func:`apply_result` with ``source="poll"``), sets
    ``last_polled_at = now``, clears the lease, counts consecutive failures (``failed``: the
    query raised; ``error`` goes on the timeline) and sets ``next_poll_at`` from
    :func:`domain.tracking.next_poll_delay` — NULL once the shipment is final.
    """
    if failed and result is not None:
        raise ValueError("a failed poll has no result")
    if result is not None:
        shipment = _apply(session, shipment_id, result, now=now, source="poll")
    else:
        shipment = _lock_shipment(session, shipment_id)  # no order lock needed: no order move
    shipment.last_polled_at = now
    shipment.lease_until = None
    shipment.poll_failures = shipment.poll_failures + 1 if failed else 0
    delay = next_poll_delay(
        shipment.status,
        last_event_age_s=(now - (shipment.last_event_at or shipment.created_at)).total_seconds(),
        has_push=has_push,
        failures=shipment.poll_failures,
        cadence=cadence,
    )
    shipment.next_poll_at = None if delay is None else now + timedelta(seconds=delay)
    if failed:
        timeline.record(
            session, shipment.order_id, "tracking",
            detail={"shipment_id": shipment.id, "poll_failed": shipment.poll_failures,
                    "error": (error or "unknown")[:200], "retry_in_s": delay},
            actor=_ACTOR,
        )  # fmt: skip


def stale_shipments(
    session: Session, *, now: datetime, stale_after_s: float, limit: int
) -> list[tuple[int, str, datetime | None]]:
    """Active (not final) shipments with no new event for ``stale_after_s`` — measured from
    ``last_event_at``, or from ``created_at`` for a shipment without any event — longest quiet
    first, as ``(shipment id, order id, last_event_at)``. For the staleness alert."""
    quiet_since = func.coalesce(Shipment.last_event_at, Shipment.created_at)
    rows = session.execute(
        select(Shipment.id, Shipment.order_id, Shipment.last_event_at)
        .where(
            Shipment.status.not_in(_FINAL),
            quiet_since < now - timedelta(seconds=stale_after_s),
        )
        .order_by(quiet_since, Shipment.id)
        .limit(limit)
    ).all()
    return [(row[0], row[1], row[2]) for row in rows]


# -- applying results -----------------------------------------------------------------------


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
    of status moves the order (module docstring). Raises NotFound for an unknown shipment.
    """
    _apply(session, shipment_id, result, now=now, source=source)


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


def _lock_shipment(session: Session, shipment_id: int) -> Shipment:
    shipment = session.scalars(_LOCK_SHIPMENT, {"shipment_id": shipment_id}).one_or_none()
    if shipment is None:
        raise NotFound(f"shipment {shipment_id}")
    return shipment


def _apply(
    session: Session, shipment_id: int, result: TrackingResult, *, now: datetime, source: Source
) -> Shipment:
    # order_id never changes, so reading it before taking any lock is safe.
    order_id = (
        session.connection()
        .execute(_ORDER_OF_SHIPMENT, {"shipment_id": shipment_id})
        .scalar_one_or_none()
    )
    if order_id is None:
        raise NotFound(f"shipment {shipment_id}")
    order = lock_order(session, order_id)
    shipment = _lock_shipment(session, shipment_id)
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
            detail=detail, actor=_ACTOR,
        )  # fmt: skip
        return
    if not stale and result.raw_state:
        shipment.raw_state = result.raw_state[:32]
    if target == current:
        if new_events:
            timeline.record(
                session, order.id, "tracking", from_status=current, to_status=current,
                detail=detail, actor=_ACTOR,
            )  # fmt: skip
        return
    shipment.status = target
    if is_final(target):
        shipment.next_poll_at = None  # polling stops; keeps the due-index scan short
    timeline.record(
        session, order.id, "tracking", from_status=current, to_status=target,
        detail=detail, actor=_ACTOR,
    )  # fmt: skip
    _follow_shipment(session, order, target, result, source=source)


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
    session: Session, order: Order, status: ShipmentStatus, result: TrackingResult, *, source: str
) -> None:
    """Move or flag the (locked) order as :func:`domain.tracking.order_follows` decides after
    its shipment moved to ``status``."""
    follow = order_follows(
        order.status, order.reason, status, returned=result.returned,
        exception_text=_exception_text(result) if status == ShipmentStatus.EXCEPTION else "",
    )  # fmt: skip
    detail = {"source": source, "waybill": result.waybill}
    for target in follow.moves:
        if order.status == OrderStatus.NEEDS_ATTENTION:
            order.reason = None  # the carrier resolved what the order was flagged for
        move_order(session, order, target, actor=_ACTOR, **detail)
    if follow.flag is not None:
        order.reason = follow.flag[:200]
        move_order(session, order, OrderStatus.NEEDS_ATTENTION, actor=_ACTOR, reason=follow.flag,
                   **detail)  # fmt: skip


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
