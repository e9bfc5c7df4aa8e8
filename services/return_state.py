"""Locking a return and moving it through its kind's transition table, with its timeline entry
(as :mod:`services.order_state` does for orders): every service that changes a return's status
goes through :func:`move_return`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain import aftersale as rules
from domain.aftersale import ReturnStatus
from domain.errors import ConflictError, NotFound
from domain.tracking import ShipmentStatus
from models import Order, Return, Shipment
from services import timeline
from services.order_state import lock_order


def lock_return(session: Session, return_id: int) -> tuple[Order, Return]:
    """Lock the return's order, then the return: the order first, as every stage locks, so a
    return and the order's other stages serialize on the order row and never deadlock."""
    order_id = session.scalar(select(Return.order_id).where(Return.id == return_id))
    if order_id is None:
        raise NotFound(f"return {return_id} not found", field="return_id")
    order = lock_order(session, order_id)
    ret = session.scalars(select(Return).where(Return.id == return_id).with_for_update()).one()
    return order, ret


def move_return(
    session: Session, ret: Return, target: ReturnStatus, actor: str, **detail: object
) -> None:
    """Move a locked return to ``target``; a move its kind's table forbids is a 409 naming
    ``status`` (a request that came too late or too early, never a crash)."""
    if not rules.can_move(ret.kind, ret.status, target):
        raise ConflictError(f"return {ret.id} is {ret.status}; it cannot become {target}",
                            field="status")  # fmt: skip
    previous, ret.status = ret.status, target
    record_return(session, ret, previous, actor, **detail)


def parcel_moved(session: Session, shipment: Shipment, *, now: datetime) -> None:
    """A buyer's return parcel (``direction`` RETURN) moved; the order is locked by the caller
    (tracking locks the order, then the shipment). Delivered to the warehouse: the return
    awaiting it is RECEIVED (arrived; the warehouse's inspection settles it,
    :func:`services.return_receipt.receive`). Any other move changes no return: the tracking
    row on the order's timeline tells it."""
    if shipment.return_id is None or shipment.status != ShipmentStatus.DELIVERED:
        return
    ret = session.scalars(
        select(Return).where(Return.id == shipment.return_id).with_for_update()
    ).one()
    if ret.status == ReturnStatus.AWAITING_PARCEL:
        ret.received_at = now
        move_return(session, ret, ReturnStatus.RECEIVED, "tracking", waybill=shipment.waybill,
                    arrived=True)  # fmt: skip


def record_return(
    session: Session, ret: Return, previous: str | None, actor: str, **detail: object
) -> None:
    """A ``return`` row on the order's timeline, in the caller's transaction."""
    timeline.record(
        session, ret.order_id, "return", from_status=previous, to_status=ret.status,
        detail={"return_id": ret.id, "kind": ret.kind, **detail}, actor=actor,
    )  # fmt: skip
