"""The shipping stage: book the parcel (or accept a waybill from the warehouse), ship the
stock, subscribe the waybill to tracking pushes.

PAID ─▶ book through the warehouse API (``shipping_mode=book``) or wait for
``POST /v1/orders/{id}/shipments`` (``shipping_mode=manual``) ─▶ waybill known: the reserved
units leave the warehouse (ledger ``ship``), the order is SHIPPED and the first tracking poll is
scheduled ─▶ subscribe the waybill to Kuaidi100 pushes (polling stays as the fallback, so a
failed subscription never holds the order back).

Same shape as the payment stage: :func:`book` and :func:`subscribe` each run prepare (lock,
store the booking key, commit) → call the provider through the gate with no transaction open →
finish in a new transaction that re-checks the status (and also holds the call's timeline row,
:meth:`~services.provider_calls.Gate.call_noted`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.logistics.base import Booked, BookingService, BookShipment, TrackingProvider
from domain.errors import ConflictError, NotFound, ProviderRejected, ValidationError
from domain.orders import OrderStatus
from models import Order, OrderLine, Shipment, TrackingEvent
from services import timeline
from services.followup import Followup
from services.order_state import lock_order, move_order
from services.ports import Outcome, Ports
from services.provider_calls import CircuitOpen
from services.stock import ship_reservations
from services.task_names import SHIPPING_SUBSCRIBE

CARRIER_RE = re.compile(r"[a-z0-9]{2,32}")  # fullmatch: "$" lets a final "\n" pass
WAYBILL_RE = re.compile(r"[A-Za-z0-9-]{6,32}")


@dataclass(frozen=True, slots=True)
class BookingCall:
    order_id: str
    request: BookShipment


@dataclass(frozen=True, slots=True)
class ShippingConfig:
    """The shipping stage's settings, passed in (services read no settings themselves)."""

    #: A booking that has not finished within this is re-driven by the sweeper.
    redrive_s: int = 60
    #: The first tracking poll after the parcel ships.
    first_poll_s: float = 60.0
    #: Where Kuaidi100 pushes tracking updates (``{public base}/webhooks/kuaidi100``).
    push_url: str = "http://localhost/webhooks/kuaidi100"


def book(order_id: str, service: BookingService, ports: Ports, config: ShippingConfig) -> Outcome:
    """Book the parcel for a PAID order (the same booking key on every retry) and ship it.

    A refusal puts the order in NEEDS_ATTENTION with the service's code; an open circuit
    leaves it for the sweeper's re-drive at the stage deadline; transient errors are raised
    for the task to retry. Returns the waybill as the result, and the subscription to publish.
    """
    with ports.uow() as session:
        plan = prepare_booking(session, order_id, now=ports.clock(), redrive_s=config.redrive_s)
    if plan is None:
        return Outcome("noop")
    request = plan.request
    try:
        booked, note = ports.gate.call_noted(
            "warehouse", "book", order_id, lambda: service.book(request), request=request
        )
    except CircuitOpen:
        return Outcome("circuit_open")
    except ProviderRejected as exc:
        with ports.uow() as session:
            fail_booking(session, order_id, exc.code or str(exc))
        return Outcome("rejected")
    with note.recorded(ports.uow) as session:  # the call's timeline row in the same commit
        followups = ship(
            session, order_id, booked, now=ports.clock(), actor="warehouse",
            first_poll_s=config.first_poll_s,
        )  # fmt: skip
    return Outcome.of(booked.waybill, followups)


def subscribe(
    shipment_id: int, provider: TrackingProvider, ports: Ports, config: ShippingConfig
) -> Outcome:
    """Subscribe a shipped waybill to Kuaidi100 pushes (a repeat is answered "already").
    Polling covers a waybill whose subscription never succeeds, so an open circuit just
    skips it, and errors are raised for the task to retry."""
    with ports.uow() as session:
        target = subscription_target(session, shipment_id)
    if target is None:
        return Outcome("noop")
    order_id, carrier, waybill, phone = target
    url = config.push_url
    sent = {"carrier": carrier, "waybill": waybill, "phone": phone, "callback": url}
    try:
        newly, note = ports.gate.call_noted(
            "kuaidi100", "subscribe", order_id,
            lambda: provider.subscribe(carrier, waybill, url, phone), request=sent,
        )  # fmt: skip
    except CircuitOpen:
        return Outcome("circuit_open")
    with note.recorded(ports.uow) as session:
        mark_subscribed(session, shipment_id, newly=newly)
    return Outcome("subscribed" if newly else "already")


def _shipment_of(session: Session, order_id: str, *, lock: bool = True) -> Shipment | None:
    stmt = select(Shipment).where(Shipment.order_id == order_id)
    return session.scalars(stmt.with_for_update() if lock else stmt).one_or_none()


def prepare_booking(
    session: Session, order_id: str, *, now: datetime, redrive_s: int
) -> BookingCall | None:
    """Store the shipment and its booking key for a PAID order; None if there is nothing to do."""
    order = lock_order(session, order_id)
    if order.status != OrderStatus.PAID:
        return None
    shipment = _shipment_of(session, order_id)
    if shipment is None:
        shipment = Shipment(order_id=order_id, booking_key=f"ship-{order_id.replace('-', '')}",
                            status="PENDING")  # fmt: skip
        session.add(shipment)
        session.flush()
    elif shipment.waybill is not None:
        return None
    order.stage_deadline = now + timedelta(seconds=redrive_s)
    lines = session.execute(
        select(OrderLine.sku, OrderLine.quantity).where(OrderLine.order_id == order_id)
    ).all()
    address: dict[str, Any] = order.shipping_address
    request = BookShipment(
        order_id=order_id,
        idempotency_key=shipment.booking_key,
        recipient_name=str(address.get("name", "")),
        phone=str(address.get("phone", "")),
        address=", ".join(
            str(address[k])
            for k in ("line1", "line2", "city", "region", "postal_code", "country")
            if address.get(k)
        ),
        items=[(sku, qty) for sku, qty in lines],
    )
    return BookingCall(order_id, request)


def fail_booking(session: Session, order_id: str, reason: str) -> None:
    """The booking service refused the parcel: a person has to look (PAID -> NEEDS_ATTENTION)."""
    order = lock_order(session, order_id)
    if order.status != OrderStatus.PAID:
        return
    order.reason = f"booking_rejected:{reason}"[:200]
    order.stage_deadline = None
    move_order(session, order, OrderStatus.NEEDS_ATTENTION, reason=reason)


def ship(
    session: Session,
    order_id: str,
    booked: Booked,
    *,
    now: datetime,
    actor: str,
    first_poll_s: float,
) -> list[Followup]:
    """Record the waybill and ship: PAID -> SHIPPED. Idempotent for the same waybill."""
    order = lock_order(session, order_id)
    shipment = _shipment_of(session, order_id)
    if shipment is not None and shipment.waybill is not None:
        if (shipment.carrier, shipment.waybill) != (booked.carrier, booked.waybill):
            raise ConflictError(
                f"order {order_id} already shipped as {shipment.waybill}", field="waybill"
            )
        return []
    if order.status != OrderStatus.PAID:
        raise ConflictError(
            f"order {order_id} is {order.status}; only PAID orders ship", field="waybill"
        )
    if shipment is None:
        shipment = Shipment(order_id=order_id, booking_key=f"manual-{order_id.replace('-', '')}",
                            status="PENDING")  # fmt: skip
        session.add(shipment)
    shipment.carrier, shipment.waybill = booked.carrier, booked.waybill
    shipment.next_poll_at = now + timedelta(seconds=first_poll_s)
    session.flush()
    units = ship_reservations(session, order_id, now=now)
    order.stage_deadline = None
    move_order(session, order, OrderStatus.SHIPPED, actor=actor, carrier=booked.carrier,
               waybill=booked.waybill, units=units)  # fmt: skip
    return [Followup(SHIPPING_SUBSCRIBE, shipment.id)]


def register_waybill(
    session: Session,
    order_id: str,
    carrier: str,
    waybill: str,
    *,
    now: datetime,
    actor: str,
    first_poll_s: float,
) -> list[Followup]:
    """The warehouse reports the parcel's waybill (API / CLI). Validated at the edge."""
    if not CARRIER_RE.fullmatch(carrier):
        raise ValidationError("carrier", "lowercase Kuaidi100 carrier code, e.g. yuantong")
    if not WAYBILL_RE.fullmatch(waybill):
        raise ValidationError("waybill", "6-32 letters, digits or dashes")
    if session.get(Order, order_id) is None:
        raise NotFound(f"order {order_id} not found", field="order_id")
    taken = session.scalar(
        select(Shipment.order_id).where(Shipment.carrier == carrier, Shipment.waybill == waybill)
    )
    if taken is not None and taken != order_id:
        raise ConflictError(f"waybill {waybill} already belongs to order {taken}", field="waybill")
    return ship(session, order_id, Booked(carrier, waybill), now=now, actor=actor,
                first_poll_s=first_poll_s)  # fmt: skip


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


def shipment_view(session: Session, order_id: str) -> dict[str, Any] | None:
    shipment = _shipment_of(session, order_id, lock=False)
    if shipment is None:
        return None
    events = session.scalars(
        select(TrackingEvent)
        .where(TrackingEvent.shipment_id == shipment.id)
        .order_by(TrackingEvent.occurred_at)
    )
    return {
        "carrier": shipment.carrier,
        "waybill": shipment.waybill,
        "status": shipment.status,
        "raw_state": shipment.raw_state,
        "subscribed": shipment.subscribed,
        "next_poll_at": shipment.next_poll_at.isoformat() if shipment.next_poll_at else None,
        "events": [
            {
                "at": e.occurred_at.isoformat(),
                "status": e.status,
                "raw_code": e.raw_code,
                "description": e.description,
                "location": e.location,
            }
            for e in events
        ],
    }
