"""The shipping stage: plan one parcel per warehouse, book each, ship its stock, subscribe its
waybill to tracking pushes.

PAID ─▶ plan the parcels (:func:`plan_order`: one per warehouse the order's stock is held in,
with its lines; one transaction, done once) ─▶ book each parcel through the warehouse API
(``shipping_mode=book``), each with its own key (:func:`domain.parcels.booking_key`), or wait
for ``POST /v1/orders/{id}/shipments`` (``shipping_mode=manual``) ─▶ per parcel, once its
waybill is known: that warehouse's reserved units leave (ledger ``ship``), its first tracking
poll is scheduled and its subscription published; the order climbs to PARTIALLY_SHIPPED (some
parcels booked) or SHIPPED (all) ─▶ subscribe each waybill to Kuaidi100 pushes (polling stays
as the fallback, so a failed subscription never holds the order back).

**One task books all of an order's parcels, in turn** (parcel id order). Each booking is its
own prepare (lock the order, mark the parcel sent, commit) → call (no transaction open) →
finish (a new transaction that re-checks, holding the call's timeline row:
:meth:`~services.provider_calls.Gate.call_noted`). A worker SIGKILLed between two bookings
leaves the first parcel recorded (or, killed mid-call, booked at the warehouse under its key);
the redelivered task (or the sweeper's re-drive of the PAID / PARTIALLY_SHIPPED order, whose
stage deadline every prepare moves on) plans nothing new and books what has no waybill with
the same key, so each parcel is booked once. One task rather than one per parcel: one Celery
hop per order as before, and one place that knows when the order is SHIPPED.

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

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.logistics.base import (
    REALLOCATE_CODES,
    Booked,
    BookingService,
    BookShipment,
    TrackingProvider,
)
from domain.allocation import DEFAULT_POLICY, Allocation, Line, Policy
from domain.errors import (
    ConflictError,
    NotFound,
    ProviderRejected,
    ReservationRefused,
    ValidationError,
)
from domain.orders import OrderStatus
from domain.parcels import (
    Parcel,
    booking_key,
    climb,
    is_unplaced,
    order_progress,
    plan_parcels,
    reallocation,
    refused_reason,
    settled,
)
from domain.tracking import ShipmentStatus
from models import Order, Product, Reservation, Shipment, ShipmentLine, TrackingEvent
from services import timeline
from services.followup import Followup
from services.locks import lock_stock_by_sku
from services.order_state import lock_order, move_order
from services.ports import Outcome, Ports
from services.provider_calls import CircuitOpen
from services.stock import Hold, apply_reservations, release_reservations, ship_reservations
from services.task_names import SHIPPING_SUBSCRIBE

CARRIER_RE = re.compile(r"[a-z0-9]{2,32}")  # fullmatch: "$" lets a final "\n" pass
WAYBILL_RE = re.compile(r"[A-Za-z0-9-]{6,32}")

#: Statuses in which an order's parcels are booked by :func:`book`.
BOOKING = (OrderStatus.PAID, OrderStatus.PARTIALLY_SHIPPED)
#: At most this many booking calls per run: each refusal shuts a warehouse out for the order,
#: so a run ends long before; the bound only keeps a bug from looping for ever.
MAX_CALLS_PER_RUN = 32
ACTOR = "shipping"


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
    for _ in range(MAX_CALLS_PER_RUN):
        with ports.uow() as session:
            call = prepare_booking(session, order_id, now=ports.clock(), redrive_s=config.redrive_s)
        if call is None:
            break
        outcome = _book_one(call, service, ports, config)
        if isinstance(outcome, Booked):
            waybills.append(outcome.waybill)
            continue
        result = outcome
        if outcome == "circuit_open":
            break
    with ports.uow() as session:
        followups = pending_subscriptions(session, order_id)
    return Outcome.of(",".join(waybills) or result, followups)


def _book_one(
    call: BookingCall, service: BookingService, ports: Ports, config: ShippingConfig
) -> Booked | str:
    """One parcel's call and finish: its Booked, or "circuit_open" / "rejected"."""
    request = call.request
    try:
        booked, note = ports.gate.call_noted(
            "warehouse", "book", call.order_id, lambda: service.book(request), request=request
        )
    except CircuitOpen:
        if call.first_send:
            with ports.uow() as session:
                _unsend(session, call.shipment_id)
        return "circuit_open"
    except ProviderRejected as exc:
        with ports.uow() as session:
            refuse_parcel(session, call.shipment_id, exc.code or str(exc), now=ports.clock(),
                          policy=config.policy)  # fmt: skip
        return "rejected"
    with note.recorded(ports.uow) as session:  # the call's timeline row in the same commit
        ship_parcel(
            session, call.shipment_id, booked, now=ports.clock(), actor="warehouse",
            first_poll_s=config.first_poll_s,
        )  # fmt: skip
    return booked


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


# -- parcels ----------------------------------------------------------------------------------


def live_parcels(session: Session, order_id: str, *, lock: bool = False) -> list[Shipment]:
    """The order's parcels not cancelled, oldest first."""
    stmt = (
        select(Shipment)
        .where(Shipment.order_id == order_id, Shipment.cancelled_at.is_(None))
        .order_by(Shipment.id)
    )
    return list(session.scalars(stmt.with_for_update() if lock else stmt))


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
    if session.scalar(select(Shipment.id).where(Shipment.order_id == order.id).limit(1)):
        return []
    plan = plan_parcels((sku, wh, qty) for sku, wh, qty in _held(session, order.id))
    created = [_add_parcel(session, order.id, wh, lines) for wh, lines in plan.items()]
    if len(created) > 1:
        timeline.record(
            session, order.id, "parcels", actor=ACTOR,
            detail={"parcels": [[p.id, p.warehouse] for p in created]},
        )  # fmt: skip
    return created


def prepare_booking(
    session: Session, order_id: str, *, now: datetime, redrive_s: int
) -> BookingCall | None:
    """Plan the parcels of a PAID order (once), then mark the first live parcel without a
    waybill sent and return its booking; None if there is nothing to do."""
    order = lock_order(session, order_id)
    if order.status not in BOOKING:
        return None
    plan_order(session, order)
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
            Shipment.order_id == order_id, Shipment.cancelled_at.is_(None),
            Shipment.waybill.is_not(None), Shipment.subscribed.is_(False),
            Shipment.tracking_ended_at.is_(None),
        ).order_by(Shipment.id)
    )  # fmt: skip
    return [Followup(SHIPPING_SUBSCRIBE, sid) for sid in ids]


# -- refusals and re-allocation ---------------------------------------------------------------


def refuse_parcel(
    session: Session, shipment_id: int, code: str, *, now: datetime, policy: Policy
) -> None:
    """The warehouse refused the parcel's booking with ``code`` (module docstring): re-allocate
    it in this one transaction, or put the order in NEEDS_ATTENTION. Idempotent: a parcel
    already cancelled or booked, or an order no longer booking, changes nothing."""
    order_id = session.scalar(select(Shipment.order_id).where(Shipment.id == shipment_id))
    if order_id is None:
        raise NotFound(f"shipment {shipment_id} not found", field="shipment_id")
    order = lock_order(session, order_id)
    shipment = session.get(Shipment, shipment_id, with_for_update=True, populate_existing=True)
    assert shipment is not None
    if order.status not in BOOKING or shipment.cancelled_at or shipment.waybill:
        return
    several = len(live_parcels(session, order_id)) > 1
    if code not in REALLOCATE_CODES or shipment.warehouse is None:
        label = f" {parcel_of(shipment).label}" if several else ""
        fail_booking(session, order_id, f"{code}{label}")
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


def named(lines: Sequence[tuple[str, int]]) -> str:
    """``A x2, B x1``: how reasons and refusals name lines."""
    return ", ".join(f"{sku} x{qty}" for sku, qty in lines)


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


def unplaced_parcels(session: Session, order_id: str, *, lock: bool = False) -> list[Shipment]:
    """The order's refused parcels whose lines are still owed (``[unplaced]``), oldest first."""
    stmt = (
        select(Shipment)
        .where(Shipment.order_id == order_id, Shipment.cancelled_at.is_not(None))
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
               Shipment.waybill).where(Shipment.order_id == order_id)
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
    order_id = session.scalar(select(Shipment.order_id).where(Shipment.id == shipment_id))
    if order_id is None:
        raise NotFound(f"shipment {shipment_id} not found", field="shipment_id")
    order = lock_order(session, order_id)
    shipment = session.get(Shipment, shipment_id, with_for_update=True, populate_existing=True)
    assert shipment is not None
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
        move_order(session, order, target, actor=actor, **detail)
    if order.status == OrderStatus.SHIPPED or order.status not in BOOKING:
        order.stage_deadline = None  # nothing left to book
    if not moves:
        timeline.record(session, order.id, "shipment", actor=actor, detail=detail)
    return [Followup(SHIPPING_SUBSCRIBE, shipment.id)]


def ship(
    session: Session,
    order_id: str,
    booked: Booked,
    *,
    now: datetime,
    actor: str,
    first_poll_s: float,
) -> list[Followup]:
    """The warehouse reports a waybill (API / CLI, ``shipping_mode=manual``): it ships the
    order's first live parcel without one, or, with no parcel yet, one parcel for the whole
    order (its warehouse when the held stock names one). Idempotent for a waybill already
    recorded; a PAID (or PARTIALLY_SHIPPED) order only."""
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
    shipment = unbooked[0] if unbooked else _manual_parcel(session, order_id)
    return _record_booking(session, order, shipment, booked, now=now, actor=actor,
                           first_poll_s=first_poll_s)  # fmt: skip


def _manual_parcel(session: Session, order_id: str) -> Shipment:
    plan = plan_parcels((sku, wh, qty) for sku, wh, qty in _held(session, order_id))
    warehouse = next(iter(plan)) if len(plan) == 1 else None
    lines = plan_parcels((sku, "", qty) for sku, _, qty in _held(session, order_id)).get("", [])
    return _add_parcel(session, order_id, warehouse, lines,
                       key=f"manual-{order_id.replace('-', '')}")  # fmt: skip


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
    """The order's first parcel (oldest live one, else the oldest): what the one-shipment
    views show until they show every parcel (:func:`parcels_view`)."""
    shipment = session.scalars(
        select(Shipment)
        .where(Shipment.order_id == order_id)
        .order_by(Shipment.cancelled_at.is_not(None), Shipment.id)
        .limit(1)
    ).first()
    if shipment is None:
        return None
    view = _parcel_view(session, shipment)
    return {k: v for k, v in view.items() if k in _SHIPMENT_KEYS}


_SHIPMENT_KEYS = ("carrier", "waybill", "status", "raw_state", "subscribed", "next_poll_at",
                  "events")  # fmt: skip


def parcels_view(session: Session, order_id: str) -> list[dict[str, Any]]:
    """Every parcel of the order, oldest first, cancelled ones included (with why), each as
    :func:`shipment_view` shows one plus its id, warehouse, lines and booking key."""
    shipments = session.scalars(
        select(Shipment).where(Shipment.order_id == order_id).order_by(Shipment.id)
    )
    return [_parcel_view(session, s) for s in shipments]


def _parcel_view(session: Session, shipment: Shipment) -> dict[str, Any]:
    events = session.scalars(
        select(TrackingEvent)
        .where(TrackingEvent.shipment_id == shipment.id)
        .order_by(TrackingEvent.occurred_at)
    )
    return {
        "id": shipment.id,
        "warehouse": shipment.warehouse,
        "lines": [{"sku": sku, "quantity": qty} for sku, qty in parcel_lines(session, shipment.id)],
        "booking_key": shipment.booking_key,
        "cancelled_at": shipment.cancelled_at.isoformat() if shipment.cancelled_at else None,
        "cancel_reason": shipment.cancel_reason,
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
