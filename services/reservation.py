"""The first stage: reserve stock for every line of an order, or reject it.

Contract of :func:`reserve_order` (call inside one unit of work):

* the order row is locked first, then stock rows in key order (:mod:`services.locks`), so
  duplicates of the same task serialize and different orders never deadlock;
* an order that is no longer RECEIVED is left alone (the task was a duplicate) — idempotent;
* all lines are reserved or none; the order becomes RESERVED with a payment deadline (and a
  short stage deadline by which the payment stage must have started), or
  REJECTED with ``out_of_stock`` / ``unknown_sku`` / ``inactive_product`` / ``currency_mismatch``
  / ``discount_too_large``;
* which warehouses hold the stock is :func:`domain.allocation.allocate`'s decision under the
  ``policy`` the caller passes (``ALLOCATION_STRATEGY`` and ``WAREHOUSES``, built by
  :func:`workers.ports.allocation_policy`), for the ``region`` of the order's stored
  ``shipping_address`` (JSON on the order row); the default policy is ``fewest_parcels``.

:func:`reserve_batch` does the same for many orders in one transaction (one Celery hop for up to
``RESERVE_BATCH_MAX`` orders): every order is decided exactly as :func:`reserve_order` decides
(both call :func:`_reserve_one`), each in its own SAVEPOINT, so one order's unexpected error
costs that order only. Lock order is the same as the single path's: order rows first (by id),
then every stock row of the batch's SKUs at once, in the global key order, so batches and single
reservations never deadlock one another.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy.exc
from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from domain.aftersale import line_shares
from domain.allocation import DEFAULT_POLICY, Allocation, Line, Policy, allocate
from domain.errors import NotFound, ReservationRefused
from domain.orders import OrderStatus, RejectReason, ensure_transition
from services import callbacks
from services.locks import lock_stock_by_sku
from services.order_state import announce_move
from services.stock import Hold, apply_reservations

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReserveOutcome:
    """What one order's reservation did.

    ``error`` is set only by :func:`reserve_batch`: the order's savepoint failed (or no such
    order exists), so it was rolled back alone and left as it was (RECEIVED). The caller must
    re-drive it on its own (the task hands it to ``orders.process``, which retries and
    dead-letters it with its id); the order's stage deadline makes the sweeper do so otherwise.
    """

    order_id: str
    status: str  # the order's status after the call ("" when there is no such order)
    changed: bool  # False when the call was a duplicate and did nothing
    reason: str | None = None
    error: Exception | None = None
    provider: str | None = None  # the order's payment provider, once RESERVED


# A hot path (one call per order): plain SQL constants on the session's connection, no ORM
# objects. Statement building and ORM loading cost more CPU here than the database work itself,
# so the status moves here are SQL compare-and-sets checked against the transition table
# (ensure_transition) and recorded by services.order_state.announce_move, as move_order does.
_LOCK_ORDER = text(
    "SELECT id, status, currency, source, external_id, reason, payment_provider, "
    "shipping_address->>'region' AS ship_region, discount_amount FROM orders "
    "WHERE id = :id FOR UPDATE"
)
# The batch's orders, locked in id order (the order every batch takes them in).
_LOCK_ORDERS = text(
    "SELECT id, status, currency, source, external_id, reason, payment_provider, "
    "shipping_address->>'region' AS ship_region, discount_amount FROM orders "
    "WHERE id = ANY(CAST(:ids AS text[])) ORDER BY id FOR UPDATE"
)
# The lines of every order of the call in one query (one order for the single path).
_LINES_WITH_PRODUCTS = text(
    """
    SELECT l.order_id, l.sku, l.quantity, p.price_amount, p.currency, p.active
    FROM order_lines l LEFT JOIN products p ON p.sku = l.sku
    WHERE l.order_id = ANY(CAST(:ids AS text[])) ORDER BY l.order_id, l.line_no
    """
)
_PRICE_LINES = text(
    """
    UPDATE order_lines l SET unit_amount = p.price_amount
    FROM products p WHERE l.order_id = :id AND p.sku = l.sku
    """
)
_CHARGE_LINES = text(
    """
    UPDATE order_lines l SET charged_amount = c.amount
    FROM unnest(CAST(:line_nos AS int[]), CAST(:amounts AS bigint[])) AS c(line_no, amount)
    WHERE l.order_id = :id AND l.line_no = c.line_no
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
_PROBE = text("SELECT 1")


@dataclass(frozen=True, slots=True)
class _Priced:
    price_amount: int
    currency: str
    active: bool


@dataclass(slots=True)
class _Pending:
    """A locked RECEIVED order and what deciding its reservation needs."""

    snapshot: callbacks.OrderSnapshot
    provider: str
    region: str | None  # the shipping address's region (the nearest strategy's input)
    discount: int = 0  # minor units off the lines' total (the order message's discount)
    lines: list[Line] = field(default_factory=list)
    products: dict[str, _Priced] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Window:
    """When and how: the clock and stage timings, and the allocation policy."""

    now: datetime
    payment_window_s: int
    redrive_s: int
    policy: Policy = DEFAULT_POLICY


Available = dict[str, dict[str, int]]  # sku -> warehouse -> units free, as stock is taken


def reserve_order(
    session: Session,
    order_id: str,
    *,
    now: datetime,
    payment_window_s: int,
    redrive_s: int = 30,
    policy: Policy = DEFAULT_POLICY,
) -> ReserveOutcome:
    """Reserve one order (see the module docstring); raises :class:`NotFound` for no order."""
    conn = session.connection()
    order = conn.execute(_LOCK_ORDER, {"id": order_id}).one_or_none()
    if order is None:
        raise NotFound(f"order {order_id} not found", field="order_id")
    if order.status != OrderStatus.RECEIVED:
        return ReserveOutcome(order_id, order.status, False, order.reason)
    pending = _load_lines(conn, [_pending(order)])[0]
    available = _lock_available(session, [pending])
    window = _Window(now, payment_window_s, redrive_s, policy)
    return _reserve_one(session, pending, available, window)[0]


def reserve_batch(
    session: Session,
    order_ids: Sequence[str],
    *,
    now: datetime,
    payment_window_s: int,
    redrive_s: int = 30,
    policy: Policy = DEFAULT_POLICY,
) -> list[ReserveOutcome]:
    """Reserve many orders in the caller's one transaction; one outcome per distinct id, in the
    order given (first come, first served: the earlier orders take the stock first).

    * Orders are locked in id order, then every stock row of their SKUs at once, in key order.
    * An order no longer RECEIVED (a duplicate, or repeated in ``order_ids``) is left alone:
      its outcome is unchanged, exactly as :func:`reserve_order` answers.
    * Each RECEIVED order is reserved or rejected in its own SAVEPOINT by the same decision as
      :func:`reserve_order`, against the stock the orders before it left.
    * An unexpected error in one order rolls back its savepoint only: its outcome carries the
      error, the order stays RECEIVED (see :class:`ReserveOutcome`). A missing order is such an
      outcome too (``NotFound``). A lost connection is raised: the whole batch rolls back.
    """
    wanted = list(dict.fromkeys(order_ids))
    if not wanted:
        return []
    conn = session.connection()
    found = {row.id: row for row in conn.execute(_LOCK_ORDERS, {"ids": wanted})}
    received = [_pending(found[i]) for i in wanted
                if i in found and found[i].status == OrderStatus.RECEIVED]  # fmt: skip
    pending = {p.snapshot.id: p for p in _load_lines(conn, received)}
    available = _lock_available(session, received)
    window = _Window(now, payment_window_s, redrive_s, policy)
    outcomes: list[ReserveOutcome] = []
    for order_id in wanted:
        row = found.get(order_id)
        if row is None:
            missing = NotFound(f"order {order_id} not found", field="order_id")
            outcomes.append(ReserveOutcome(order_id, "", False, error=missing))
        elif order_id not in pending:
            outcomes.append(ReserveOutcome(order_id, row.status, False, row.reason))
        else:
            outcomes.append(_reserve_in_savepoint(session, pending[order_id], available, window))
    return outcomes


def _pending(row: Any) -> _Pending:
    snapshot = callbacks.OrderSnapshot(row.id, row.source, row.external_id, row.currency)
    return _Pending(snapshot, row.payment_provider, row.ship_region, row.discount_amount)


def _load_lines(conn: Connection, orders: list[_Pending]) -> list[_Pending]:
    """Fill in the lines and their products of ``orders`` (one query for all of them)."""
    if not orders:
        return orders
    by_id = {o.snapshot.id: o for o in orders}
    rows = conn.execute(_LINES_WITH_PRODUCTS, {"ids": list(by_id)})
    for order_id, sku, qty, price, currency, active in rows:
        order = by_id[order_id]
        order.lines.append(Line(sku, qty))
        if price is not None:  # an unknown SKU has no product row: allocate() rejects it
            order.products[sku] = _Priced(price, currency, active)
    return orders


def _lock_available(session: Session, orders: list[_Pending]) -> Available:
    """Lock every stock row of the orders' SKUs (key order); what each warehouse has free."""
    available: Available = {}
    skus = [line.sku for order in orders for line in order.lines]
    for row in lock_stock_by_sku(session, skus):
        available.setdefault(row.sku, {})[row.warehouse] = row.on_hand - row.reserved
    return available


def _reserve_in_savepoint(
    session: Session, order: _Pending, available: Available, window: _Window
) -> ReserveOutcome:
    """:func:`_reserve_one` in a SAVEPOINT; the stock it took leaves ``available`` only once
    the savepoint is released."""
    try:
        with session.begin_nested():
            outcome, taken = _reserve_one(session, order, available, window)
    except Exception as exc:  # noqa: BLE001 - any error: this order alone waits for a retry
        _still_usable(session, exc)
        log.warning("reservation of %s failed alone (left RECEIVED): %r", order.snapshot.id, exc)
        return ReserveOutcome(order.snapshot.id, OrderStatus.RECEIVED, False, error=exc)
    for a in taken:
        available[a.sku][a.warehouse] -= a.quantity
    return outcome


def _still_usable(session: Session, exc: Exception) -> None:
    """Re-raise ``exc`` unless the transaction survived the savepoint's rollback: a lost
    connection (or a rollback that failed) fails the whole batch, which is then retried."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        raise exc
    try:
        session.connection().execute(_PROBE)
    except Exception:  # noqa: BLE001 - whatever broke the transaction, the batch fails
        raise exc from None


def _reserve_one(
    session: Session, order: _Pending, available: Available, window: _Window
) -> tuple[ReserveOutcome, list[Allocation]]:
    """Reserve or reject one locked RECEIVED order against ``available`` (its stock rows are
    locked); returns the outcome and the stock it took. The one decision both paths share."""
    snapshot, products = order.snapshot, order.products
    try:
        mismatch = sorted(s for s, p in products.items() if p.currency != snapshot.currency)
        if mismatch:
            raise ReservationRefused(RejectReason.CURRENCY_MISMATCH, ",".join(mismatch))
        active = {s: p.active for s, p in products.items()}
        allocations = allocate(order.lines, available, active, window.policy, order.region)
        if order.discount and order.discount >= _listed(order):
            why = f"discount {order.discount} of {_listed(order)}"
            raise ReservationRefused(RejectReason.DISCOUNT_TOO_LARGE, why)
    except ReservationRefused as exc:
        return _reject(session, snapshot, exc), []
    conn, order_id = session.connection(), snapshot.id
    expires_at = window.now + timedelta(seconds=window.payment_window_s)
    apply_reservations(
        session, order_id, [Hold(a.sku, a.warehouse, a.quantity) for a in allocations], expires_at
    )
    conn.execute(_PRICE_LINES, {"id": order_id})
    total = _charge(conn, order)
    target = ensure_transition(OrderStatus.RECEIVED, OrderStatus.RESERVED)
    conn.execute(
        _MARK_RESERVED,
        {
            "id": order_id,
            "status": target,
            "from_status": OrderStatus.RECEIVED,
            "total": total,
            "expires_at": expires_at,
            # The payment stage must start before this, or the sweeper re-drives it.
            "stage_deadline": min(window.now + timedelta(seconds=window.redrive_s), expires_at),
        },
    )
    reserved = dataclasses.replace(snapshot, total_amount=total)
    detail = {
        "allocations": [[a.sku, a.warehouse, a.quantity] for a in allocations],
        "allocation_strategy": str(window.policy.strategy),
        "total_amount": total,
        "payment_deadline": expires_at.isoformat(),
    }
    announce_move(session, reserved, OrderStatus.RECEIVED, target, detail=detail)
    return ReserveOutcome(order_id, target, True, provider=order.provider), allocations


def _charge(conn: Connection, order: _Pending) -> int:
    """What the order is charged: its lines at catalog prices less its discount. With a
    discount, each line's share of it (:func:`domain.aftersale.line_shares`, in line order) is
    stored on the line, for its refunds."""
    listed = _listed(order)
    if not order.discount:
        return listed
    prices = [order.products[line.sku].price_amount for line in order.lines]
    total = listed - order.discount  # above 0: a larger discount was refused
    shares = line_shares(
        [(no, line.quantity, p) for no, (p, line) in enumerate(zip(prices, order.lines,
                                                                   strict=True), 1)], total,
    )  # fmt: skip
    conn.execute(_CHARGE_LINES, {"id": order.snapshot.id, "line_nos": list(shares),
                                 "amounts": list(shares.values())})  # fmt: skip
    return total


def _listed(order: _Pending) -> int:
    """The order's lines at catalog prices (every SKU priced: allocation refused any other)."""
    return sum(order.products[line.sku].price_amount * line.quantity for line in order.lines)


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
