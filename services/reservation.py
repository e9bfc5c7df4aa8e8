"""The first stage: reserve stock for every line of an order, or reject it.

Contract of :func:`reserve_order` (call inside one unit of work):

* the order row is locked first, then stock rows in key order (:mod:`services.locks`), so
  duplicates of the same task serialize and different orders never deadlock;
* an order that is no longer RECEIVED is left alone (the task was a duplicate) — idempotent;
* all lines are reserved or none; the order becomes RESERVED with a payment deadline (and a
  short stage deadline by which the payment stage must have started), or
  REJECTED with ``out_of_stock`` / ``unknown_sku`` / ``inactive_product`` / ``currency_mismatch``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from domain.allocation import Line, allocate
from domain.errors import NotFound, ReservationRefused
from domain.orders import OrderStatus, RejectReason, ensure_transition
from services import callbacks
from services.locks import lock_stock_by_sku
from services.order_state import announce_move
from services.stock import Hold, apply_reservations


@dataclass(frozen=True, slots=True)
class ReserveOutcome:
    order_id: str
    status: str  # the order's status after the call
    changed: bool  # False when the call was a duplicate and did nothing
    reason: str | None = None


# A hot path (one call per order): plain SQL constants on the session's connection, no ORM
# objects. Statement building and ORM loading cost more CPU here than the database work itself,
# so the status moves here are SQL compare-and-sets checked against the transition table
# (ensure_transition) and recorded by services.order_state.announce_move, as move_order does.
_LOCK_ORDER = text(
    "SELECT status, currency, source, external_id, reason FROM orders WHERE id = :id FOR UPDATE"
)
_LINES_WITH_PRODUCTS = text(
    """
    SELECT l.sku, l.quantity, p.price_amount, p.currency, p.active
    FROM order_lines l LEFT JOIN products p ON p.sku = l.sku
    WHERE l.order_id = :id ORDER BY l.line_no
    """
)
_PRICE_LINES = text(
    """
    UPDATE order_lines l SET unit_amount = p.price_amount
    FROM products p WHERE l.order_id = :id AND p.sku = l.sku
    """
)
_MARK_RESERVED = text(
    """
    UPDATE orders SET status = :status, total_amount = :total, payment_deadline = :expires_at,
           stage_deadline = :stage_deadline, stage_attempts = 0, updated_at = now()
    WHERE id = :id AND status = :from_status
    """
)
_MARK_REJECTED = text(
    """
    UPDATE orders SET status = :status, reason = :reason, stage_deadline = NULL,
           updated_at = now()
    WHERE id = :id AND status = :from_status
    """
)


@dataclass(frozen=True, slots=True)
class _Priced:
    price_amount: int
    currency: str
    active: bool


def reserve_order(
    session: Session, order_id: str, *, now: datetime, payment_window_s: int, redrive_s: int = 30
) -> ReserveOutcome:
    conn = session.connection()
    order = conn.execute(_LOCK_ORDER, {"id": order_id}).one_or_none()
    if order is None:
        raise NotFound(f"order {order_id} not found", field="order_id")
    if order.status != OrderStatus.RECEIVED:
        return ReserveOutcome(order_id, order.status, False, order.reason)
    snapshot = callbacks.OrderSnapshot(order_id, order.source, order.external_id, order.currency)
    lines: list[Line] = []
    products: dict[str, _Priced] = {}
    for sku, qty, price, currency, active in conn.execute(_LINES_WITH_PRODUCTS, {"id": order_id}):
        lines.append(Line(sku, qty))
        if price is not None:  # an unknown SKU has no product row: allocate() rejects it
            products[sku] = _Priced(price, currency, active)
    available: dict[str, dict[str, int]] = {}
    for row in lock_stock_by_sku(session, [line.sku for line in lines]):
        available.setdefault(row.sku, {})[row.warehouse] = row.on_hand - row.reserved
    try:
        mismatch = sorted(s for s, p in products.items() if p.currency != order.currency)
        if mismatch:
            raise ReservationRefused(RejectReason.CURRENCY_MISMATCH, ",".join(mismatch))
        allocations = allocate(lines, available, {s: p.active for s, p in products.items()})
    except ReservationRefused as exc:
        return _reject(session, snapshot, exc)
    expires_at = now + timedelta(seconds=payment_window_s)
    apply_reservations(
        session, order_id, [Hold(a.sku, a.warehouse, a.quantity) for a in allocations], expires_at
    )
    conn.execute(_PRICE_LINES, {"id": order_id})
    total = sum(products[line.sku].price_amount * line.quantity for line in lines)
    target = ensure_transition(order.status, OrderStatus.RESERVED)
    conn.execute(
        _MARK_RESERVED,
        {
            "id": order_id,
            "status": target,
            "from_status": OrderStatus.RECEIVED,
            "total": total,
            "expires_at": expires_at,
            # The payment stage must start before this, or the sweeper re-drives it.
            "stage_deadline": min(now + timedelta(seconds=redrive_s), expires_at),
        },
    )
    reserved = callbacks.OrderSnapshot(
        order_id, order.source, order.external_id, order.currency, total_amount=total
    )
    detail = {
        "allocations": [[a.sku, a.warehouse, a.quantity] for a in allocations],
        "total_amount": total,
        "payment_deadline": expires_at.isoformat(),
    }
    announce_move(session, reserved, OrderStatus.RECEIVED, target, detail=detail)
    return ReserveOutcome(order_id, target, True)


def _reject(
    session: Session, order: callbacks.OrderSnapshot, exc: ReservationRefused
) -> ReserveOutcome:
    target = ensure_transition(OrderStatus.RECEIVED, OrderStatus.REJECTED)
    session.connection().execute(
        _MARK_REJECTED,
        {
            "id": order.id,
            "status": target,
            "reason": exc.reason,
            "from_status": OrderStatus.RECEIVED,
        },
    )
    rejected = dataclasses.replace(order, reason=exc.reason)
    detail = {"reason": exc.reason, "detail": exc.detail}
    announce_move(session, rejected, OrderStatus.RECEIVED, target, detail=detail)
    return ReserveOutcome(order.id, target, True, exc.reason)
