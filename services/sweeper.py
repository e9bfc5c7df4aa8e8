"""The beat sweeper: keeps the pipeline moving when messages are lost or customers never pay.

:func:`sweep` claims orders whose stage deadline passed with ``FOR UPDATE SKIP LOCKED`` in
batches, so two beats (or two sweepers) running at once split the work instead of doing it
twice, and a sweep never waits on a row a worker is busy with. For each claimed order:

* RECEIVED — the reservation task was lost: re-drive it in ``orders.reserve_batch`` chunks
  (:attr:`SweepResult.reserve`: many orders per message, not one ``orders.process`` each);
* RESERVED / AWAITING_PAYMENT past the payment deadline — expire: with no payment at the
  provider the stock is released here, in the batch; otherwise ``payments.expire`` closes the
  trade first (a trade found paid is treated as paid);
* RESERVED before the payment deadline — the payment task was lost: re-enqueue
  ``payments.create`` (same idempotency key, so at most one charge);
* PAID or PARTIALLY_SHIPPED (when orderflow books shipments itself) — the booking task was
  lost, or died between two parcels: re-enqueue ``shipping.book`` (each parcel keeps its
  booking key, so each is booked at most once).

Claimed orders get a new stage deadline (a lease), so a follow-up that is itself lost is
re-driven again later. Every task is idempotent, so a duplicate follow-up is harmless.

An order whose follow-up task is waiting in the dead-letter queue (an OPEN row for that task
and order) is *held*: the sweeper does not send the task again, it only moves the lease on.
Re-sending would run the same failing task through all its retries and add a dead letter
every ``redrive_after_s``, for ever; an operator replays or discards it instead (once the row
is no longer OPEN, re-driving resumes). Holding applies to the task that failed only: an order
whose ``payments.create`` is dead-lettered still expires at its payment deadline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.orders import OrderStatus
from models import DeadLetter, Order, Payment
from services import timeline
from services.followup import Followup
from services.payments import expire_order
from services.task_names import (
    ORDERS_PROCESS,
    ORDERS_RESERVE_BATCH,
    PAYMENTS_CREATE,
    PAYMENTS_EXPIRE,
    SHIPPING_BOOK,
)

#: Redis key the sweep task stamps (Unix time) on every run; ``orderflow doctor`` reads it to
#: tell whether beat and the maintenance worker are alive.
HEARTBEAT_KEY = "orderflow:heartbeat:sweep"


def stamp_heartbeat(client: redis.Redis) -> None:
    """Record that a sweep ran, by the Redis server's clock: the worker that stamps and the
    host that reads (:func:`heartbeat_age`) may disagree on the time; Redis is one clock."""
    client.set(HEARTBEAT_KEY, _server_time(client))


def heartbeat_age(client: redis.Redis) -> float | None:
    """Seconds since the last sweep by the Redis server's clock; None if none has run."""
    last = client.get(HEARTBEAT_KEY)
    return None if last is None else _server_time(client) - float(last)


def _server_time(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + micros / 1_000_000


SWEPT = (
    OrderStatus.RECEIVED,
    OrderStatus.RESERVED,
    OrderStatus.AWAITING_PAYMENT,
    OrderStatus.PAID,
    OrderStatus.PARTIALLY_SHIPPED,
)
#: Re-driven only when orderflow books shipments itself (``shipping_mode=book``).
BOOKING = (OrderStatus.PAID, OrderStatus.PARTIALLY_SHIPPED)


@dataclass
class SweepResult:
    followups: list[Followup] = field(default_factory=list)
    reserve: list[str] = field(default_factory=list)  # RECEIVED: for enqueue_reservations
    expired: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # follow-up task waiting in dead letters


def _claim(session: Session, now: datetime, limit: int, book: bool) -> list[Order]:
    statuses = SWEPT if book else tuple(s for s in SWEPT if s not in BOOKING)
    return list(
        session.scalars(
            select(Order)
            .where(Order.status.in_(statuses), Order.stage_deadline < now)
            .order_by(Order.stage_deadline)
            .limit(limit)
            .with_for_update(skip_locked=True, of=Order)
        )
    )


def sweep(
    session: Session, *, now: datetime, redrive_after_s: int, limit: int, book: bool = True
) -> SweepResult:
    """Claim overdue orders and decide what happens to each (see the module docstring).

    ``book`` is False when the warehouse registers waybills itself (``shipping_mode=manual``):
    then a PAID order simply waits and is not re-driven.
    """
    result = SweepResult()
    orders = _claim(session, now, limit, book)
    if not orders:
        return result
    with_payment = set(
        session.scalars(
            select(Payment.order_id).where(Payment.order_id.in_([o.id for o in orders]))
        )
    )
    dead = _dead_lettered(session, [o.id for o in orders])
    for order in orders:
        task = redrive_for(order.status, order.payment_deadline, now=now,
                           has_payment=order.id in with_payment)  # fmt: skip
        if task == EXPIRE_NOW:
            expire_order(session, order, now=now)
            result.expired.append(order.id)
            continue
        if (order.id, task) in dead:
            order.stage_deadline = now + timedelta(seconds=redrive_after_s)  # look again later
            result.held.append(order.id)
            continue
        timeline.record(
            session, order.id, "redrive", from_status=order.status, to_status=order.status,
            detail={"task": ORDERS_RESERVE_BATCH if task == ORDERS_PROCESS else task,
                    "attempt": order.stage_attempts + 1}, actor="sweeper",
        )  # fmt: skip
        order.stage_attempts += 1
        order.stage_deadline = now + timedelta(seconds=redrive_after_s)
        if task == ORDERS_PROCESS:  # batched: one message per RESERVE_BATCH_MAX orders
            result.reserve.append(order.id)
        else:
            result.followups.append(Followup(task, order.id))
    return result


def _dead_lettered(session: Session, order_ids: list[str]) -> set[tuple[str, str]]:
    """(order id, task name) pairs with an OPEN dead letter: tasks an operator must decide on."""
    rows = session.execute(
        select(DeadLetter.order_id, DeadLetter.task_name).where(
            DeadLetter.order_id.in_(order_ids), DeadLetter.status == "OPEN"
        )
    )
    return {(str(order_id), task) for order_id, task in rows}


#: :func:`redrive_for`'s answer when the order expires in the sweep itself (no trade to close).
EXPIRE_NOW = "expire-now"


def redrive_for(
    status: str, payment_deadline: datetime | None, *, now: datetime, has_payment: bool
) -> str:
    """The task that moves an overdue order on (see the module docstring), or
    :data:`EXPIRE_NOW`. Pure: the sweep claims the orders, this decides. For a RECEIVED order
    it is ``orders.process``, the task whose dead letter holds the order (a failing batch hands
    its orders to it); :func:`sweep` sends those in ``orders.reserve_batch`` chunks."""
    if status == OrderStatus.RECEIVED:
        return ORDERS_PROCESS
    if status in BOOKING:
        return SHIPPING_BOOK
    overdue = payment_deadline is None or payment_deadline <= now
    if overdue:
        return PAYMENTS_EXPIRE if has_payment else EXPIRE_NOW
    return PAYMENTS_CREATE
