"""Row locks taken in one global key order, so concurrent transactions never deadlock.

Every transaction that touches several stock rows locks them through :func:`lock_stock`, which
sorts by ``(sku, warehouse)``. Two orders that share SKUs then queue on the first shared row
instead of each holding one row the other needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from sqlalchemy import select, text, tuple_
from sqlalchemy.orm import Session

from models import Stock


class StockRow(NamedTuple):
    sku: str
    warehouse: str
    on_hand: int
    reserved: int


_LOCK_BY_SKU = text(
    "SELECT sku, warehouse, on_hand, reserved FROM stock WHERE sku = ANY(CAST(:skus AS text[])) "
    "ORDER BY sku, warehouse FOR UPDATE"
)


def lock_stock_by_sku(session: Session, skus: Iterable[str]) -> list[StockRow]:
    """Lock every stock row of these SKUs (all warehouses), in key order; plain rows (a hot
    path: no ORM objects)."""
    wanted = sorted(set(skus))
    if not wanted:
        return []
    rows = session.connection().execute(_LOCK_BY_SKU, {"skus": wanted})
    return [StockRow(*row) for row in rows]


def lock_stock(session: Session, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Stock]:
    """Lock the given (sku, warehouse) rows, in key order."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    stmt = (
        select(Stock)
        .where(tuple_(Stock.sku, Stock.warehouse).in_(wanted))
        .order_by(Stock.sku, Stock.warehouse)
        .with_for_update()
    )
    return {(s.sku, s.warehouse): s for s in session.scalars(stmt)}
