"""Beat jobs. Cheap "find due rows" scans; safe to run twice at once (SKIP LOCKED claims)."""

from __future__ import annotations

from services.ports import utcnow
from services.sweeper import stamp_heartbeat
from services.sweeper import sweep as sweep_orders
from services.task_names import MAINTENANCE_SWEEP
from services.unit_of_work import unit_of_work
from settings import get_settings
from tasks.base import OrderflowTask
from workers.app import app
from workers.connections import redis_client
from workers.publish import enqueue_followups, enqueue_reservations

#: Set by every sweep; `orderflow doctor` reads its age to tell whether beat is alive.


@app.task(name=MAINTENANCE_SWEEP, base=OrderflowTask, bind=True)
def sweep(self: OrderflowTask) -> int:
    """Re-drive stalled orders and expire unpaid ones; returns how many orders it acted on."""
    s = get_settings()
    try:
        with unit_of_work() as session:
            result = sweep_orders(
                session, now=utcnow(), redrive_after_s=s.intake_redrive_s, limit=s.sweep_batch,
                book=s.shipping_mode == "book",
            )  # fmt: skip
    except Exception as exc:
        self.retry_or_fail(exc)
    stamp_heartbeat(redis_client())
    sent = enqueue_reservations(result.reserve) + enqueue_followups(result.followups)
    return sent + len(result.expired)
