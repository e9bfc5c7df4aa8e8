"""Beat jobs. Cheap "find due rows" scans; safe to run twice at once (SKIP LOCKED claims)."""

from __future__ import annotations

from services.exchange import redrive_replacements
from services.ports import utcnow
from services.receipt import sweep_receipts
from services.returns import sweep_overdue
from services.sweeper import stamp_heartbeat
from services.sweeper import sweep as sweep_orders
from services.task_names import MAINTENANCE_SWEEP
from services.unit_of_work import unit_of_work
from settings import get_settings
from tasks.base import OrderflowTask
from workers.app import app
from workers.connections import redis_client
from workers.publish import enqueue_followups, enqueue_reservations


@app.task(name=MAINTENANCE_SWEEP, base=OrderflowTask, bind=True)
def sweep(self: OrderflowTask) -> int:
    """Re-drive stalled orders, expire unpaid ones, confirm receipt and complete orders whose
    after-sale window passed, close returns never shipped back; returns how many orders (and
    returns) it acted on."""
    s = get_settings()
    try:
        with unit_of_work() as session:
            result = sweep_orders(
                session, now=utcnow(), redrive_after_s=s.intake_redrive_s, limit=s.sweep_batch,
                book=s.shipping_mode == "book",
            )  # fmt: skip
            receipts = sweep_receipts(
                session, auto_receive_s=s.auto_receive_s, window_s=s.aftersale_window_s,
                limit=s.sweep_batch,
            )  # fmt: skip
            closed = sweep_overdue(session, now=utcnow(), limit=s.sweep_batch)
            rebook = redrive_replacements(session, now=utcnow(), redrive_s=s.shipping_redrive_s,
                                          limit=s.sweep_batch)  # fmt: skip
    except Exception as exc:
        self.retry_or_fail(exc)
    stamp_heartbeat(redis_client())
    sent = enqueue_reservations(result.reserve) + enqueue_followups(result.followups + rebook)
    moved = len(receipts.confirmed) + len(receipts.completed) + len(closed)
    return sent + len(result.expired) + moved
