"""A claimed shipment's poll (the claims and leases: :mod:`.leases`): taking the right to
query it, handing it back, recording the poll with its next due time, and the shipments gone
quiet."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, null, or_, select, update
from sqlalchemy.orm import Session

from adapters.logistics.base import TrackingResult
from domain.tracking import Cadence, next_poll_delay
from models import Shipment
from services import timeline
from services.tracking.finish import end_reason, end_tracking
from services.tracking.leases import (
    outside_min_interval,
    polling_done,
    still_ours,
    still_tracked,
)
from services.tracking.results import ACTOR, apply_locking, lock_shipment


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
    :func:`~services.tracking.leases.poll_targets`) and was last queried at least
    ``min_interval_s`` ago, and then sets ``last_polled_at = now`` *before* the query goes out.
    So two executions of the same chunk (a retry, an acks-late redelivery running beside the
    original) never both query a waybill, and a query whose outcome was never recorded (the
    task died) still counts for the minimum interval. A shipment refused because it is inside
    its minimum interval but still leased to the caller is handed back, due once the interval
    has passed.
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
            still_ours(lease_until, now),
            outside_min_interval(now, min_interval_s),
            still_tracked(),
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
            still_ours(lease_until, now),
            Shipment.last_polled_at > now - timedelta(seconds=min_interval_s),
        )
        .values(
            lease_until=None,
            next_poll_at=case(
                (polling_done(), null()),
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
            next_poll_at=case((polling_done(), null()), else_=retry_at),
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
            still_ours(lease_until, now),
            Shipment.subscribed.is_(True),
            Shipment.last_push_at.is_not(None),
            still_tracked(),
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
        .where(still_tracked(), quiet_since < now - timedelta(seconds=stale_after_s))
        .order_by(quiet_since, Shipment.id)
        .limit(limit)
    ).all()
    return [(row[0], row[1], row[2]) for row in rows]
