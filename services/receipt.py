"""Receipt and the after-sale window: how a delivered order becomes COMPLETED (issue 22).

1. **Confirmation** (:func:`confirm_receipt`): the buyer (through the API or an operator
   through the CLI) confirms a DELIVERED order: it moves to RECEIPT_CONFIRMED with the actor on
   the timeline. Confirming again is a no-op that answers the current status (a retried request
   must not fail); an order not delivered yet is a 409 naming ``status``.
2. **Automatic receipt** (:func:`sweep_receipts`): a DELIVERED order counts as received
   ``auto_receive_s`` after delivery (:func:`domain.aftersale.receipt_due`); the sweep moves it
   to RECEIPT_CONFIRMED with ``auto`` in the timeline's detail.
3. **Completion**: a RECEIPT_CONFIRMED order whose after-sale window (``window_s`` after
   receipt, :func:`domain.aftersale.window_ends`) has passed moves to COMPLETED, unless a
   return of it is still open (not in :data:`domain.aftersale.FINAL_STATUSES`): it completes
   at the first sweep after its last return is over.
4. **Clock and claims.** Both moments are stamped by :func:`services.order_state.move_order`
   with the database's clock, and the sweep compares them with the same clock (``now`` only
   overrides it in tests), so hosts whose clocks disagree still agree on every deadline. The
   deadlines are worked out from today's settings when the sweep runs: lengthening the window
   lengthens it for orders already waiting. Each claim takes at most ``limit`` orders with
   ``FOR UPDATE SKIP LOCKED`` (partial indexes of migration 0020), so two sweeps split the work
   and neither waits on an order a worker holds; every move is a compare-and-set through the
   transition table, so a confirmation racing the sweep moves the order once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, DateTime, exists, func, literal, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from domain.aftersale import FINAL_STATUSES as RETURN_FINAL
from domain.errors import ConflictError
from domain.orders import OrderStatus
from models import Order, Return
from services.order_state import lock_order, move_order

ACTOR = "sweeper"
#: Statuses a confirmation leaves alone (it already happened): answered, not refused.
_ALREADY = frozenset({OrderStatus.RECEIPT_CONFIRMED, OrderStatus.COMPLETED})


def confirm_receipt(session: Session, order_id: str, *, actor: str) -> str:
    """Rule 1: move a DELIVERED order to RECEIPT_CONFIRMED; returns the order's status after
    it. Raises NotFound for an unknown order, ConflictError (``status``) for one not delivered."""
    order = lock_order(session, order_id)
    if order.status in _ALREADY:
        return order.status
    if order.status != OrderStatus.DELIVERED:
        raise ConflictError(
            f"order {order_id} is {order.status}; receipt can be confirmed once it is DELIVERED",
            field="status",
        )
    move_order(session, order, OrderStatus.RECEIPT_CONFIRMED, actor=actor, confirmed_by="buyer")
    return order.status


@dataclass
class ReceiptSweep:
    """Ids of the orders each step of one sweep moved."""

    confirmed: list[str] = field(default_factory=list)  # DELIVERED -> RECEIPT_CONFIRMED
    completed: list[str] = field(default_factory=list)  # RECEIPT_CONFIRMED -> COMPLETED


def sweep_receipts(
    session: Session,
    *,
    auto_receive_s: int,
    window_s: int,
    limit: int,
    now: datetime | None = None,
) -> ReceiptSweep:
    """Rules 2-4: confirm the orders delivered ``auto_receive_s`` ago or more, then complete
    those received ``window_s`` ago or more; at most ``limit`` of each per call."""
    result = ReceiptSweep()
    for order in _claim(session, OrderStatus.DELIVERED, Order.delivered_at, auto_receive_s,
                        limit, now):  # fmt: skip
        move_order(session, order, OrderStatus.RECEIPT_CONFIRMED, actor=ACTOR, auto=True,
                   after_s=auto_receive_s)  # fmt: skip
        result.confirmed.append(order.id)
    for order in _claim(session, OrderStatus.RECEIPT_CONFIRMED, Order.receipt_confirmed_at,
                        window_s, limit, now):  # fmt: skip
        move_order(session, order, OrderStatus.COMPLETED, actor=ACTOR, window_s=window_s)
        result.completed.append(order.id)
    return result


def _claim(
    session: Session,
    status: OrderStatus,
    since: InstrumentedAttribute[Any],
    after_s: int,
    limit: int,
    now: datetime | None,
) -> list[Order]:
    """Orders in ``status`` whose ``since`` moment is ``after_s`` or more in the past (for
    completion: with no open return)."""
    clock: ColumnElement[Any] = func.now() if now is None else literal(now, DateTime(True))
    due = since <= clock - timedelta(seconds=after_s)
    if status == OrderStatus.RECEIPT_CONFIRMED:
        open_return = exists().where(Return.order_id == Order.id,
                                     Return.status.not_in(list(RETURN_FINAL)))  # fmt: skip
        due = due & ~open_return
    return list(
        session.scalars(
            select(Order)
            .where(Order.status == status, due)
            .order_by(since)
            .limit(limit)
            .with_for_update(skip_locked=True, of=Order)
        )
    )
