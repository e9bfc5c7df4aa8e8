"""Tracking tasks: the beat tick claims due shipments and publishes poll tasks; a poll task
queries Kuaidi100 within the account's quota (:mod:`services.tracking.poll`); a staleness
check raises alerts."""

from __future__ import annotations

import logging
from datetime import datetime

from adapters.registry import tracking_provider
from domain.tracking import PollChunk
from services import tracking
from services.ports import utcnow
from services.task_names import (
    MAINTENANCE_SCHEDULE_TRACKING,
    MAINTENANCE_TRACKING_STALENESS,
    TRACKING_POLL,
)
from services.tracking.poll import plan_tick, poll_chunk
from services.unit_of_work import unit_of_work
from settings import get_settings
from tasks.base import OrderflowTask
from workers.app import app
from workers.broker import broker_countdown
from workers.ports import ports, tracking_config, tracking_quota
from workers.publish import enqueue

log = logging.getLogger(__name__)


@app.task(name=MAINTENANCE_SCHEDULE_TRACKING, base=OrderflowTask, bind=True)
def schedule_tracking(self: OrderflowTask) -> int:
    """Beat: claim the shipments due before the next tick and publish their poll tasks, each
    for the moment its last member is due; returns how many were claimed."""
    try:
        plan = plan_tick(ports(), tracking_config())
    except Exception as exc:
        self.retry_or_fail(exc)
    for chunk in plan.chunks:
        _publish(chunk, utcnow(), plan.token)
    return plan.claimed


def _publish(chunk: PollChunk, now: datetime, token: datetime) -> None:
    """Enqueue one poll task, delayed until its last member is due (the lease covers it)."""
    wait = (chunk.not_before - now).total_seconds()
    options = {}
    if wait > 0:
        options["countdown"] = broker_countdown(wait, app.conf.broker_url or "")
    enqueue(TRACKING_POLL, list(chunk.shipment_ids), token.isoformat(), **options)


@app.task(name=TRACKING_POLL, base=OrderflowTask, bind=True)
def poll(self: OrderflowTask, shipment_ids: list[int], lease_token: str | None = None) -> int:
    """Query the members of a claimed chunk that are still ours; returns how many were queried.
    ``lease_token`` is the claim's ``lease_until`` (ISO 8601), absent in older messages."""
    token = datetime.fromisoformat(lease_token) if lease_token else None
    try:
        return poll_chunk(shipment_ids, token, tracking_provider(), tracking_quota(), ports(),
                          tracking_config())  # fmt: skip
    except Exception as exc:
        self.retry_or_fail(exc)


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
