"""Beat jobs. Cheap "find due rows" scans; safe to run twice at once (SKIP LOCKED claims)."""

from __future__ import annotations

from services.sweeper import claim_stalled, expire_overdue
from services.unit_of_work import unit_of_work
from settings import get_settings
from tasks.base import OrderflowTask, utcnow
from tasks.dispatch import enqueue_many
from workers.app import app


@app.task(name="maintenance.sweep", base=OrderflowTask, bind=True)
def sweep(self: OrderflowTask) -> int:
    """Re-drive orders whose stage deadline passed; returns how many were re-enqueued."""
    s = get_settings()
    try:
        with unit_of_work() as session:
            redrives = claim_stalled(
                session, now=utcnow(), redrive_after_s=s.intake_redrive_s, limit=s.sweep_batch
            )
    except Exception as exc:
        self.retry_or_fail(exc)
    return enqueue_many(redrives)


@app.task(name="maintenance.expire_reservations", base=OrderflowTask, bind=True)
def expire_reservations(self: OrderflowTask) -> int:
    """Release stock of reserved orders past their payment deadline; returns how many."""
    s = get_settings()
    try:
        with unit_of_work() as session:
            expired = expire_overdue(session, now=utcnow(), limit=s.sweep_batch)
    except Exception as exc:
        self.retry_or_fail(exc)
    return len(expired)
