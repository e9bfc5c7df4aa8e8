"""Tracking tasks: the beat scheduler claims due shipments; poll tasks query Kuaidi100 under a
Redis token bucket; a staleness check raises alerts. See :mod:`services.tracking`.

Two beats running the scheduler at once never double-poll: claims use ``FOR UPDATE SKIP LOCKED``
plus a lease longer than a poll task can live, and a waybill is never claimed again within
``TRACKING_MIN_INTERVAL_S`` of its last poll (Kuaidi100 locks numbers queried more often).

A poll task carries its claim's lease token (``lease_until``) and queries only the members still
leased under it, each after an atomic take (:func:`services.tracking.start_poll`) that records
the query time first: a retried chunk, an acks-late redelivery, or a task that arrives after
its lease expired and the shipments were claimed again, never queries a waybill twice.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from functools import lru_cache

from adapters.logistics.base import TrackingResult
from adapters.ratelimit import TokenBucket
from adapters.registry import tracking_provider
from domain.errors import ProviderError
from domain.tracking import Cadence, PollChunk, pace, plan_chunks
from services import tracking
from services.task_names import (
    MAINTENANCE_SCHEDULE_TRACKING,
    MAINTENANCE_TRACKING_STALENESS,
    TRACKING_POLL,
)
from services.unit_of_work import unit_of_work
from settings import get_settings
from tasks.base import OrderflowTask, utcnow
from tasks.providers import CircuitOpen, call
from workers.app import app
from workers.broker import broker_countdown
from workers.connections import redis_client
from workers.publish import enqueue

log = logging.getLogger(__name__)
PUSH_WINDOW_H = 8  # a shipment that got a push this recently is polled only as a fallback


def cadence() -> Cadence:
    """The configured cadence: compressed by TRACKING_TIME_SCALE, min interval as configured."""
    s = get_settings()
    return replace(Cadence().scaled(s.tracking_time_scale), min_interval=s.tracking_min_interval_s)


def lease_s() -> float:
    # Longer than a poll task can live (hard time limit), so a claim never expires mid-poll.
    return get_settings().task_time_limit_s * 2.0


def push_window_s() -> float:
    return PUSH_WINDOW_H * 3600 / get_settings().tracking_time_scale


@lru_cache(maxsize=1)
def _bucket() -> TokenBucket:
    """The quota is per Kuaidi100 account (``customer``): deployments sharing one account share
    one bucket, whatever else differs between them."""
    s = get_settings()
    account = s.kuaidi100_customer or "default"
    return TokenBucket(
        redis_client(), "kuaidi100", s.tracking_rate_per_s, s.tracking_burst, account=account
    )


@app.task(name=MAINTENANCE_SCHEDULE_TRACKING, base=OrderflowTask, bind=True)
def schedule_tracking(self: OrderflowTask) -> int:
    """Beat: claim the shipments due before the next tick (leased) and publish them in chunks,
    each for the moment its last member is due; returns how many were claimed.

    Claims in batches of ``TRACKING_BATCH`` until none is left or the account's quota could
    not poll more before the next tick (rate x tick + burst): a claimed shipment the quota
    cannot serve would only be handed back. Due times are then paced at the quota's rate
    (:func:`domain.tracking.pace`), so a backlog is spread over the tick instead of landing in
    one task that could get only ``burst`` tokens.
    """
    s = get_settings()
    cap = int(s.tracking_rate_per_s * s.tracking_interval_s + s.tracking_burst)
    claimed: list[tuple[int, datetime]] = []
    now = utcnow()
    token = tracking.lease_expiry(now, horizon_s=s.tracking_interval_s, lease_s=lease_s())
    try:
        while len(claimed) < cap:
            limit = min(s.tracking_batch, cap - len(claimed))
            with unit_of_work() as session:
                batch = tracking.claim_ahead(
                    session, now=now, horizon_s=s.tracking_interval_s, limit=limit,
                    lease_s=lease_s(), min_interval_s=s.tracking_min_interval_s,
                )  # fmt: skip
            claimed.extend(batch)
            if len(batch) < limit:
                break
    except Exception as exc:
        if not claimed:
            self.retry_or_fail(exc)
        log.warning("tracking claim stopped after %d shipments: %r", len(claimed), exc)
    window = min(1.0, s.tracking_interval_s / 10)
    paced = pace(claimed, now=now, rate_per_s=s.tracking_rate_per_s, burst=s.tracking_burst)
    for chunk in plan_chunks(paced, size=s.tracking_poll_chunk, window_s=window):
        _publish(chunk, utcnow(), token)
    return len(claimed)


def _publish(chunk: PollChunk, now: datetime, token: datetime) -> None:
    """Enqueue one poll task, delayed until its last member is due (the lease covers it)."""
    wait = (chunk.not_before - now).total_seconds()
    options = {}
    if wait > 0:
        options["countdown"] = broker_countdown(wait, app.conf.broker_url or "")
    enqueue(TRACKING_POLL, list(chunk.shipment_ids), token.isoformat(), **options)


@app.task(name=TRACKING_POLL, base=OrderflowTask, bind=True)
def poll(self: OrderflowTask, shipment_ids: list[int], lease_token: str | None = None) -> int:
    """Query the members of a claimed chunk that are still ours (within the account's quota)
    and record each outcome; returns how many were queried.

    ``lease_token`` is the claim's ``lease_until`` (ISO 8601); a message without one (published
    before tokens existed) polls under any live lease. Members a push refreshed since their
    last poll are handed back (polling is the fallback); members over quota are handed back
    for a moment later. Safe to run again, or twice at once, for the same chunk.
    """
    s = get_settings()
    token = datetime.fromisoformat(lease_token) if lease_token else None
    polled = 0
    try:
        with unit_of_work() as session:
            tracking.defer_pushed(session, shipment_ids, now=utcnow(), lease_until=token,
                                  cadence=cadence())  # fmt: skip
        with unit_of_work() as session:
            tracking.hand_back_recent(session, shipment_ids, now=utcnow(), lease_until=token,
                                      min_interval_s=s.tracking_min_interval_s)  # fmt: skip
            targets = tracking.poll_targets(
                session, shipment_ids, now=utcnow(), push_window_s=push_window_s(),
                lease_until=token, min_interval_s=s.tracking_min_interval_s,
            )  # fmt: skip
        order = {sid: i for i, sid in enumerate(shipment_ids)}  # due order: the most overdue
        targets.sort(key=lambda t: order[t.shipment_id])  # get the tokens first
        granted = _bucket().reserve(len(targets))
        if granted < len(targets):
            with unit_of_work() as session:  # over quota: try these again shortly
                tracking.release_lease(
                    session, [t.shipment_id for t in targets[granted:]], now=utcnow(),
                    retry_in_s=max(1.0, 1 / s.tracking_rate_per_s), lease_until=token,
                )  # fmt: skip
        for target in targets[:granted]:
            polled += _poll_one(target, token)
    except Exception as exc:
        self.retry_or_fail(exc)
    return polled


def _poll_one(target: tracking.PollTarget, token: datetime | None) -> int:
    """Take the shipment (see :func:`services.tracking.start_poll`), query its waybill with no
    transaction open, then record the outcome or the failure; 1 if a query was made."""
    s = get_settings()
    with unit_of_work() as session:
        started = tracking.start_poll(
            session,
            target.shipment_id,
            now=utcnow(),
            lease_until=token,
            min_interval_s=s.tracking_min_interval_s,
        )
    if started is None:
        return 0  # done by an earlier run of this chunk, or no longer ours
    provider = tracking_provider()

    def query() -> TrackingResult:
        return provider.query(target.carrier, target.waybill, target.phone)

    result: TrackingResult | None = None
    error: str | None = None
    try:
        result = call("kuaidi100", "query", target.order_id, query, request=target)
    except CircuitOpen:
        with unit_of_work() as session:  # no query went out: the take is undone
            tracking.abandon_poll(session, target.shipment_id, started, now=utcnow(),
                                  retry_in_s=s.circuit_cooldown_s)  # fmt: skip
        return 0
    except ProviderError as exc:
        error = str(exc)[:200]
    with unit_of_work() as session:
        tracking.record_poll(
            session, target.shipment_id, now=utcnow(), result=result, failed=result is None,
            cadence=cadence(), has_push=target.has_push, error=error,
        )  # fmt: skip
    return 1


@app.task(name=MAINTENANCE_TRACKING_STALENESS, base=OrderflowTask, bind=True)
def staleness(self: OrderflowTask) -> int:
    """Beat: log an alert for every active shipment without an update for too long."""
    s = get_settings()
    try:
        with unit_of_work() as session:
            stale = tracking.stale_shipments(
                session, now=utcnow(), stale_after_s=s.tracking_stale_after_s, limit=500
            )
    except Exception as exc:
        self.retry_or_fail(exc)
    for shipment_id, order_id, last in stale:
        log.warning("tracking stale: shipment %s of order %s, last update %s",
                    shipment_id, order_id, last)  # fmt: skip
    return len(stale)
