"""Creating the payment at the provider: prepare (lock, key stored), then finish with what the
provider answered (created, settled on create, a replayed failure, a refusal)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from adapters.payments.base import (
    REPLAYED_FAILURE,
    SETTLED_ON_CREATE,
    CreatePayment,
    PaymentCreated,
    key_number,
    rotated_key,
)
from domain.errors import (
    NotFound,
    ProviderRejected,
    ProviderUnavailable,
)
from domain.money import Money
from domain.orders import OrderStatus
from domain.payments import PaymentStatus
from models import Order, Payment
from services import timeline
from services.followup import Followup
from services.order_state import lock_order, move_order
from services.payments.common import (
    LEASE_S,
    PaymentConfig,
    ProviderCall,
    Providers,
    expire_order,
    lock_payment,
    move_payment,
)
from services.ports import Outcome, Ports
from services.provider_calls import CircuitOpen
from services.task_names import PAYMENTS_EXPIRE, PAYMENTS_QUERY


def create(order_id: str, providers: Providers, ports: Ports, config: PaymentConfig) -> Outcome:
    """Create the payment at the provider: RESERVED -> AWAITING_PAYMENT.

    Prepare (the payment row and its idempotency key, committed) -> the provider's ``create``
    through the gate -> record. Work that comes too late is not sent: with less than
    ``create_min_left_s`` before the payment deadline (a backlog, a flash sale) the order
    expires (stock released once, EXPIRED ``payment_timeout``), or, when an earlier attempt
    may have reached the provider, the close runs first (``payments.expire``). What each
    answer means:

    * created: instructions stored, the order awaits payment, the first query is scheduled;
    * circuit open: nothing happens now; the sweeper re-drives the order at its stage deadline;
    * ``SETTLED_ON_CREATE`` refusals (the trade is already paid or closed there): query it;
    * any other refusal: the payment is closed and the order NEEDS_ATTENTION with the code;
    * ``REPLAYED_FAILURE`` (the provider replays a stored failure for our key): a new key is
      minted, then the error is raised for the task to retry, like every other transient one.
    """
    with ports.uow() as session:
        plan = prepare_create(session, order_id, now=ports.clock(), config=config)
    if isinstance(plan, TooLate):
        return Outcome.of("too_late", plan.followups)
    if plan is None:
        return Outcome("noop")
    request = plan.request
    try:
        created = ports.gate.call(
            plan.provider, "create", order_id, lambda: providers(plan.provider).create(request),
            request=request,
        )  # fmt: skip
    except CircuitOpen:
        return Outcome("circuit_open")
    except ProviderRejected as exc:
        return _refused(order_id, exc, ports)
    except ProviderUnavailable as exc:
        if exc.code == REPLAYED_FAILURE:
            with ports.uow() as session:
                rotate_create_key(session, order_id)
        raise
    with ports.uow() as session:
        finish_create(
            session, order_id, created, now=ports.clock(), first_query_s=config.first_query_s
        )
    return Outcome("created")


def _refused(order_id: str, error: ProviderRejected, ports: Ports) -> Outcome:
    with ports.uow() as session:
        if error.code in SETTLED_ON_CREATE:
            followup = settled_on_create(session, order_id, error, now=ports.clock())
            return Outcome.of("settled_at_provider", [followup] if followup else [])
        fail_create(session, order_id, error)
    return Outcome("rejected")


@dataclass(frozen=True, slots=True)
class TooLate:
    """The create came too late to send (see :func:`create`); ``followups`` to publish."""

    followups: list[Followup]


def prepare_create(
    session: Session, order_id: str, *, now: datetime, config: PaymentConfig
) -> ProviderCall | TooLate | None:
    """Store the payment (and its idempotency key) for a RESERVED order; None if not needed,
    :class:`TooLate` if the payment deadline is (all but) past."""
    order = lock_order(session, order_id)
    if order.status != OrderStatus.RESERVED or order.payment_deadline is None:
        return None
    payment = lock_payment(session, order_id)
    if order.payment_deadline - now < timedelta(seconds=config.create_min_left_s):
        return TooLate(_too_late(session, order, payment, now=now))
    if payment is None:
        key = order.id.replace("-", "")  # 32 chars: fits every provider's merchant order number
        payment = Payment(
            order_id=order.id, provider=order.payment_provider, out_trade_no=key,
            idempotency_key=f"pay-{key}", amount=order.total_amount, currency=order.currency,
            status=PaymentStatus.CREATING,
        )  # fmt: skip
        session.add(payment)
        session.flush()
        timeline.record(
            session, order.id, "payment", to_status=PaymentStatus.CREATING,
            detail={"provider": payment.provider, "out_trade_no": key},
        )  # fmt: skip
    elif payment.status not in (PaymentStatus.CREATING, PaymentStatus.PENDING):
        return None
    order.stage_deadline = now + timedelta(seconds=config.create_redrive_s)  # if this task dies
    request = create_request(order, payment, order.payment_deadline, config.notify_base_url)
    return ProviderCall(order.id, payment.provider, request)


def _too_late(
    session: Session, order: Order, payment: Payment | None, *, now: datetime
) -> list[Followup]:
    """Nothing at the provider yet: expire here. A payment row means an earlier attempt may
    have reached the provider (its answer lost): close that trade first, as expiry does."""
    if payment is None:
        expire_order(session, order, now=now)
        return []
    order.stage_deadline = now + timedelta(seconds=LEASE_S)  # the sweeper's re-drive, if lost
    timeline.record(session, order.id, "payment", detail={"too_late": "close, then expire"})
    return [Followup(PAYMENTS_EXPIRE, order.id)]


def create_request(
    order: Order, payment: Payment, expires_at: datetime, notify_base_url: str
) -> CreatePayment:
    """The create call for ``payment``: the same fields every time, so a repeat is a replay."""
    return CreatePayment(
        out_trade_no=payment.out_trade_no,
        idempotency_key=payment.idempotency_key,
        amount=Money(payment.amount, payment.currency),
        description=f"Order {order.external_id}",
        notify_url=f"{notify_base_url.rstrip('/')}/webhooks/{payment.provider}",
        expires_at=expires_at,
        metadata={"order_id": order.id},
    )


def finish_create(
    session: Session, order_id: str, created: PaymentCreated, *, now: datetime, first_query_s: float
) -> None:
    """Record the instructions; RESERVED -> AWAITING_PAYMENT (unless a webhook already paid it)."""
    order = lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    if payment is None:
        raise NotFound(f"payment of order {order_id} not found", field="order_id")
    payment.provider_ref = payment.provider_ref or created.provider_ref
    payment.instructions = dict(created.instructions)
    payment.next_query_at = now + timedelta(seconds=first_query_s)
    move_payment(session, payment, PaymentStatus.PENDING)
    if order.status == OrderStatus.RESERVED:
        shown = sorted(created.instructions)  # the keys only: the timeline holds no secrets
        move_order(
            session, order, OrderStatus.AWAITING_PAYMENT, provider=payment.provider, shown=shown
        )
        order.stage_deadline = order.payment_deadline


def rotate_create_key(session: Session, order_id: str) -> None:
    """The provider replays a stored failure for the current key (``REPLAYED_FAILURE``): mint a
    new one. Only while nothing the customer can pay was returned (payment still CREATING)."""
    lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    if payment is None or payment.status != PaymentStatus.CREATING:
        return
    base = f"pay-{payment.out_trade_no}"
    attempt = key_number(base, payment.idempotency_key) + 1
    payment.idempotency_key = rotated_key(base, attempt)
    timeline.record(
        session, order_id, "payment", detail={"idempotency_key": "rotated", "attempt": attempt}
    )


def settled_on_create(
    session: Session, order_id: str, error: ProviderRejected, *, now: datetime
) -> Followup | None:
    """A create found the trade already settled at the provider (``SETTLED_ON_CREATE``): e.g.
    the first create succeeded, its result was never recorded (the database went away), and
    the buyer paid before the retry. Ask the provider for the trade's status instead of
    treating the answer as a refusal; returns the query to publish after the commit."""
    lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    if payment is None or payment.status not in (PaymentStatus.CREATING, PaymentStatus.PENDING):
        return None
    payment.next_query_at = now
    timeline.record(
        session, order_id, "payment", detail={"settled_at_provider": error.code, "then": "query"}
    )
    return Followup(PAYMENTS_QUERY, payment.id)


def fail_create(session: Session, order_id: str, error: ProviderRejected) -> None:
    """The provider refused to create the payment: the order needs an operator."""
    order = lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    if payment is not None:
        payment.last_error = str(error)[:500]
        move_payment(session, payment, PaymentStatus.CLOSED, error=error.code)
    if order.status == OrderStatus.RESERVED:
        order.reason = f"payment_rejected:{error.code or 'unknown'}"
        order.stage_deadline = None
        move_order(session, order, OrderStatus.NEEDS_ATTENTION, error=str(error)[:200])
