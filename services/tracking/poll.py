"""Polling the carrier: one beat tick claims what is due and plans the poll tasks
(:func:`plan_tick`); each poll task queries its chunk's waybills within the account's quota and
records every answer (:func:`poll_chunk`).

Two beats planning at once never double-poll: claims use ``FOR UPDATE SKIP LOCKED`` plus a lease
longer than a poll task can live, and a waybill is never claimed again within the minimum
interval of its last poll (Kuaidi100 locks numbers queried more often).

A poll task carries its claim's lease token (``lease_until``) and queries only the members still
leased under it, each after an atomic take (:func:`~services.tracking.schedule.start_poll`)
that records the query time first: a retried chunk, an acks-late redelivery, or a task that
arrives after its lease expired and the shipments were claimed again, never queries a waybill
twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from adapters.logistics.base import TrackingProvider, TrackingResult
from domain.errors import ProviderError
from domain.tracking import Cadence, PollChunk, pace, plan_chunks
from services.ports import Ports
from services.provider_calls import CallNote, CircuitOpen
from services.tracking.leases import (
    PollTarget,
    claim_ahead,
    lease_expiry,
    poll_targets,
    release_lease,
)
from services.tracking.schedule import (
    abandon_poll,
    defer_pushed,
    hand_back_recent,
    record_poll,
    start_poll,
)

log = logging.getLogger(__name__)


class Quota(Protocol):
    """The account's query quota (``adapters.ratelimit.TokenBucket`` in the workers)."""

    def reserve(self, n: int) -> int:
        """Take up to ``n`` tokens now; returns how many were granted."""
        ...


@dataclass(frozen=True, slots=True)
class TrackingConfig:
    """The tracking stage's settings, passed in (services read no settings themselves)."""

    cadence: Cadence = field(default_factory=Cadence)
    rate_per_s: float = 5.0  # the account's query quota
    burst: int = 10
    tick_s: float = 30.0  # the beat interval: a tick claims what falls due before the next
    batch: int = 200  # shipments claimed per transaction
    chunk: int = 20  # shipments per poll task
    lease_s: float = 600.0  # longer than a poll task can live
    push_window_s: float = 8 * 3600.0  # a parcel pushed this recently is polled only as fallback
    retry_after_circuit_s: float = 30.0

    @property
    def claim_cap(self) -> int:
        """What the quota could poll before the next tick: claiming more only hands it back."""
        return int(self.rate_per_s * self.tick_s + self.burst)


@dataclass(frozen=True, slots=True)
class TickPlan:
    """The poll tasks one tick publishes: each chunk at its ``not_before``, under ``token``."""

    claimed: int
    chunks: list[PollChunk]
    token: datetime


def plan_tick(ports: Ports, config: TrackingConfig) -> TickPlan:
    """Claim the shipments due before the next tick (leased) and cut them into poll chunks,
    each due when its last member is.

    Claims in batches until none is left or the quota could not poll more before the next tick
    (:attr:`TrackingConfig.claim_cap`). Due times are then paced at the quota's rate
    (:func:`domain.tracking.pace`), so a backlog is spread over the tick instead of landing in
    one task that could get only ``burst`` tokens. A failure before anything was claimed is
    raised; after, the tick publishes what it has (the rest is claimed next tick).
    """
    now = ports.clock()
    token = lease_expiry(now, horizon_s=config.tick_s, lease_s=config.lease_s)
    claimed: list[tuple[int, datetime]] = []
    try:
        while len(claimed) < config.claim_cap:
            limit = min(config.batch, config.claim_cap - len(claimed))
            with ports.uow() as session:
                batch = claim_ahead(
                    session, now=now, horizon_s=config.tick_s, limit=limit,
                    lease_s=config.lease_s, min_interval_s=config.cadence.min_interval,
                )  # fmt: skip
            claimed.extend(batch)
            if len(batch) < limit:
                break
    except Exception as exc:
        if not claimed:
            raise
        log.warning("tracking claim stopped after %d shipments: %r", len(claimed), exc)
    window = min(1.0, config.tick_s / 10)
    paced = pace(claimed, now=now, rate_per_s=config.rate_per_s, burst=config.burst)
    chunks = list(plan_chunks(paced, size=config.chunk, window_s=window))
    return TickPlan(len(claimed), chunks, token)


def poll_chunk(
    shipment_ids: list[int],
    token: datetime | None,
    provider: TrackingProvider,
    quota: Quota,
    ports: Ports,
    config: TrackingConfig,
) -> int:
    """Query the members of a claimed chunk that are still ours (within the quota) and record
    each outcome; returns how many were queried.

    ``token`` is the claim's ``lease_until``; None polls under any live lease (a message from
    before tokens existed). Members a push refreshed since their last poll are handed back
    (polling is the fallback); members over quota are handed back for a moment later. Safe to
    run again, or twice at once, for the same chunk.
    """
    min_interval = config.cadence.min_interval
    with ports.uow() as session:
        defer_pushed(session, shipment_ids, now=ports.clock(), lease_until=token,
                     cadence=config.cadence)  # fmt: skip
    with ports.uow() as session:
        hand_back_recent(session, shipment_ids, now=ports.clock(), lease_until=token,
                         min_interval_s=min_interval)  # fmt: skip
        targets = poll_targets(
            session, shipment_ids, now=ports.clock(), push_window_s=config.push_window_s,
            lease_until=token, min_interval_s=min_interval,
        )  # fmt: skip
    due_order = {sid: i for i, sid in enumerate(shipment_ids)}  # the most overdue get
    targets.sort(key=lambda t: due_order[t.shipment_id])  # the tokens first
    granted = quota.reserve(len(targets))
    if granted < len(targets):
        with ports.uow() as session:  # over quota: try these again shortly
            release_lease(
                session, [t.shipment_id for t in targets[granted:]], now=ports.clock(),
                retry_in_s=max(1.0, 1 / config.rate_per_s), lease_until=token,
            )  # fmt: skip
    return sum(_poll_one(t, token, provider, ports, config) for t in targets[:granted])


def _poll_one(
    target: PollTarget,
    token: datetime | None,
    provider: TrackingProvider,
    ports: Ports,
    config: TrackingConfig,
) -> int:
    """Take the shipment (see ``start_poll``), query its waybill with no transaction open,
    then record the outcome or the failure; 1 if a query was made."""
    with ports.uow() as session:
        started = start_poll(session, target.shipment_id, now=ports.clock(), lease_until=token,
                             min_interval_s=config.cadence.min_interval)  # fmt: skip
    if started is None:
        return 0  # done by an earlier run of this chunk, or no longer ours

    def query() -> TrackingResult:
        return provider.query(target.carrier, target.waybill, target.phone)

    result: TrackingResult | None = None
    error: str | None = None
    note: CallNote | None = None
    try:
        result, note = ports.gate.call_noted(
            "kuaidi100", "query", target.order_id, query, request=target
        )
    except CircuitOpen:
        with ports.uow() as session:  # no query went out: the take is undone
            abandon_poll(session, target.shipment_id, started, now=ports.clock(),
                         retry_in_s=config.retry_after_circuit_s)  # fmt: skip
        return 0
    except ProviderError as exc:
        error = str(exc)[:200]  # the failed call is on the timeline already
    # An answered query's timeline row is written in the transaction that records it.
    with ports.uow() if note is None else note.recorded(ports.uow) as session:
        record_poll(
            session, target.shipment_id, now=ports.clock(), result=result, failed=result is None,
            cadence=config.cadence, has_push=target.has_push, error=error,
        )  # fmt: skip
    return 1
