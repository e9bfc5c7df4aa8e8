"""Which shipments to poll, and when: claims and leases under ``FOR UPDATE SKIP LOCKED``, the
per-waybill minimum interval, hand-backs, and recording a poll with its next due time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, null, or_, select, update
from sqlalchemy.orm import Session

from adapters.logistics.base import TrackingResult
from domain.tracking import (
    FINAL,
    Cadence,
    next_poll_delay,
)
from models import Order, Shipment
from services import timeline
from services.tracking.finish import end_reason, end_tracking
from services.tracking.results import ACTOR, apply_locking, lock_shipment

_FINAL = sorted(s.value for s in FINAL)


def _done() -> Any:
    """Shipments never polled again: a final status, tracking ended by the provider
    (:mod:`services.tracking.finish`), or a parcel cancelled before it was booked."""
    return or_(
        Shipment.status.in_(_FINAL),
        Shipment.tracking_ended_at.is_not(None),
        Shipment.cancelled_at.is_not(None),
    )


def _tracked() -> Any:
    """The negation of :func:`_done`: shipments still being tracked."""
    return and_(
        Shipment.status.not_in(_FINAL),
        Shipment.tracking_ended_at.is_(None),
        Shipment.cancelled_at.is_(None),
    )


@dataclass(frozen=True, slots=True)
class PollTarget:
    """What the task layer needs to query one claimed shipment."""

    shipment_id: int
    order_id: str
    carrier: str
    waybill: str
    phone: str | None  # Kuaidi100 needs it for some carriers (SF, ZTO)
    has_push: bool


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

    Due: ``next_poll_at <= now + horizon_s``, carrier and waybill known, status not final and
    tracking not ended by the provider, no live lease (``lease_until`` NULL or past) and not
    polled within ``min_interval_s`` of its due time (Kuaidi100 locks a number queried more
    often). The caller must not query a shipment before its ``due``: the scheduler publishes
    each chunk for its latest due time, so a beat tick of ``horizon_s`` polls every shipment on
    time rather than up to a tick late.
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
            _tracked(),
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
    out. A shipment that became final or ended meanwhile (a push) keeps ``next_poll_at`` NULL. With
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
            next_poll_at=case((_done(), null()), else_=retry_at),
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
            _tracked(),
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
                (_done(), null()),
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
            next_poll_at=case((_done(), null()), else_=retry_at),
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
            _tracked(),
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
    :func:`domain.tracking.next_poll_delay` — NULL once the shipment is final or its tracking
    ended (the result may end it: :func:`services.tracking.finish.end_reason`).
    """
    if failed and result is not None:
        raise ValueError("a failed poll has no result")
    if result is not None:
        shipment = apply_locking(session, shipment_id, result, now=now, source="poll")
        if why := end_reason(result):
            end_tracking(session, shipment, why, now=now, source="poll")
    else:
        shipment = lock_shipment(session, shipment_id)  # no order lock needed: no order move
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
    if shipment.tracking_ended_at is not None:  # ended now, or by a push while we queried
        delay = None
    shipment.next_poll_at = None if delay is None else now + timedelta(seconds=delay)
    if failed:
        timeline.record(
            session, shipment.order_id, "tracking",
            detail={"shipment_id": shipment.id, "poll_failed": shipment.poll_failures,
                    "error": (error or "unknown")[:200], "retry_in_s": delay},
            actor=ACTOR,
        )  # fmt: skip


def stale_shipments(
    session: Session, *, now: datetime, stale_after_s: float, limit: int
) -> list[tuple[int, str, datetime | None]]:
    """Active (not final, tracking not ended) shipments with no new event for ``stale_after_s``
    — measured from ``last_event_at``, or from ``created_at`` for a shipment without any event
    — longest quiet first, as ``(shipment id, order id, last_event_at)``. For the staleness
    alert."""
    quiet_since = func.coalesce(Shipment.last_event_at, Shipment.created_at)
    rows = session.execute(
        select(Shipment.id, Shipment.order_id, Shipment.last_event_at)
        .where(_tracked(), quiet_since < now - timedelta(seconds=stale_after_s))
        .order_by(quiet_since, Shipment.id)
        .limit(limit)
    ).all()
    return [(row[0], row[1], row[2]) for row in rows]
