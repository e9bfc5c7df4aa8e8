"""Stock changes. Every counter change goes through here and writes a ledger row beside it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from models import Reservation, Stock, StockMovement
from services.locks import lock_stock


@dataclass(frozen=True, slots=True)
class Hold:
    sku: str
    warehouse: str
    quantity: int


def apply_reservations(
    session: Session, order_id: str, holds: Sequence[Hold], expires_at: datetime
) -> None:
    """Raise ``reserved`` for each hold (rows must already be locked), with ledger rows.

    The database CHECK ``reserved <= on_hand`` is the last guard if the caller got it wrong.
    """
    for hold in holds:
        session.execute(
            update(Stock)
            .where(Stock.sku == hold.sku, Stock.warehouse == hold.warehouse)
            .values(reserved=Stock.reserved + hold.quantity)
        )
    session.execute(
        insert(StockMovement),
        [
            {
                "sku": h.sku,
                "warehouse": h.warehouse,
                "kind": "reserve",
                "delta_reserved": h.quantity,
                "order_id": order_id,
            }
            for h in holds
        ],
    )
    session.execute(
        insert(Reservation),
        [
            {
                "order_id": order_id,
                "sku": h.sku,
                "warehouse": h.warehouse,
                "quantity": h.quantity,
                "expires_at": expires_at,
            }
            for h in holds
        ],
    )


def release_reservations(
    session: Session, order_ids: Sequence[str], *, now: datetime, reason: str
) -> int:
    """Release every ACTIVE reservation of these orders; returns the units released.

    Idempotent: a reservation is released once (status ACTIVE -> RELEASED under row locks), so
    running this twice, or from two sweepers, releases nothing the second time.
    """
    if not order_ids:
        return 0
    active = list(
        session.scalars(
            select(Reservation)
            .where(Reservation.order_id.in_(order_ids), Reservation.status == "ACTIVE")
            .order_by(Reservation.id)
            .with_for_update()
        )
    )
    if not active:
        return 0
    lock_stock(session, ((r.sku, r.warehouse) for r in active))
    totals: dict[tuple[str, str], int] = {}
    for r in active:
        totals[(r.sku, r.warehouse)] = totals.get((r.sku, r.warehouse), 0) + r.quantity
        r.status = "RELEASED"
        r.released_at = now
    for (sku, warehouse), qty in sorted(totals.items()):
        session.execute(
            update(Stock)
            .where(Stock.sku == sku, Stock.warehouse == warehouse)
            .values(reserved=Stock.reserved - qty)
        )
    session.execute(
        insert(StockMovement),
        [
            {
                "sku": r.sku,
                "warehouse": r.warehouse,
                "kind": "release",
                "delta_reserved": -r.quantity,
                "order_id": r.order_id,
                "reason": reason,
            }
            for r in active
        ],
    )
    return sum(totals.values())


def ship_reservations(session: Session, order_id: str, *, now: datetime) -> int:
    """The parcel left: each ACTIVE reservation becomes CONSUMED and its units leave both
    ``on_hand`` and ``reserved``, with ledger rows. Idempotent like the release."""
    active = list(
        session.scalars(
            select(Reservation)
            .where(Reservation.order_id == order_id, Reservation.status == "ACTIVE")
            .order_by(Reservation.id)
            .with_for_update()
        )
    )
    if not active:
        return 0
    lock_stock(session, ((r.sku, r.warehouse) for r in active))
    for r in active:
        r.status = "CONSUMED"
        r.released_at = now
        session.execute(
            update(Stock)
            .where(Stock.sku == r.sku, Stock.warehouse == r.warehouse)
            .values(on_hand=Stock.on_hand - r.quantity, reserved=Stock.reserved - r.quantity)
        )
    session.execute(
        insert(StockMovement),
        [
            {
                "sku": r.sku,
                "warehouse": r.warehouse,
                "kind": "ship",
                "delta_on_hand": -r.quantity,
                "delta_reserved": -r.quantity,
                "order_id": order_id,
            }
            for r in active
        ],
    )
    return sum(r.quantity for r in active)
