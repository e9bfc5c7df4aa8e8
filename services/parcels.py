"""An order's parcels as rows (:class:`models.Shipment` and its lines): which are live, what each
carries, which refused ones still owe lines, which a waybill names, and its tracking
subscription. Planned by :mod:`services.parcel_planning`, booked and shipped by
:mod:`services.shipping`.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.errors import NotFound
from domain.parcels import Parcel, is_unplaced
from domain.tracking import ShipmentStatus
from models import Order, Shipment, ShipmentLine
from models.logistics import OUTBOUND_ONLY
from services import timeline
from services.order_state import lock_order


def live_parcels(session: Session, order_id: str, *, lock: bool = False) -> list[Shipment]:
    """The order's parcels not cancelled, oldest first."""
    stmt = (
        select(Shipment)
        .where(Shipment.order_id == order_id, Shipment.cancelled_at.is_(None), OUTBOUND_ONLY)
        .order_by(Shipment.id)
    )
    return list(session.scalars(stmt.with_for_update() if lock else stmt))


def lock_parcel(session: Session, shipment_id: int) -> tuple[Order, Shipment]:
    """Lock the parcel's order, then the parcel, read afresh: the order first, as every stage
    locks, so writers of one order's parcels serialize on its row and never deadlock. Raises
    NotFound naming ``shipment_id`` for no such parcel."""
    order_id = session.scalar(select(Shipment.order_id).where(Shipment.id == shipment_id))
    if order_id is None:
        raise NotFound(f"shipment {shipment_id} not found", field="shipment_id")
    order = lock_order(session, order_id)
    shipment = session.get(Shipment, shipment_id, with_for_update=True, populate_existing=True)
    assert shipment is not None  # a parcel is never deleted
    return order, shipment


def parcel_of(shipment: Shipment) -> Parcel:
    """The parcel as :mod:`domain.parcels` sees it."""
    booked = shipment.waybill is not None
    return Parcel(shipment.id, shipment.warehouse, booked, ShipmentStatus(shipment.status))


def parcel_lines(session: Session, shipment_id: int) -> list[tuple[str, int]]:
    rows = session.execute(
        select(ShipmentLine.sku, ShipmentLine.quantity)
        .where(ShipmentLine.shipment_id == shipment_id)
        .order_by(ShipmentLine.sku)
    )
    return [(sku, qty) for sku, qty in rows]


def unplaced_parcels(session: Session, order_id: str, *, lock: bool = False) -> list[Shipment]:
    """The order's refused parcels whose lines are still owed (``[unplaced]``), oldest first."""
    stmt = (
        select(Shipment)
        .where(Shipment.order_id == order_id, Shipment.cancelled_at.is_not(None), OUTBOUND_ONLY)
        .order_by(Shipment.id)
    )
    rows = session.scalars(stmt.with_for_update() if lock else stmt)
    return [p for p in rows if is_unplaced(p.cancel_reason)]


def unplaced_lines(session: Session, parcels: Sequence[Shipment]) -> list[tuple[str, int]]:
    """The lines of these parcels, summed per SKU, sorted."""
    total: dict[str, int] = {}
    for p in parcels:
        for sku, qty in parcel_lines(session, p.id):
            total[sku] = total.get(sku, 0) + qty
    return sorted(total.items())


def named(lines: Sequence[tuple[str, int]]) -> str:
    """``A x2, B x1``: how reasons and refusals name lines."""
    return ", ".join(f"{sku} x{qty}" for sku, qty in lines)


def subscription_target(session: Session, shipment_id: int) -> tuple[str, str, str, str] | None:
    """(order id, carrier, waybill, phone) to subscribe, or None if done or not shippable."""
    shipment = session.get(Shipment, shipment_id)
    if shipment is None or shipment.subscribed or not shipment.waybill or not shipment.carrier:
        return None
    order = session.get(Order, shipment.order_id)
    assert order is not None
    phone = str(order.shipping_address.get("phone", ""))
    return shipment.order_id, shipment.carrier, shipment.waybill, phone


def mark_subscribed(session: Session, shipment_id: int, *, newly: bool) -> None:
    shipment = session.get(Shipment, shipment_id, with_for_update=True)
    assert shipment is not None
    shipment.subscribed = True
    timeline.record(session, shipment.order_id, "tracking",
                    detail={"subscribed": True, "duplicate": not newly})  # fmt: skip


def shipment_by_waybill(session: Session, carrier: str, waybill: str) -> Shipment | None:
    return (
        session.scalars(
            select(Shipment).where(Shipment.waybill == waybill, Shipment.carrier == carrier)
        ).one_or_none()
        or session.scalars(  # Kuaidi100 may have corrected the carrier (autoCheck)
            select(Shipment).where(Shipment.waybill == waybill)
        ).first()
    )
