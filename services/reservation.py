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

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from domain.allocation import Line, allocate
from domain.errors import NotFound, OutOfStock
from domain.orders import OrderStatus, RejectReason, ensure_transition
from models import Order, OrderLine, Product
from services import callbacks, timeline
from services.locks import lock_stock_by_sku
from services.stock import Hold, apply_reservations


@dataclass(frozen=True, slots=True)
class ReserveOutcome:
    order_id: str
    status: str  # the order's status after the call
    changed: bool  # False when the call was a duplicate and did nothing
    reason: str | None = None


def reserve_order(
    session: Session, order_id: str, *, now: datetime, payment_window_s: int, redrive_s: int = 30
) -> ReserveOutcome:
    order = session.scalars(
        select(Order).where(Order.id == order_id).with_for_update(of=Order)
    ).one_or_none()
    if order is None:
        raise NotFound(f"order {order_id}")
    if order.status != OrderStatus.RECEIVED:
        return ReserveOutcome(order_id, order.status, False, order.reason)
    lines = [
        Line(sku, qty)
        for sku, qty in session.execute(
            select(OrderLine.sku, OrderLine.quantity).where(OrderLine.order_id == order_id)
        )
    ]
    skus = sorted({line.sku for line in lines})
    products = {p.sku: p for p in session.scalars(select(Product).where(Product.sku.in_(skus)))}
    stock_rows = lock_stock_by_sku(session, skus)
    available: dict[str, dict[str, int]] = {}
    for row in stock_rows:
        available.setdefault(row.sku, {})[row.warehouse] = row.on_hand - row.reserved
    try:
        mismatch = [s for s, p in products.items() if p.currency != order.currency]
        if mismatch:
            raise OutOfStock(RejectReason.CURRENCY_MISMATCH, ",".join(mismatch))
        allocations = allocate(lines, available, {s: p.active for s, p in products.items()})
    except OutOfStock as exc:
        return _reject(session, order, exc)
    expires_at = now + timedelta(seconds=payment_window_s)
    apply_reservations(
        session, order_id, [Hold(a.sku, a.warehouse, a.quantity) for a in allocations], expires_at
    )
    _price_lines(session, order_id, products)
    total = sum(products[line.sku].price_amount * line.quantity for line in lines)
    target = ensure_transition(order.status, OrderStatus.RESERVED)
    session.execute(
        update(Order)
        .where(Order.id == order_id, Order.status == OrderStatus.RECEIVED)
        .values(
            status=target,
            total_amount=total,
            payment_deadline=expires_at,
            # The payment stage must start before this, or the sweeper re-drives it.
            stage_deadline=min(now + timedelta(seconds=redrive_s), expires_at),
            stage_attempts=0,
        )
    )
    timeline.record(
        session,
        order_id,
        "transition",
        from_status=OrderStatus.RECEIVED,
        to_status=target,
        detail={
            "allocations": [[a.sku, a.warehouse, a.quantity] for a in allocations],
            "total_amount": total,
            "payment_deadline": expires_at.isoformat(),
        },
    )
    # The ORM UPDATE above synchronized ``order`` in the session (synchronize_session="auto"),
    # so the callback sees the new status and total without another round trip.
    callbacks.record_status_change(session, order, OrderStatus.RECEIVED, target)
    return ReserveOutcome(order_id, target, True)


def _price_lines(session: Session, order_id: str, products: dict[str, Product]) -> None:
    for sku, product in products.items():
        session.execute(
            update(OrderLine)
            .where(OrderLine.order_id == order_id, OrderLine.sku == sku)
            .values(unit_amount=product.price_amount)
        )


def _reject(session: Session, order: Order, exc: OutOfStock) -> ReserveOutcome:
    current = order.status
    target = ensure_transition(current, OrderStatus.REJECTED)
    session.execute(
        update(Order)
        .where(Order.id == order.id, Order.status == OrderStatus.RECEIVED)
        .values(status=target, reason=exc.reason, stage_deadline=None)
    )
    timeline.record(
        session,
        order.id,
        "transition",
        from_status=current,
        to_status=target,
        detail={"reason": exc.reason, "detail": exc.detail},
    )
    callbacks.record_status_change(session, order, current, target)
    return ReserveOutcome(order.id, target, True, exc.reason)
