"""Stock changes. Every counter change goes through here and writes a ledger row beside it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from models import Reservation, Stock, StockMovement
from services.locks import lock_stock


@dataclass(frozen=True, slots=True)
class Hold:
    sku: str
    warehouse: str
    quantity: int


# One statement for all holds of an order: raise the counters, write the ledger rows and the
# reservations. The holds are summed per (sku, warehouse) first, so a repeated key can never make
# the UPDATE ... FROM apply one quantity while the ledger records two.
_APPLY_HOLDS = text(
    """
    WITH h AS (
        SELECT sku, warehouse, sum(quantity)::int AS quantity
        FROM unnest(CAST(:skus AS text[]), CAST(:warehouses AS text[]), CAST(:quantities AS int[]))
             AS x(sku, warehouse, quantity)
        GROUP BY sku, warehouse),
    counters AS (
        UPDATE stock SET reserved = stock.reserved + h.quantity, updated_at = now()
        FROM h WHERE stock.sku = h.sku AND stock.warehouse = h.warehouse
        RETURNING stock.sku),
    ledger AS (
        INSERT INTO stock_movements (sku, warehouse, kind, delta_reserved, order_id)
        SELECT sku, warehouse, 'reserve', quantity, :order_id FROM h)
    INSERT INTO reservations (order_id, sku, warehouse, quantity, expires_at)
    SELECT :order_id, sku, warehouse, quantity, :expires_at FROM h
    RETURNING (SELECT count(*) FROM counters)
    """
)


def apply_reservations(
    session: Session, order_id: str, holds: Sequence[Hold], expires_at: datetime
) -> None:
    """Raise ``reserved`` for each hold (rows must already be locked), with ledger rows.

    One round trip. The database CHECK ``reserved <= on_hand`` is the last guard if the caller
    got it wrong; a hold on a stock row that does not exist raises :class:`LookupError` (the
    transaction must then be rolled back: the ledger rows were written).
    """
    if not holds:
        return
    params = {
        "skus": [h.sku for h in holds],
        "warehouses": [h.warehouse for h in holds],
        "quantities": [h.quantity for h in holds],
        "order_id": order_id,
        "expires_at": expires_at,
    }
    updated = session.connection().execute(_APPLY_HOLDS, params).scalars().first()
    expected = len({(h.sku, h.warehouse) for h in holds})
    if updated != expected:
        raise LookupError(f"order {order_id}: {expected} stock rows to hold, {updated} exist")


def _active(order_ids: Sequence[str], warehouse: str | None) -> Select[Any]:
    stmt = select(Reservation).where(
        Reservation.order_id.in_(order_ids), Reservation.status == "ACTIVE"
    )
    if warehouse is not None:
        stmt = stmt.where(Reservation.warehouse == warehouse)
    return stmt.order_by(Reservation.id).with_for_update()


def release_reservations(
    session: Session,
    order_ids: Sequence[str],
    *,
    now: datetime,
    reason: str,
    warehouse: str | None = None,
) -> int:
    """Release every ACTIVE reservation of these orders (only those in ``warehouse`` if
    given: one parcel's); returns the units released.

    Idempotent: a reservation is released once (status ACTIVE -> RELEASED under row locks), so
    running this twice, or from two sweepers, releases nothing the second time.
    """
    if not order_ids:
        return 0
    active = list(session.scalars(_active(order_ids, warehouse)))
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


def ship_reservations(
    session: Session, order_id: str, *, now: datetime, warehouse: str | None = None
) -> int:
    """The parcel left: each ACTIVE reservation (only those in ``warehouse`` if given: the
    parcel's) becomes CONSUMED and its units leave both ``on_hand`` and ``reserved``, with
    ledger rows. Idempotent like the release."""
    active = list(session.scalars(_active([order_id], warehouse)))
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


@dataclass(frozen=True, slots=True)
class Returned:
    """Units of a return that arrived at ``warehouse``, with the ledger kind they go under
    (:func:`domain.aftersale.ledger_kind`) and their change to on hand."""

    sku: str
    warehouse: str
    kind: str  # return_restock | write_off
    delta_on_hand: int
    units: int


def receive_returned(
    session: Session, order_id: str, rows: Sequence[Returned], *, actor: str, reason: str
) -> None:
    """Returned units come back: restocked ones raise ``on_hand`` (the stock row is made if
    the warehouse never held the SKU), written-off ones change no counter; every row is a
    ledger row, so the drift report follows. ``reason`` names the return."""
    if not rows:
        return
    keys = {(r.sku, r.warehouse) for r in rows}
    session.execute(
        pg_insert(Stock)
        .values([{"sku": sku, "warehouse": wh, "on_hand": 0, "reserved": 0} for sku, wh in keys])
        .on_conflict_do_nothing()
    )
    locked = lock_stock(session, keys)
    for r in rows:
        locked[(r.sku, r.warehouse)].on_hand += r.delta_on_hand
    session.execute(
        insert(StockMovement),
        [
            {"sku": r.sku, "warehouse": r.warehouse, "kind": r.kind,
             "delta_on_hand": r.delta_on_hand, "order_id": order_id,
             "reason": f"{reason}: {r.units} unit(s)"[:200], "actor": actor}
            for r in rows
        ],
    )  # fmt: skip


def release_units(
    session: Session, order_id: str, units: Mapping[str, int], *, now: datetime, reason: str
) -> list[Hold]:
    """Release ``units`` (by SKU) of the order's ACTIVE reservations and no more: a refund-only
    return before shipping (:mod:`services.returns`). Each SKU is taken from its reservations
    in id order; a reservation left with nothing is RELEASED (ledger ``release``), one left
    with some keeps them (ledger ``release_part`` for what it gave back), so the ledger always
    says how much each reservation holds. Returns what was taken where. Raises ValueError when
    the reservations hold fewer units than asked (the caller checked the request first)."""
    rows = [r for r in session.scalars(_active([order_id], None)) if units.get(r.sku)]
    lock_stock(session, ((r.sku, r.warehouse) for r in rows))
    left = dict(units)
    ledger: list[dict[str, Any]] = []
    taken: list[Hold] = []
    for r in rows:
        take = min(r.quantity, left.get(r.sku, 0))
        if take <= 0:
            continue
        left[r.sku] -= take
        taken.append(Hold(r.sku, r.warehouse, take))
        if take == r.quantity:
            r.status, r.released_at = "RELEASED", now
        else:
            r.quantity -= take
        session.execute(
            update(Stock)
            .where(Stock.sku == r.sku, Stock.warehouse == r.warehouse)
            .values(reserved=Stock.reserved - take)
        )
        ledger.append({"sku": r.sku, "warehouse": r.warehouse, "order_id": order_id,
                       "kind": "release" if r.status == "RELEASED" else "release_part",
                       "delta_reserved": -take, "reason": reason[:200]})  # fmt: skip
    short = {sku: n for sku, n in left.items() if n > 0}
    if short:
        raise ValueError(f"order {order_id} holds fewer units than asked to release: {short}")
    if ledger:
        session.execute(insert(StockMovement), ledger)
    return taken
