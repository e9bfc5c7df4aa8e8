"""Beat jobs that keep the pipeline moving when messages are lost or customers never pay.

Both jobs claim rows with ``FOR UPDATE SKIP LOCKED`` in batches, so two beats (or two sweepers)
running at once split the work instead of doing it twice, and a job never waits on a row a
worker is busy with.

* :func:`claim_stalled` — orders whose stage deadline passed while still waiting for a task
  (RECEIVED): push the deadline forward and return their ids, for the task layer to re-enqueue
  after commit. A redelivered duplicate is harmless because every task is idempotent.
* :func:`expire_overdue` — reserved orders whose payment deadline passed: release the stock and
  move them to EXPIRED.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from domain.orders import OrderStatus, ensure_transition
from models import Order
from services import timeline
from services.stock import release_reservations

#: Statuses whose stage is driven by a queued task; the sweeper re-drives them when stalled.
REDRIVEN: dict[OrderStatus, str] = {OrderStatus.RECEIVED: "orders.process"}

#: Statuses that expire at their stage deadline (stock released, order EXPIRED).
EXPIRING: tuple[OrderStatus, ...] = (OrderStatus.RESERVED,)


def _claim(session: Session, statuses: tuple[str, ...], now: datetime, limit: int) -> list[Order]:
    return list(
        session.scalars(
            select(Order)
            .where(Order.status.in_(statuses), Order.stage_deadline < now)
            .order_by(Order.stage_deadline)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )


def claim_stalled(
    session: Session, *, now: datetime, redrive_after_s: int, limit: int
) -> list[tuple[str, str]]:
    """Return ``(task_name, order_id)`` pairs to re-enqueue; their deadlines move forward."""
    orders = _claim(session, tuple(REDRIVEN), now, limit)
    if not orders:
        return []
    ids = [o.id for o in orders]
    events = [
        {
            "order_id": o.id,
            "kind": "redrive",
            "from_status": o.status,
            "to_status": o.status,
            "detail": {"attempt": o.stage_attempts + 1},
            "actor": "sweeper",
        }
        for o in orders
    ]
    redrives = [(REDRIVEN[OrderStatus(o.status)], o.id) for o in orders]
    session.execute(
        update(Order)
        .where(Order.id.in_(ids))
        .values(
            stage_deadline=now + timedelta(seconds=redrive_after_s),
            stage_attempts=Order.stage_attempts + 1,
        )
    )
    timeline.record_many(session, events)
    return redrives


def expire_overdue(session: Session, *, now: datetime, limit: int) -> list[str]:
    """Expire reserved orders past their payment deadline; returns the expired order ids."""
    orders = _claim(session, EXPIRING, now, limit)
    if not orders:
        return []
    ids = [o.id for o in orders]
    events = [
        {
            "order_id": o.id,
            "kind": "transition",
            "from_status": o.status,
            "to_status": ensure_transition(o.status, OrderStatus.EXPIRED),
            "detail": {"reason": "payment_timeout"},
            "actor": "sweeper",
        }
        for o in orders
    ]
    release_reservations(session, ids, now=now, reason="payment deadline passed")
    session.execute(
        update(Order)
        .where(Order.id.in_(ids))
        .values(status=OrderStatus.EXPIRED, reason="payment_timeout", stage_deadline=None)
    )
    timeline.record_many(session, events)
    return ids
