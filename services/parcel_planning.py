"""Planning an order's parcels and re-allocating refused ones: the shipping stage's parcels
(:mod:`services.shipping` books and ships them).

**A refused parcel** (:func:`refuse_parcel`): a refusal whose code says the warehouse cannot
ship it (:data:`~adapters.logistics.base.REALLOCATE_CODES`: out of stock there, closed) is
re-allocated in one transaction: the parcel is cancelled (``refused:<code>``), its units are
released there and reserved elsewhere by the configured allocation policy (ledger ``release``
and ``reserve`` rows), and new parcels are created, which the same task then books. Excluded:
the refusing warehouse, any that refused this order before, and any with a parcel of this
order not booked yet (its request must not change once it may have been sent). If no
warehouse can take the lines, the order goes to NEEDS_ATTENTION (``reallocation_failed: …``)
naming them, and the parcel's reason ends in ``[unplaced]`` (:mod:`domain.parcels` rule 7):
the buyer paid for lines no parcel carries. Any other refusal puts the order in
NEEDS_ATTENTION with the code, as before parcels.

**Unplaced lines are never left behind.** The order moves on only once they are settled:
an operator's *retry* reserves them again (:func:`rereserve_unplaced`: any warehouse with
free stock now, under the configured policy, except one holding a parcel of the order not
booked yet; ledger ``reserve`` rows and new parcels as for a re-allocation, the parcels
already planned keep their keys) or, when no warehouse has them, is refused naming them and
changes nothing; a *cancel* or *resolve* refunds their share
(:func:`services.payments.close.refund_unplaced`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.logistics.base import REALLOCATE_CODES
from domain.allocation import Allocation, Line, Policy
from domain.errors import ConflictError, ReservationRefused
from domain.orders import OrderStatus
from domain.parcels import booking_key, plan_parcels, reallocation, refused_reason, settled
from models import Order, Product, Reservation, Shipment, ShipmentLine
from models.logistics import OUTBOUND_ONLY
from services import timeline
from services.locks import lock_stock_by_sku
from services.order_state import lock_order, move_order
from services.parcels import (
    live_parcels,
    lock_parcel,
    named,
    parcel_lines,
    parcel_of,
    unplaced_lines,
    unplaced_parcels,
)
from services.stock import Hold, apply_reservations, release_reservations

#: Statuses in which an order's parcels are booked by :func:`services.shipping.book`.
BOOKING = (OrderStatus.PAID, OrderStatus.PARTIALLY_SHIPPED)
ACTOR = "shipping"


def _held(session: Session, order_id: str, warehouse: str | None = None) -> list[Any]:
    stmt = select(Reservation.sku, Reservation.warehouse, Reservation.quantity).where(
        Reservation.order_id == order_id, Reservation.status == "ACTIVE"
    )
    if warehouse is not None:
        stmt = stmt.where(Reservation.warehouse == warehouse)
    return list(session.execute(stmt))


def _add_parcel(
    session: Session,
    order_id: str,
    warehouse: str | None,
    lines: Sequence[tuple[str, int]],
    *,
    key: str | None = None,
) -> Shipment:
    """A new parcel with the next ``seq`` of its (order, warehouse), and its lines."""
    last = session.scalar(
        select(func.max(Shipment.seq)).where(
            Shipment.order_id == order_id,
            Shipment.warehouse.is_(None) if warehouse is None else Shipment.warehouse == warehouse,
        )
    )
    seq = (last or 0) + 1
    shipment = Shipment(order_id=order_id, warehouse=warehouse, seq=seq, status="PENDING",
                        booking_key=key or booking_key(order_id, warehouse, seq))  # fmt: skip
    session.add(shipment)
    session.flush()
    session.add_all(ShipmentLine(shipment_id=shipment.id, sku=sku, quantity=qty)
                    for sku, qty in lines)  # fmt: skip
    return shipment


def plan_order(session: Session, order: Order) -> list[Shipment]:
    """Create the (locked) order's parcels from its held stock, one per warehouse, with their
    lines (:func:`domain.parcels.plan_parcels`), unless it has parcels already: planning twice
    creates nothing more (and ``UNIQUE (order_id, warehouse, seq)`` backs that up). Returns
    the parcels created."""
    if session.scalar(select(Shipment.id).where(Shipment.order_id == order.id, OUTBOUND_ONLY)
                      .limit(1)):  # fmt: skip
        return []
    plan = plan_parcels((sku, wh, qty) for sku, wh, qty in _held(session, order.id))
    created = [_add_parcel(session, order.id, wh, lines) for wh, lines in plan.items()]
    if len(created) > 1:
        timeline.record(
            session, order.id, "parcels", actor=ACTOR,
            detail={"parcels": [[p.id, p.warehouse] for p in created]},
        )  # fmt: skip
    return created


def manual_parcel(session: Session, order_id: str) -> Shipment:
    """The one parcel of an order without any, for a waybill the warehouse reports
    (:func:`services.shipping.ship`): all the held lines, at their warehouse if only one."""
    plan = plan_parcels((sku, wh, qty) for sku, wh, qty in _held(session, order_id))
    warehouse = next(iter(plan)) if len(plan) == 1 else None
    lines = plan_parcels((sku, "", qty) for sku, _, qty in _held(session, order_id)).get("", [])
    return _add_parcel(session, order_id, warehouse, lines,
                       key=f"manual-{order_id.replace('-', '')}")  # fmt: skip


# -- refusals and re-allocation ---------------------------------------------------------------


def refuse_parcel(
    session: Session, shipment_id: int, code: str, *, now: datetime, policy: Policy
) -> None:
    """The warehouse refused the parcel's booking with ``code`` (module docstring): re-allocate
    it in this one transaction, or put the order in NEEDS_ATTENTION. Idempotent: a parcel
    already cancelled or booked, or an order no longer booking, changes nothing."""
    order, shipment = lock_parcel(session, shipment_id)
    if order.status not in BOOKING or shipment.cancelled_at or shipment.waybill:
        return
    several = len(live_parcels(session, order.id)) > 1
    if code not in REALLOCATE_CODES or shipment.warehouse is None:
        label = f" {parcel_of(shipment).label}" if several else ""
        fail_booking(session, order.id, f"{code}{label}")
        return
    _reallocate(session, order, shipment, code, now=now, policy=policy)


def _reallocate(
    session: Session, order: Order, refused: Shipment, code: str, *, now: datetime, policy: Policy
) -> None:
    warehouse = refused.warehouse
    assert warehouse is not None
    lines = parcel_lines(session, refused.id)
    lock_stock_by_sku(session, [sku for sku, _ in lines])  # all the SKUs' rows, key order, first
    expires_at = session.scalar(
        select(func.max(Reservation.expires_at)).where(
            Reservation.order_id == order.id, Reservation.warehouse == warehouse,
            Reservation.status == "ACTIVE",
        )
    ) or now  # fmt: skip
    refused.cancelled_at, refused.cancel_reason = now, refused_reason(code, placed=True)
    label = parcel_of(refused).label
    release_reservations(session, [order.id], now=now, reason=f"refused by {warehouse}: {code}",
                         warehouse=warehouse)  # fmt: skip
    try:
        allocations = _allocate(session, order, lines, _excluded(session, order.id, warehouse),
                                policy)  # fmt: skip
    except ReservationRefused as exc:
        refused.cancel_reason = refused_reason(code, placed=False)
        reason = f"reallocation_failed: {named(lines)} ({label} refused: {code}; {exc.detail})"
        order.reason, order.stage_deadline = reason[:200], None
        move_order(session, order, OrderStatus.NEEDS_ATTENTION, actor=ACTOR, reason=reason)
        return
    created = _hold_and_plan(session, order.id, allocations, expires_at)
    timeline.record(
        session, order.id, "reallocation", actor=ACTOR,
        detail={"refused": label, "code": code, "lines": [list(x) for x in lines],
                "to": [[p.id, p.warehouse] for p in created],
                "allocations": [[a.sku, a.warehouse, a.quantity] for a in allocations]},
    )  # fmt: skip


def _allocate(
    session: Session,
    order: Order,
    lines: Sequence[tuple[str, int]],
    excluded: set[str],
    policy: Policy,
) -> list[Allocation]:
    """Where ``lines`` can be reserved now (stock rows locked by the caller), or
    ReservationRefused."""
    skus = [sku for sku, _ in lines]
    return reallocation(
        [Line(sku, qty) for sku, qty in lines], _free(session, skus),
        _active_products(session, skus), excluded, policy, order.shipping_address.get("region"),
    )  # fmt: skip


def _hold_and_plan(
    session: Session, order_id: str, allocations: Sequence[Allocation], expires_at: datetime
) -> list[Shipment]:
    """Reserve the allocations (ledger ``reserve`` rows) and create a parcel per warehouse."""
    holds = [Hold(a.sku, a.warehouse, a.quantity) for a in allocations]
    apply_reservations(session, order_id, holds, expires_at)
    plan = plan_parcels((a.sku, a.warehouse, a.quantity) for a in allocations)
    return [_add_parcel(session, order_id, wh, wh_lines) for wh, wh_lines in plan.items()]


def drop_units(session: Session, order_id: str, taken: Sequence[Hold], *, now: datetime) -> None:
    """Take units released before shipping (:func:`services.stock.release_units`) off the
    order's planned parcels of their warehouses, none sent to a warehouse yet (the caller
    checked); a parcel left with no units is cancelled (``refund_only``)."""
    by_warehouse = {p.warehouse: p for p in live_parcels(session, order_id, lock=True)}
    for hold in taken:
        parcel = by_warehouse.get(hold.warehouse)
        if parcel is None:
            continue  # not planned yet: planning reads the reservations, already reduced
        line = session.scalars(select(ShipmentLine).where(
            ShipmentLine.shipment_id == parcel.id, ShipmentLine.sku == hold.sku
        ).with_for_update()).one()  # fmt: skip
        line.quantity -= hold.quantity
        if line.quantity <= 0:
            session.delete(line)
    session.flush()
    for parcel in by_warehouse.values():
        if not parcel_lines(session, parcel.id):
            parcel.cancelled_at, parcel.cancel_reason = now, "refund_only"


def plan_replacement(
    session: Session,
    order: Order,
    lines: Sequence[tuple[str, int]],
    *,
    expires_at: datetime,
    policy: Policy,
) -> list[Shipment]:
    """An exchange's replacement (:mod:`services.exchange`): reserve ``lines`` for the
    (locked) order at the warehouses ``policy`` picks among those with free stock now (ledger
    ``reserve`` rows, as an order's reservation) and plan a parcel per warehouse, with new
    booking keys. Raises ReservationRefused, having written nothing, when they cannot all be
    reserved."""
    lock_stock_by_sku(session, [sku for sku, _ in lines])
    allocations = _allocate(session, order, lines, set(), policy)
    return _hold_and_plan(session, order.id, allocations, expires_at)


def rereserve_unplaced(
    session: Session, order: Order, *, now: datetime, policy: Policy
) -> list[Shipment]:
    """An operator's retry of a (locked) order flagged ``reallocation_failed`` (module
    docstring): reserve its unplaced lines at any warehouse with free stock now, under
    ``policy``, except one holding a parcel of the order not booked yet (its request must not
    change, and it holds the order's ACTIVE reservations there); a warehouse that refused
    before is tried again (the operator retries because something changed there or
    elsewhere). Writes ledger ``reserve`` rows and new parcels, marks the refused parcels
    ``[re-reserved]`` and returns the new parcels; the caller moves the order on.

    Raises :class:`ConflictError` naming the lines, having written nothing, when there is
    nothing unplaced or no warehouse can take them all.
    """
    unplaced = unplaced_parcels(session, order.id, lock=True)
    lines = unplaced_lines(session, unplaced)
    if not lines:
        raise ConflictError(f"cannot retry: order {order.id} has no unplaced lines",
                            field="status")  # fmt: skip
    lock_stock_by_sku(session, [sku for sku, _ in lines])
    pending = {p.warehouse for p in live_parcels(session, order.id) if p.waybill is None}
    try:
        allocations = _allocate(session, order, lines, {w for w in pending if w}, policy)
    except ReservationRefused as exc:
        raise ConflictError(
            f"cannot retry: no warehouse has stock for {named(lines)} now ({exc.detail}); "
            "resolve the order to ship the rest and refund those lines, or cancel it",
            field="status",
        ) from exc
    expires_at = session.scalar(
        select(func.max(Reservation.expires_at)).where(Reservation.order_id == order.id)
    )
    created = _hold_and_plan(session, order.id, allocations, max(expires_at or now, now))
    for parcel in unplaced:
        parcel.cancel_reason = settled(parcel.cancel_reason or "", "re-reserved")
    timeline.record(
        session, order.id, "reallocation", actor=ACTOR,
        detail={"retried": [parcel_of(p).label for p in unplaced],
                "lines": [list(x) for x in lines],
                "to": [[p.id, p.warehouse] for p in created],
                "allocations": [[a.sku, a.warehouse, a.quantity] for a in allocations]},
    )  # fmt: skip
    return created


def _free(session: Session, skus: Sequence[str]) -> dict[str, dict[str, int]]:
    """Units free per SKU and warehouse (the rows are locked by the caller)."""
    free: dict[str, dict[str, int]] = {}
    for row in lock_stock_by_sku(session, skus):
        free.setdefault(row.sku, {})[row.warehouse] = row.on_hand - row.reserved
    return free


def _active_products(session: Session, skus: Sequence[str]) -> dict[str, bool]:
    rows = session.execute(select(Product.sku, Product.active).where(Product.sku.in_(skus)))
    return {sku: active for sku, active in rows}


def _excluded(session: Session, order_id: str, refusing: str) -> set[str]:
    """Where a refused parcel's lines may not go (module docstring)."""
    rows = session.execute(
        select(Shipment.warehouse, Shipment.cancel_reason, Shipment.cancelled_at,
               Shipment.waybill).where(Shipment.order_id == order_id, OUTBOUND_ONLY)
    )  # fmt: skip
    out = {refusing}
    for warehouse, reason, cancelled_at, waybill in rows:
        refused = cancelled_at is not None and (reason or "").startswith("refused:")
        if warehouse is not None and (refused or (cancelled_at is None and waybill is None)):
            out.add(warehouse)
    return out


def cancel_parcel(session: Session, shipment: Shipment, *, now: datetime, reason: str) -> int:
    """Cancel a (locked) parcel not booked, releasing its units at its warehouse (all of the
    order's, for a legacy parcel without one); returns the units released."""
    shipment.cancelled_at, shipment.cancel_reason = now, f"cancelled: {reason}"[:200]
    why = f"cancelled: {reason}"
    return release_reservations(
        session, [shipment.order_id], now=now, reason=why, warehouse=shipment.warehouse
    )


def fail_booking(session: Session, order_id: str, reason: str) -> None:
    """The booking service refused the parcel: a person has to look (-> NEEDS_ATTENTION)."""
    order = lock_order(session, order_id)
    if order.status not in BOOKING:
        return
    order.reason = f"booking_rejected:{reason}"[:200]
    order.stage_deadline = None
    move_order(session, order, OrderStatus.NEEDS_ATTENTION, reason=reason)
