"""Expiry and cancel: close the trade at the provider, release the stock; a trade found paid
while closing is refunded."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
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
from domain.payments import CAPTURED, PaymentStatus
from models import Shipment
from services.followup import Followup
from services.order_state import lock_order, move_order
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
    with a warehouse booking under way (a shipment row, written before the booking call under
    this same order lock). A parcel may be booked by then and the booking port cannot undo
    one, so cancelling would refund an order that still ships; the warehouse must cancel it.
    """
    order = lock_order(session, order_id)
    if order.status not in CANCELLABLE:
        raise ConflictError(
            f"order {order_id} is {order.status} and can no longer be cancelled", field="status"
        )
    booking = select(Shipment.id).where(Shipment.order_id == order_id)
    if order.status == OrderStatus.PAID and session.scalar(booking) is not None:
        raise ConflictError(
            f"order {order_id} is being booked with the warehouse; cancel the parcel there first",
            field="status",
        )
    payment = lock_payment(session, order_id)
    release_reservations(session, [order.id], now=now, reason=f"cancelled: {reason}")
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
