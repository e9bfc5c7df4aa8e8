"""The shipping stage: plan one parcel per warehouse, book each, ship its stock, subscribe its
waybill to tracking pushes.

PAID ─▶ plan the parcels (:func:`~services.parcel_planning.plan_order`: one per warehouse the
order's stock is held in, with its lines; one transaction, done once) ─▶ book each parcel
through the warehouse API (``shipping_mode=book``), each with its own key
(:func:`domain.parcels.booking_key`), or wait for ``POST /v1/orders/{id}/shipments``
(``shipping_mode=manual``) ─▶ per parcel, once its waybill is known: that warehouse's reserved
units leave (ledger ``ship``), its first tracking poll is scheduled and its subscription
published; the order climbs to PARTIALLY_SHIPPED (some parcels booked) or SHIPPED (all) ─▶
subscribe each waybill to Kuaidi100 pushes (polling stays as the fallback, so a failed
subscription never holds the order back).

**One task books all of an order's parcels, in turn** (parcel id order). Each booking is its
own prepare (lock the order, mark the parcel sent, commit) → call (no transaction open) →
finish (a new transaction that re-checks, holding the call's timeline row:
:meth:`~services.provider_calls.Gate.call_noted`). A worker SIGKILLed between two bookings
leaves the first parcel recorded (or, killed mid-call, booked at the warehouse under its key);
the redelivered task (or the sweeper's re-drive of the PAID / PARTIALLY_SHIPPED order, whose
stage deadline every prepare moves on) plans nothing new and books what has no waybill with
the same key, so each parcel is booked once. One task rather than one per parcel: one Celery
hop per order as before, and one place that knows when the order is SHIPPED.

Planning the parcels, a refused parcel's re-allocation and unplaced lines:
:mod:`services.parcel_planning`; the parcel rows: :mod:`services.parcels`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.logistics.base import Booked, BookingService, BookShipment, TrackingProvider
from domain.allocation import DEFAULT_POLICY, Policy
from domain.errors import ConflictError, NotFound, ProviderRejected, ValidationError
from domain.orders import OrderStatus
from domain.parcels import climb, order_progress
from models import Order, Shipment
from models.logistics import OUTBOUND_ONLY
from services import callbacks, timeline
from services.followup import Followup
from services.order_state import lock_order, move_order
from services.parcel_planning import BOOKING, manual_parcel, plan_order, refuse_parcel
from services.parcels import (
    live_parcels,
    lock_parcel,
    mark_subscribed,
    parcel_lines,
    parcel_of,
    subscription_target,
)
from services.ports import Outcome, Ports
from services.provider_calls import CircuitOpen
from services.stock import ship_reservations
from services.task_names import SHIPPING_SUBSCRIBE

#: Statuses whose order may have an exchange's replacement parcel to book.
REPLACEABLE = frozenset(
    {OrderStatus.DELIVERED, OrderStatus.RECEIPT_CONFIRMED, OrderStatus.COMPLETED}
)
CARRIER_RE = re.compile(r"[a-z0-9]{2,32}")  # fullmatch: "$" lets a final "\n" pass
WAYBILL_RE = re.compile(r"[A-Za-z0-9-]{6,32}")

#: At most this many booking calls per run: each refusal shuts a warehouse out for the order,
#: so a run ends long before; the bound only keeps a bug from looping for ever.
MAX_CALLS_PER_RUN = 32


@dataclass(frozen=True, slots=True)
class BookingCall:
    order_id: str
    shipment_id: int
    request: BookShipment
    #: This prepare marked the parcel sent (no earlier attempt had): an open circuit undoes it.
    first_send: bool = True


@dataclass(frozen=True, slots=True)
class ShippingConfig:
    """The shipping stage's settings, passed in (services read no settings themselves)."""

    #: A booking that has not finished within this is re-driven by the sweeper.
    redrive_s: int = 60
    #: The first tracking poll after the parcel ships.
    first_poll_s: float = 60.0
    #: Where Kuaidi100 pushes tracking updates (``{public base}/webhooks/kuaidi100``).
    push_url: str = "http://localhost/webhooks/kuaidi100"
    #: Where a refused parcel's lines go (``ALLOCATION_STRATEGY``, ``WAREHOUSES``).
    policy: Policy = DEFAULT_POLICY


def book(order_id: str, service: BookingService, ports: Ports, config: ShippingConfig) -> Outcome:
    """Plan and book every parcel of a PAID (or PARTIALLY_SHIPPED) order, each with its own
    key (the same on every retry), and ship each as it is booked (module docstring).

    A refusal re-allocates the parcel or puts the order in NEEDS_ATTENTION; an open circuit
    leaves the rest for the sweeper's re-drive at the stage deadline; transient errors are
    raised for the task to retry (the parcels booked so far stay booked). Returns the
    waybills booked in this run (comma-separated) as the result, and the subscriptions of the
    order's booked, unsubscribed parcels to publish.
    """
    waybills: list[str] = []
    result = "noop"
    with ports.uow() as session:
        call, followups = _next_call(session, order_id, ports, config)
    for _ in range(MAX_CALLS_PER_RUN):
        if call is None:
            break
        outcome, call, followups = _book_one(call, service, ports, config)
        if isinstance(outcome, Booked):
            waybills.append(outcome.waybill)
            continue
        result = outcome
        if outcome == "circuit_open":
            with ports.uow() as session:
                followups = pending_subscriptions(session, order_id)
            break
    return Outcome.of(",".join(waybills) or result, followups)


def _next_call(
    session: Session, order_id: str, ports: Ports, config: ShippingConfig
) -> tuple[BookingCall | None, list[Followup]]:
    """The next parcel's booking (prepared in ``session``), or, when none is left, the
    subscriptions to publish: one transaction either way."""
    call = prepare_booking(session, order_id, now=ports.clock(), redrive_s=config.redrive_s)
    return call, [] if call is not None else pending_subscriptions(session, order_id)


def _book_one(
    call: BookingCall, service: BookingService, ports: Ports, config: ShippingConfig
) -> tuple[Booked | str, BookingCall | None, list[Followup]]:
    """One parcel's call and finish: its Booked, or "circuit_open" / "rejected"; then the next
    call and the subscriptions as :func:`_next_call` gives them. A booked parcel's finish
    prepares the next in its own transaction (a one-parcel order's booking costs two
    transactions, not four); after a refusal a new transaction does (re-allocation may have
    planned new parcels)."""
    request = call.request
    try:
        booked, note = ports.gate.call_noted(
            "warehouse", "book", call.order_id, lambda: service.book(request), request=request
        )
    except CircuitOpen:
        if call.first_send:
            with ports.uow() as session:
                _unsend(session, call.shipment_id)
        return "circuit_open", None, []
    except ProviderRejected as exc:
        with ports.uow() as session:
            refuse_parcel(session, call.shipment_id, exc.code or str(exc), now=ports.clock(),
                          policy=config.policy)  # fmt: skip
        with ports.uow() as session:
            return "rejected", *_next_call(session, call.order_id, ports, config)
    with note.recorded(ports.uow) as session:  # the call's timeline row in the same commit
        ship_parcel(
            session, call.shipment_id, booked, now=ports.clock(), actor="warehouse",
            first_poll_s=config.first_poll_s,
        )  # fmt: skip
        return booked, *_next_call(session, call.order_id, ports, config)


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


def prepare_booking(
    session: Session, order_id: str, *, now: datetime, redrive_s: int
) -> BookingCall | None:
    """Plan the parcels of a PAID order (once), then mark the first live parcel without a
    waybill sent and return its booking; None if there is nothing to do. A delivered order's
    only unbooked parcels are an exchange's replacements (:mod:`services.exchange`): they are
    booked the same way, and the order does not move."""
    order = lock_order(session, order_id)
    if order.status in BOOKING:
        plan_order(session, order)
    elif order.status not in REPLACEABLE:
        return None
    shipment = next((p for p in live_parcels(session, order_id, lock=True) if p.waybill is None),
                    None)  # fmt: skip
    if shipment is None:
        return None
    first_send = shipment.booking_sent_at is None
    if first_send:
        shipment.booking_sent_at = now
    order.stage_deadline = now + timedelta(seconds=redrive_s)
    lines = parcel_lines(session, shipment.id) or [(ln.sku, ln.quantity) for ln in order.lines]
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
        items=lines,
        warehouse=shipment.warehouse,
    )
    return BookingCall(order_id, shipment.id, request, first_send)


def _unsend(session: Session, shipment_id: int) -> None:
    """The call never left (open circuit): the parcel is not sent after all."""
    shipment = session.get(Shipment, shipment_id, with_for_update=True)
    if shipment is not None and shipment.waybill is None:
        shipment.booking_sent_at = None


def pending_subscriptions(session: Session, order_id: str) -> list[Followup]:
    """A subscription for each booked live parcel of the order not subscribed yet (one booked
    by a run that then failed is picked up by the next)."""
    ids = session.scalars(
        select(Shipment.id).where(
            Shipment.order_id == order_id, Shipment.cancelled_at.is_(None), OUTBOUND_ONLY,
            Shipment.waybill.is_not(None), Shipment.subscribed.is_(False),
            Shipment.tracking_ended_at.is_(None),
        ).order_by(Shipment.id)
    )  # fmt: skip
    return [Followup(SHIPPING_SUBSCRIBE, sid) for sid in ids]


# -- shipping a booked parcel -----------------------------------------------------------------


def ship_parcel(
    session: Session,
    shipment_id: int,
    booked: Booked,
    *,
    now: datetime,
    actor: str,
    first_poll_s: float,
) -> list[Followup]:
    """Record a parcel's waybill and ship it: that warehouse's units leave (ledger ``ship``),
    its tracking is scheduled, and the order climbs to what its parcels say (PARTIALLY_SHIPPED
    or SHIPPED). Idempotent for the same waybill. The warehouse has booked it, so it is
    recorded whatever the order's status (only an order on the shipping ladder moves); a
    parcel cancelled meanwhile raises ConflictError (it must be cancelled at the warehouse)."""
    order, shipment = lock_parcel(session, shipment_id)
    if shipment.waybill is not None:
        if (shipment.carrier, shipment.waybill) != (booked.carrier, booked.waybill):
            raise ConflictError(
                f"parcel {shipment.id} already shipped as {shipment.waybill}", field="waybill"
            )
        return []
    if shipment.cancelled_at is not None:
        raise ConflictError(
            f"parcel {shipment.id} was cancelled ({shipment.cancel_reason}) but booked as "
            f"{booked.waybill}: cancel it at the warehouse", field="waybill",
        )  # fmt: skip
    return _record_booking(session, order, shipment, booked, now=now, actor=actor,
                           first_poll_s=first_poll_s)  # fmt: skip


def _record_booking(
    session: Session,
    order: Order,
    shipment: Shipment,
    booked: Booked,
    *,
    now: datetime,
    actor: str,
    first_poll_s: float,
) -> list[Followup]:
    shipment.carrier, shipment.waybill = booked.carrier, booked.waybill
    shipment.next_poll_at = now + timedelta(seconds=first_poll_s)
    session.flush()
    units = ship_reservations(session, order.id, now=now, warehouse=shipment.warehouse)
    parcels = [parcel_of(p) for p in live_parcels(session, order.id)]
    detail: dict[str, Any] = {"carrier": booked.carrier, "waybill": booked.waybill, "units": units}
    if len(parcels) > 1:
        detail.update(parcel=shipment.id, warehouse=shipment.warehouse)
    moves = climb(order.status, order_progress(parcels)) if order.status in BOOKING else ()
    for target in moves:
        move_order(session, order, target, actor=actor, parcel_id=shipment.id, **detail)
    if order.status == OrderStatus.SHIPPED or order.status not in BOOKING:
        order.stage_deadline = None  # nothing left to book
    if not moves:  # the order stays where it is: the parcel's own event tells the source
        timeline.record(session, order.id, "shipment", actor=actor, detail=detail)
        callbacks.record_parcel_change(session, order, order.status, shipment.id, None,
                                       shipment.status)  # fmt: skip
    return [Followup(SHIPPING_SUBSCRIBE, shipment.id)]


def ship(
    session: Session,
    order_id: str,
    booked: Booked,
    *,
    now: datetime,
    actor: str,
    first_poll_s: float,
    warehouse: str | None = None,
) -> list[Followup]:
    """The warehouse reports a waybill (API / CLI, ``shipping_mode=manual``): it ships the
    order's live parcel without one at ``warehouse`` (when None, the only such parcel). An
    order without parcels gets them first, as the booking stage plans them (one per warehouse
    its stock is held in, :func:`plan_order`), or one parcel for the whole order when no held
    stock names a warehouse. Idempotent for a waybill already recorded; a PAID (or
    PARTIALLY_SHIPPED) order only. Several unshipped parcels and no ``warehouse``: a
    ValidationError naming ``warehouse`` and the candidates; nothing is recorded."""
    order = lock_order(session, order_id)
    parcels = live_parcels(session, order_id, lock=True)
    if any((p.carrier, p.waybill) == (booked.carrier, booked.waybill) for p in parcels):
        return []
    unbooked = [p for p in parcels if p.waybill is None]
    if parcels and not unbooked:
        raise ConflictError(
            f"order {order_id} already shipped as {parcels[0].waybill}", field="waybill"
        )
    if order.status not in BOOKING:
        raise ConflictError(
            f"order {order_id} is {order.status}; only PAID orders ship", field="waybill"
        )
    if not parcels:
        unbooked = plan_order(session, order) or [manual_parcel(session, order_id)]
    shipment = _reported_parcel(order_id, unbooked, warehouse, parcels)
    return _record_booking(session, order, shipment, booked, now=now, actor=actor,
                           first_poll_s=first_poll_s)  # fmt: skip


def _reported_parcel(
    order_id: str, unbooked: list[Shipment], warehouse: str | None, live: list[Shipment]
) -> Shipment:
    """The unshipped parcel a reported waybill is for (:func:`ship`)."""
    names = ", ".join(sorted({p.warehouse or "?" for p in unbooked}))
    if warehouse is None:
        if len(unbooked) > 1:
            raise ValidationError(
                "warehouse", f"order {order_id} has unshipped parcels at {names}: name the "
                "warehouse the waybill is for",
            )  # fmt: skip
        return unbooked[0]
    for parcel in unbooked:
        if parcel.warehouse == warehouse:
            return parcel
    if any(p.warehouse == warehouse for p in live):
        raise ConflictError(f"order {order_id}'s parcel at {warehouse} is already shipped; "
                            f"unshipped: {names}", field="warehouse")  # fmt: skip
    raise ValidationError("warehouse", f"order {order_id} has no parcel at {warehouse!r}; "
                          f"unshipped: {names}")  # fmt: skip


def register_waybill(
    session: Session,
    order_id: str,
    carrier: str,
    waybill: str,
    *,
    now: datetime,
    actor: str,
    first_poll_s: float,
    warehouse: str | None = None,
) -> list[Followup]:
    """The warehouse reports a parcel's waybill (API / CLI; :func:`ship`). Validated at the
    edge."""
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
                first_poll_s=first_poll_s, warehouse=warehouse)  # fmt: skip
