"""Exchanges: the replacement of a received return, reserved and shipped like an order's parcel
(issue 22).

1. **Reshipping** (:func:`reship`), in the receipt's transaction: the settled units (not LOST)
   are reserved under the allocation policy at any warehouse with free stock now, returned
   units included (:func:`services.parcel_planning.plan_replacement`: ledger ``reserve`` rows,
   a parcel per warehouse with its own booking key), and ``shipping.book`` is returned to
   publish. The shipping stage books those parcels as it books any (one key each, booked once
   whatever the retries), ships their units (ledger ``ship``) and subscribes their waybills;
   tracking follows them, and the order, already delivered, does not move.
2. **No stock** (:class:`~domain.errors.ReservationRefused`): nothing is written and the caller
   refunds the units instead (:func:`domain.aftersale.after_receipt`'s fallback).
3. **Lost messages** (:func:`redrive_replacements`): the order's stage deadline is set with the
   replacement; a delivered order whose replacement has no waybill when it passes gets
   ``shipping.book`` again (a sweep's claim, ``SKIP LOCKED``), as the sweeper does for a PAID
   order.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from domain.allocation import Policy
from models import Order, Return, Shipment
from models.logistics import OUTBOUND_ONLY
from services import timeline
from services.followup import Followup
from services.parcel_planning import plan_replacement
from services.shipping import REPLACEABLE
from services.task_names import SHIPPING_BOOK

#: How long the replacement's reservation is held (it ships within minutes; the reservation
#: ends when its parcel ships, this only bounds a forgotten one).
HOLD_S = 7 * 86_400


def reship(
    session: Session,
    order: Order,
    ret: Return,
    units: Mapping[str, int],
    *,
    now: datetime,
    policy: Policy,
    redrive_s: int,
    actor: str,
) -> list[Followup]:
    """Rule 1: reserve and plan the replacement of ``units`` (by SKU) for the locked order;
    returns the booking to publish. Raises ReservationRefused (rule 2)."""
    lines = sorted((sku, n) for sku, n in units.items() if n > 0)
    parcels = plan_replacement(session, order, lines, expires_at=now + timedelta(seconds=HOLD_S),
                               policy=policy)  # fmt: skip
    order.stage_deadline = now + timedelta(seconds=redrive_s)
    timeline.record(
        session, order.id, "exchange", actor=actor,
        detail={"return_id": ret.id, "lines": [list(x) for x in lines],
                "parcels": [[p.id, p.warehouse] for p in parcels]},
    )  # fmt: skip
    return [Followup(SHIPPING_BOOK, order.id)]


def redrive_replacements(
    session: Session, *, now: datetime, redrive_s: int, limit: int
) -> list[Followup]:
    """Rule 3: ``shipping.book`` for each delivered order whose replacement parcel has no
    waybill past its stage deadline; the deadline moves on (a lease)."""
    unbooked = exists().where(Shipment.order_id == Order.id, Shipment.waybill.is_(None),
                              Shipment.cancelled_at.is_(None), OUTBOUND_ONLY)  # fmt: skip
    orders = session.scalars(
        select(Order)
        .where(Order.status.in_(list(REPLACEABLE)), Order.stage_deadline < now, unbooked)
        .order_by(Order.stage_deadline)
        .limit(limit)
        .with_for_update(skip_locked=True, of=Order)
    ).all()
    for order in orders:
        order.stage_deadline = now + timedelta(seconds=redrive_s)
        timeline.record(session, order.id, "redrive", from_status=order.status,
                        to_status=order.status, detail={"task": SHIPPING_BOOK, "replacement": True},
                        actor="sweeper")  # fmt: skip
    return [Followup(SHIPPING_BOOK, o.id) for o in orders]
