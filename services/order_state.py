"""Locking an order and moving it through the transition table, with its timeline entry.

Every service that changes an order's status goes through :func:`move_order`, so the transition
table (:mod:`domain.orders`) is checked and the timeline written in one place.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
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


def lock_order(session: Session, order_id: str) -> Order:
    """``SELECT … FOR UPDATE`` the order (always the first row a stage locks)."""
    order = session.scalars(_LOCK_ORDER, {"order_id": order_id}).one_or_none()
    if order is None:
        raise NotFound(f"order {order_id}")
    return order


def move_order(
    session: Session, order: Order, target: OrderStatus, *, actor: str = "system", **detail: Any
) -> None:
    """Move a locked order to ``target`` (raises InvalidTransition) and record it."""
    current = order.status
    order.status = ensure_transition(current, target)
    timeline.record(
        session, order.id, "transition", from_status=current, to_status=target,
        detail=detail or None, actor=actor,
    )  # fmt: skip
    callbacks.record_status_change(session, order, current, target)
