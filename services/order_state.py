"""Locking an order and moving it through the transition table, with its timeline entry.

Every service that changes an order's status goes through :func:`move_order`, so the transition
table (:mod:`domain.orders`) is checked and the timeline and the status callback written in one
place. It also stamps the moments the receipt sweep counts from (``delivered_at``,
``receipt_confirmed_at``), by the database's clock so every host agrees. The reservation stage,
a hot path that moves orders with plain SQL and no ORM object, checks the table itself and then
calls :func:`announce_move`, the same bookkeeping.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, lazyload

from domain.errors import NotFound
from domain.orders import OrderStatus, ensure_transition
from models import Order
from services import callbacks, timeline

# Built once: constructing the statement (and its cache key) cost more CPU than running it.
_LOCK_ORDER = (
    select(Order)
    .where(Order.id == bindparam("order_id"))
    .options(lazyload(Order.lines))  # lines are rarely needed here; load them on access
    .with_for_update(of=Order)
)

#: The moments an order's later deadlines count from (:mod:`services.receipt`).
_STAMPED = {
    OrderStatus.DELIVERED: "delivered_at",
    OrderStatus.RECEIPT_CONFIRMED: "receipt_confirmed_at",
}


def lock_order(session: Session, order_id: str) -> Order:
    """``SELECT … FOR UPDATE`` the order (always the first row a stage locks)."""
    order = session.scalars(_LOCK_ORDER, {"order_id": order_id}).one_or_none()
    if order is None:
        raise NotFound(f"order {order_id} not found", field="order_id")
    return order


def move_order(
    session: Session,
    order: Order,
    target: OrderStatus,
    *,
    actor: str = "system",
    parcel_id: int | None = None,
    **detail: Any,
) -> None:
    """Move a locked order to ``target`` (raises InvalidTransition) and record it.
    ``parcel_id``: the parcel whose change moved it (its status callback shows that parcel)."""
    current = order.status
    order.status = ensure_transition(current, target)
    if (stamp := _STAMPED.get(order.status)) is not None:
        # Written as SQL (no extra round trip): the attribute reads back after the flush.
        setattr(order, stamp, func.now())
    announce_move(session, order, current, target, actor=actor, detail=detail or None,
                  parcel_id=parcel_id)  # fmt: skip


def announce_move(
    session: Session,
    order: callbacks.OrderFields,
    current: str,
    target: str,
    *,
    actor: str = "system",
    detail: dict[str, Any] | None = None,
    parcel_id: int | None = None,
) -> None:
    """Record a move already written (checked against the transition table by the caller): the
    timeline's ``transition`` row and the status callback, in the same transaction."""
    timeline.record(
        session, order.id, "transition", from_status=current, to_status=target, detail=detail,
        actor=actor,
    )  # fmt: skip
    callbacks.record_status_change(session, order, current, target, parcel_id=parcel_id)
