"""Expiry and cancel: close the trade at the provider, release the stock; a trade found paid
while closing is refunded.

Cancel comes in two shapes (:func:`cancel_order`, behind the API, the CLI and the console):

* **in full** — an order none of whose parcels is booked: the order is CANCELLED, all its
  stock released, an open trade closed or everything captured refunded;
* **what has not shipped** (:func:`cancel_unshipped`) — an order with a booked parcel, i.e.
  PARTIALLY_SHIPPED, or NEEDS_ATTENTION with a parcel booked (after a refused booking, a
  re-allocation that found no warehouse, a tracking exception): each parcel not booked is
  cancelled and its stock released, each refused parcel whose lines no warehouse took
  (``[unplaced]``, :mod:`domain.parcels` rule 7) is settled, and exactly those lines' share is
  refunded (never more than is left of the capture). The booked parcels are left to the
  after-sale flow and the order follows them; it is never CANCELLED. An order flagged for
  anything but its booking (:data:`BOOKING_FLAGS`; e.g. a tracking exception, a dispute) stays
  flagged: the cancel did not fix that. Nothing left to cancel is refused.

A *resolve* of ``reallocation_failed`` refunds the unplaced lines' share the same way
(:func:`refund_unplaced`) and lets the rest ship.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from adapters.payments.base import (
    ClosePayment,
    CloseResult,
    PaymentState,
)
from domain.errors import (
    ConflictError,
    ProviderUnavailable,
)
from domain.orders import CANCELLABLE, OrderStatus
from domain.parcels import climb, lines_share, order_progress, settled
from domain.payments import CAPTURED, PaymentStatus
from models import Order, Payment, Shipment
from services import timeline
from services.followup import Followup
from services.order_state import lock_order, move_order
from services.parcel_planning import cancel_parcel
from services.parcels import live_parcels, parcel_lines, parcel_of, unplaced_parcels
from services.payments.common import (
    AWAITING,
    LEASE_S,
    PaymentConfig,
    ProviderCall,
    Providers,
    expire_order,
    lock_payment,
    move_payment,
    provider_ref,
)
from services.payments.confirm import apply_status
from services.payments.create import create_request
from services.payments.refunds import refundable, request_refund
from services.ports import Outcome, Ports
from services.provider_calls import CircuitOpen
from services.stock import release_reservations
from services.task_names import PAYMENTS_CLOSE

#: The reasons of an order flagged while booking: cancelling what has not shipped settles
#: them, so the order moves on after the cancel. Any other flag stays.
BOOKING_FLAGS = ("booking_rejected", "reallocation_failed")


def close(order_id: str, providers: Providers, ports: Ports, config: PaymentConfig) -> Outcome:
    """Close the order's open trade at the provider: at the payment deadline (then the order
    expires and its stock is released) or after a cancel. A trade the close finds paid is
    applied as paid (an expiring order) or refunded (a cancelled one). With no open trade an
    overdue order expires at once. An open circuit skips the call: the sweeper comes back
    after the lease. Provider errors are raised for the task (transient ones are retried)."""
    with ports.uow() as session:
        plan = prepare_close(
            session, order_id, now=ports.clock(), notify_base_url=config.notify_base_url
        )
    if plan is None:
        return Outcome("noop")
    request = plan.request
    try:
        result = ports.gate.call(
            plan.provider, "close", order_id, lambda: providers(plan.provider).close(request),
            request=request,
        )  # fmt: skip
    except CircuitOpen:
        return Outcome("circuit_open")
    with ports.uow() as session:
        followups = finish_close(session, order_id, request, result, now=ports.clock())
    return Outcome.of("closed" if result.closed else "paid", followups)


def prepare_close(
    session: Session, order_id: str, *, now: datetime, notify_base_url: str
) -> ProviderCall | None:
    """Before expiring or after cancelling: the trade to close at the provider, if any.

    Without the provider's reference (the create's answer never arrived or was never recorded)
    the close carries the create request, so that a provider which closes only by its own
    reference can recover it with the same idempotency key (see :class:`ClosePayment`).
    """
    order = lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    if payment is None or payment.status not in (PaymentStatus.CREATING, PaymentStatus.PENDING):
        # Nothing open at the provider: an overdue order can expire right away.
        overdue = order.payment_deadline is not None and order.payment_deadline <= now
        if order.status in AWAITING and overdue:
            expire_order(session, order, now=now)
        return None
    if order.status in AWAITING:
        order.stage_deadline = now + timedelta(seconds=LEASE_S)
    create = None
    if payment.provider_ref is None:
        create = create_request(order, payment, order.payment_deadline or now, notify_base_url)
    request = ClosePayment(provider_ref(payment), f"close-{payment.out_trade_no}", create=create)
    return ProviderCall(order_id, payment.provider, request)


def finish_close(
    session: Session,
    order_id: str,
    request: ClosePayment,
    result: CloseResult,
    *,
    now: datetime,
) -> list[Followup]:
    """Record a close. A trade that turned out paid is treated as paid (or refunded if the
    order is already over); a closed one lets an overdue order expire.

    Raises :class:`ProviderUnavailable` (retry the close) when the provider found no trade for
    a create key that was rotated meanwhile: the new key may be creating one right now.
    """
    order = lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    assert payment is not None
    if not result.closed:
        return apply_status(session, order, payment, result.status, now=now, source="close")
    create = request.create
    never_created = result.status.state is PaymentState.NOT_FOUND
    if never_created and create is not None and create.idempotency_key != payment.idempotency_key:
        raise ProviderUnavailable(payment.provider, "create key rotated during close: close again")
    payment.provider_ref = payment.provider_ref or result.status.provider_ref
    move_payment(session, payment, PaymentStatus.CLOSED, source="close")
    payment.next_query_at = None
    overdue = order.payment_deadline is not None and order.payment_deadline <= now
    if order.status in AWAITING and overdue:
        expire_order(session, order, now=now)
    return []


def cancel_order(
    session: Session, order_id: str, *, now: datetime, actor: str, reason: str
) -> list[Followup]:
    """Cancel before shipping: release stock now; close the trade or refund what was paid.

    Raises :class:`ConflictError` once the order may not be cancelled: past its stage, or PAID
    with a warehouse booking under way (a parcel whose booking call was sent: its
    ``booking_sent_at``, written before the call under this same order lock). A parcel may be
    booked by then and the booking port cannot undo one, so cancelling would refund an order
    that still ships; the warehouse must cancel it. An order with a booked parcel
    (PARTIALLY_SHIPPED, or NEEDS_ATTENTION with one) cancels only what has not shipped
    (:func:`cancel_unshipped`). Planned parcels never sent are cancelled with the order.
    """
    order = lock_order(session, order_id)
    if order.status not in CANCELLABLE:
        raise ConflictError(
            f"order {order_id} is {order.status} and can no longer be cancelled", field="status"
        )
    live = live_parcels(session, order_id, lock=True)
    partly = order.status == OrderStatus.NEEDS_ATTENTION and any(p.waybill for p in live)
    if order.status == OrderStatus.PARTIALLY_SHIPPED or partly:
        return cancel_unshipped(session, order, now=now, actor=actor, reason=reason)
    unbooked = [p for p in live if p.waybill is None]
    if order.status == OrderStatus.PAID and any(p.booking_sent_at for p in unbooked):
        raise ConflictError(
            f"order {order_id} is being booked with the warehouse; cancel the parcel there first",
            field="status",
        )
    payment = lock_payment(session, order_id)
    release_reservations(session, [order.id], now=now, reason=f"cancelled: {reason}")
    for parcel in unbooked:  # their stock was just released with the order's
        parcel.cancelled_at, parcel.cancel_reason = now, f"cancelled: {reason}"[:200]
    order.reason = "cancelled"
    order.stage_deadline = None
    move_order(session, order, OrderStatus.CANCELLED, actor=actor, reason=reason)
    if payment is None:
        return []
    if payment.status in CAPTURED:
        if refundable(session, payment) <= 0:
            return []  # refunded in full already (or on its way): nothing more to send back
        followup = request_refund(
            session, order, payment, amount=None, refund_no=f"cancel-{payment.out_trade_no}",
            reason=reason, actor=actor, now=now,
        )  # fmt: skip
        return [followup] if followup else []
    if payment.status in (PaymentStatus.CREATING, PaymentStatus.PENDING):
        return [Followup(PAYMENTS_CLOSE, order_id)]
    return []


def cancel_unshipped(
    session: Session, order: Order, *, now: datetime, actor: str, reason: str
) -> list[Followup]:
    """Cancel what a (locked) order with a booked parcel has not shipped (module docstring):
    each parcel not booked is cancelled, its units released at its warehouse (ledger
    ``release``), and each ``[unplaced]`` refused parcel settled (its stock was released at the
    refusal); their lines' share is refunded (refund ``cancel-<trade>-p<parcel>``, capped at
    what is left to refund). The booked parcels are left to the after-sale flow and the order
    follows them (SHIPPED or later: :func:`domain.parcels.order_progress`), its flag cleared
    if it was a booking's (:data:`BOOKING_FLAGS`), else still flagged; it is not CANCELLED.

    Raises :class:`ConflictError`, changing nothing, if one of those parcels' booking was sent
    (it may be booked: cancel it at the warehouse first; in NEEDS_ATTENTION after a refused
    booking the sent parcel is the refused one), a line has no price to refund, or nothing is
    left to cancel.
    """
    flagged = order.status == OrderStatus.NEEDS_ATTENTION
    refused = flagged and (order.reason or "").startswith("booking_rejected")
    unbooked = [p for p in live_parcels(session, order.id, lock=True) if p.waybill is None]
    sent = next((p for p in unbooked if p.booking_sent_at is not None and not refused), None)
    if sent is not None:
        raise ConflictError(
            f"order {order.id}: {parcel_of(sent).label} is being booked with the warehouse; "
            "cancel the parcel there first", field="status",
        )  # fmt: skip
    unplaced = unplaced_parcels(session, order.id, lock=True)
    if not unbooked and not unplaced:
        raise ConflictError(
            f"order {order.id}: every parcel is booked, nothing is left to cancel; refund it "
            "through the after-sale flow", field="status",
        )  # fmt: skip
    shares = _shares(session, order, unbooked + unplaced)
    payment = lock_payment(session, order.id)
    followups: list[Followup] = []
    refunds: list[list[Any]] = []
    for parcel, share in shares:
        if parcel.cancelled_at is None:
            units = cancel_parcel(session, parcel, now=now, reason=reason)
        else:  # unplaced: nothing held any more
            units, parcel.cancel_reason = 0, settled(parcel.cancel_reason or "", "refunded")
        refund = _refund_share(session, order, payment, parcel, share, now=now, actor=actor,
                               reason=reason)  # fmt: skip
        refunds.append([parcel_of(parcel).label, units, refund[0]])
        followups += refund[1]
    order.stage_deadline = None  # nothing is left to book
    timeline.record(
        session, order.id, "cancel", actor=actor,
        detail={"reason": reason, "unshipped": refunds},  # [parcel, units released, refunded]
    )  # fmt: skip
    if flagged and not (order.reason or "").startswith(BOOKING_FLAGS):
        return followups  # flagged for something else (a parcel, a dispute): still there
    if flagged:
        order.reason = None
    parcels = [parcel_of(p) for p in live_parcels(session, order.id)]
    for target in climb(order.status, order_progress(parcels)):
        move_order(session, order, target, actor=actor, cancelled_unshipped=reason)
    return followups


def refund_unplaced(
    session: Session, order: Order, *, now: datetime, actor: str, reason: str
) -> tuple[list[list[Any]], list[Followup]]:
    """Settle the (locked) order's ``[unplaced]`` parcels as refunded and refund their lines'
    share, capped at what is left (refund ``cancel-<trade>-p<parcel>``, the cancel's own
    number for those lines, so a cancel and a resolve never both refund them). Returns
    ``[[parcel, amount], …]`` and the refund tasks. Raises :class:`ConflictError` if a line
    has no price."""
    unplaced = unplaced_parcels(session, order.id, lock=True)
    shares = _shares(session, order, unplaced)
    payment = lock_payment(session, order.id)
    done: list[list[Any]] = []
    followups: list[Followup] = []
    for parcel, share in shares:
        parcel.cancel_reason = settled(parcel.cancel_reason or "", "refunded")
        amount, tasks = _refund_share(session, order, payment, parcel, share, now=now,
                                      actor=actor, reason=reason)  # fmt: skip
        done.append([parcel_of(parcel).label, amount])
        followups += tasks
    return done, followups


def _shares(session: Session, order: Order, parcels: list[Shipment]) -> list[tuple[Shipment, int]]:
    """Each parcel's lines' share of what the order was priced at (:func:`lines_share`)."""
    prices = {line.sku: line.unit_amount for line in order.lines}
    priced = {sku: p for sku, p in prices.items() if p is not None}
    list_total = sum((line.unit_amount or 0) * line.quantity for line in order.lines)
    shares: list[tuple[Shipment, int]] = []
    for parcel in parcels:
        lines = parcel_lines(session, parcel.id)
        unpriced = sorted(sku for sku, _ in lines if sku not in priced)
        if unpriced:
            raise ConflictError(
                f"cannot work out the refund of {parcel_of(parcel).label}: no price for "
                f"{', '.join(unpriced)}", field="status",
            )  # fmt: skip
        share = lines_share(lines, priced, list_total=list_total, charged=order.total_amount)
        shares.append((parcel, share))
    return shares


def _refund_share(
    session: Session,
    order: Order,
    payment: Payment | None,
    parcel: Shipment,
    share: int,
    *,
    now: datetime,
    actor: str,
    reason: str,
) -> tuple[int, list[Followup]]:
    """Refund the parcel's share, never more than is left: (amount, its task)."""
    if payment is None or payment.status not in CAPTURED:
        return 0, []
    amount = min(share, refundable(session, payment))
    if amount <= 0:
        return 0, []
    followup = request_refund(
        session, order, payment, amount=amount,
        refund_no=f"cancel-{payment.out_trade_no}-p{parcel.id}", reason=reason, actor=actor,
        now=now,
    )  # fmt: skip
    return amount, [followup] if followup else []
