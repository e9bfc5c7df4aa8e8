"""Which shipments to poll, and when: claims and leases under ``FOR UPDATE SKIP LOCKED``, the
per-waybill minimum interval, and what a claimed chunk may query. Starting, handing back and
recording a poll: :mod:`.schedule`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, null, or_, select, update
from sqlalchemy.orm import Session

from domain.tracking import FINAL
from models import Order, Shipment

_FINAL = sorted(s.value for s in FINAL)


def polling_done() -> Any:
    """Shipments never polled again: a final status, tracking ended by the provider
    (:mod:`services.tracking.finish`), or a parcel cancelled before it was booked."""
    return or_(
        Shipment.status.in_(_FINAL),
        Shipment.tracking_ended_at.is_not(None),
        Shipment.cancelled_at.is_not(None),
    )


def still_tracked() -> Any:
    """The negation of :func:`polling_done`: shipments still being tracked."""
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
            still_tracked(),
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
            next_poll_at=case((polling_done(), null()), else_=retry_at),
        )
        .execution_options(synchronize_session=False)
    )


def still_ours(lease_until: datetime | None, now: datetime) -> Any:
    """Rows still leased to the caller: under its token, or (no token) under any live lease."""
    if lease_until is None:
        return Shipment.lease_until >= now
    return Shipment.lease_until == lease_until


def outside_min_interval(now: datetime, min_interval_s: float) -> Any:
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
    chunk whose lease expired and was claimed again skips them all.
    :func:`~services.tracking.schedule.start_poll` makes the final, atomic check right before
    each query.

    ``has_push`` is true for a subscribed shipment that received a push within
    ``push_window_s`` — pass it to :func:`~services.tracking.schedule.record_poll`. A
    subscription that never pushed does not count: Kuaidi100 only pushes once it has a trace.
    """
    if not shipment_ids:
        return []
    rows = session.execute(
        select(Shipment, Order.shipping_address)
        .join(Order, Order.id == Shipment.order_id)
        .where(
            Shipment.id.in_(list(shipment_ids)),
            still_ours(lease_until, now),
            outside_min_interval(now, min_interval_s),
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


def _recent_push(shipment: Shipment, now: datetime, window_s: float) -> bool:
    last = shipment.last_push_at
    return shipment.subscribed and last is not None and (now - last).total_seconds() <= window_s
