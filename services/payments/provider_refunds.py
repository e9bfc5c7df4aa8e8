"""Refunds made at the provider: in Stripe's dashboard, WeChat Pay's merchant platform or
Alipay's, by someone who did not go through orderflow (issue 20, item 5).

A verified REFUND notification reaches :func:`apply_refund` (from
:func:`services.payments.confirm.apply_notification`, order and payment rows locked):

1. A refund whose number is ours (``refunds.refund_no`` of this payment) is moved as before
   (:func:`services.payments.refunds.record_refund`).
2. Any other refund — no number (a Stripe dashboard refund has no ``metadata.refund_no``) or a
   number we never issued (WeChat's ``out_refund_no``, Alipay's ``out_biz_no`` for a refund made
   in their consoles) — is *made at the provider*. It is recorded once as a ``refunds`` row with
   ``actor='provider'`` and the number :func:`provider_refund_no` (``provider-`` plus the
   payment id and the provider's own name for the refund: its number, else its id, e.g.
   ``re_…``), which is unique: a duplicate or reordered event finds the same row, and a later
   event (``refund.updated``, ``REFUND.SUCCESS``) moves that row forward only
   (:func:`domain.payments.refund_can_move`). Once SUCCEEDED it is counted into
   ``payments.refunded_amount`` (PARTIALLY_REFUNDED / REFUNDED) like our own, so
   :func:`~services.payments.refunds.refundable` leaves it out of what we may still refund.
3. A notification that says a refund happened but not enough to record it asks for a look-up
   instead, as the follow-up task ``payments.lookup_refunds`` (DESIGN.md: a stage owns its
   provider call, and the webhook makes none — it answers the provider at once, and a failed
   look-up is retried and dead-lettered like any task): Stripe's ``charge.refunded`` without an
   embedded refund list (API versions since 2022-11-15) lists the payment's refunds
   (:class:`~adapters.payments.base.RefundLister`); an Alipay notification whose ``out_biz_no``
   we did not issue (its ``refund_fee`` is the trade's running total, not this refund) queries
   that one refund (``alipay.trade.fastpay.refund.query``). :func:`lookup_refunds` then applies
   each answer through rule 1 or 2. Known gap: the look-up is only enqueued, not stored, so a
   publish lost after the commit is not re-driven by the sweeper (no column for it without a
   migration); Stripe's ``refund.*`` events carry the same refunds in full, and the daily
   reconciliation with the provider's files is the backstop.
4. Every provider refund writes a ``refund`` row on the order's timeline with actor
   ``provider``. No stock moves and no order status moves backwards. A provider refund that
   leaves the payment fully refunded while the order is PAID (not shipped yet) moves the order
   to NEEDS_ATTENTION with reason ``provider_refund`` and clears its stage deadline, so that
   goods are not shipped for money already given back; the order is not cancelled (the refund
   may have been a goodwill gesture, or a mistake): an operator decides — move it on to PAID
   to ship anyway, or cancel it (which releases the stock and, nothing being left to refund,
   refunds nothing more). In any other status a full provider refund is an ``attention`` row on
   the timeline only (after shipping it is usually an after-sale settled by hand; an expired or
   cancelled order has nothing left to stop). A partial provider refund is the timeline row.
5. A refund in another currency than the one captured, or of more than is left of the capture
   (``payments.refunded_amount`` counts the refunds the provider has already made), cannot be
   what the provider did: it is not recorded, only written on the timeline as ``attention``.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.payments.base import Notification, RefundLister, RefundResult
from domain.orders import OrderStatus
from domain.payments import PaymentStatus, RefundStatus
from models import Order, Payment, Refund
from services import timeline
from services.followup import Followup
from services.order_state import lock_order, move_order
from services.payments.common import (
    ProviderCall,
    Providers,
    captured_money,
    lock_payment,
    provider_ref,
)
from services.payments.refunds import (
    PROVIDER_ACTOR,
    count_refunded,
    record_refund,
    refund_status,
)
from services.ports import Outcome, Ports
from services.task_names import PAYMENTS_LOOKUP_REFUNDS

log = logging.getLogger(__name__)

#: ``orders.reason`` when a provider refund left a not-yet-shipped order without its money.
REASON = "provider_refund"
_PREFIX = "provider-"
_NO_MAX = 64  # refunds.refund_no


def provider_refund_no(payment_id: int, name: str) -> str:
    """Our number for the provider's refund ``name`` on payment ``payment_id``: the same for
    every event about it. Too long a name (Alipay allows 64 characters) is hashed: then at most
    9 + 19 (a BIGINT id) + 2 + 32 = 62 characters."""
    plain = f"{_PREFIX}{payment_id}-{name}"
    if len(plain) <= _NO_MAX:
        return plain
    return f"{_PREFIX}{payment_id}-h{hashlib.sha256(name.encode()).hexdigest()[:32]}"


def lookup_arg(payment_id: int, refund_no: str = "") -> str:
    """The ``payments.lookup_refunds`` argument: the payment, and the one refund to ask about
    (empty: list them all)."""
    return f"{payment_id}:{refund_no}"


def apply_refund(
    session: Session, order: Order, payment: Payment, note: Notification, *, now: datetime
) -> list[Followup]:
    """Apply a verified notification's refund (rules 1 to 3 of the module docstring); order and
    payment rows locked by the caller. Returns the look-up to enqueue, if one is needed."""
    if note.refunds_unlisted:
        return [Followup(PAYMENTS_LOOKUP_REFUNDS, lookup_arg(payment.id))]
    result = note.refund
    if result is None:
        return []
    if _ours(session, payment, result.refund_no) is None and result.amount is None:
        # A refund we did not make, and the notification does not say how much it was.
        if not result.refund_no:
            return []
        return [Followup(PAYMENTS_LOOKUP_REFUNDS, lookup_arg(payment.id, result.refund_no))]
    apply_result(session, order, payment, result, now=now, source=note.raw_type)
    return []


def apply_result(
    session: Session,
    order: Order,
    payment: Payment,
    result: RefundResult,
    *,
    now: datetime,
    source: str,
) -> None:
    """One refund as the provider reports it: ours is moved, another is recorded or moved as a
    provider refund (rule 2). Order and payment rows locked by the caller."""
    ours = _ours(session, payment, result.refund_no)
    if ours is not None:
        record_refund(session, payment, ours, result, now=now)
        return
    name = result.refund_no or result.provider_refund_ref
    if not name or "\x00" in name or result.amount is None or result.amount.amount <= 0:
        log.warning("%s refund without a name or an amount ignored: %r", payment.provider, result)
        return
    number = provider_refund_no(payment.id, name)
    row = session.scalar(select(Refund).where(Refund.refund_no == number).with_for_update())
    if row is not None:
        if record_refund(session, payment, row, result, now=now):
            _after_counted(session, order, payment, row)
        return
    captured = captured_money(payment)
    left = captured.amount - payment.refunded_amount
    if result.amount.currency != captured.currency or result.amount.amount > left:
        detail = {"reason": REASON, "refund": name[:128], "amount": str(result.amount),
                  "captured": str(captured), "refunded": payment.refunded_amount,
                  "counted": False}  # fmt: skip
        timeline.record(session, order.id, "attention", detail=detail, actor=PROVIDER_ACTOR)
        return
    row = _new_row(order, payment, number, name, result)
    session.add(row)
    session.flush()
    timeline.record(
        session, order.id, "refund", to_status=row.status, actor=PROVIDER_ACTOR,
        detail={"refund_no": number, "amount": row.amount, "provider_refund": name,
                "provider_refund_ref": row.provider_refund_ref, "source": source,
                "made_at": "provider"},
    )  # fmt: skip
    if row.status == RefundStatus.SUCCEEDED:
        count_refunded(session, payment, row.amount)
        _after_counted(session, order, payment, row)


def _ours(session: Session, payment: Payment, refund_no: str) -> Refund | None:
    if not refund_no or "\x00" in refund_no:  # PostgreSQL text cannot hold NUL: not ours
        return None
    return session.scalar(
        select(Refund)
        .where(Refund.refund_no == refund_no, Refund.payment_id == payment.id)
        .with_for_update()
    )


def _new_row(
    order: Order, payment: Payment, number: str, name: str, result: RefundResult
) -> Refund:
    assert result.amount is not None
    return Refund(
        payment_id=payment.id, order_id=order.id, refund_no=number, amount=result.amount.amount,
        currency=result.amount.currency, status=refund_status(result.state),
        raw_status=result.raw_status[:64], reason="made at the provider",
        provider_refund_ref=(result.provider_refund_ref or name)[:128], next_query_at=None,
        actor=PROVIDER_ACTOR,
    )  # fmt: skip


def _after_counted(session: Session, order: Order, payment: Payment, row: Refund) -> None:
    """Rule 4: a provider refund that left the payment fully refunded."""
    if payment.status != PaymentStatus.REFUNDED or row.status != RefundStatus.SUCCEEDED:
        return
    detail: dict[str, Any] = {"reason": REASON, "refund_no": row.refund_no,
                              "refunded": payment.refunded_amount}  # fmt: skip
    if order.status == OrderStatus.PAID:
        order.reason, order.stage_deadline = REASON, None
        move_order(session, order, OrderStatus.NEEDS_ATTENTION, **detail)
    else:
        detail["order_status"] = order.status
        timeline.record(session, order.id, "attention", detail=detail, actor=PROVIDER_ACTOR)


def lookup_refunds(arg: str, providers: Providers, ports: Ports) -> Outcome:
    """The ``payments.lookup_refunds`` task's step (rule 3): ask the provider about one refund
    (``"<payment id>:<refund no>"``) or every refund of the payment (``"<payment id>:"``), with
    no transaction open, then apply each answer. Provider errors (an open circuit included) are
    raised for the task to retry."""
    payment_id, _, refund_no = arg.partition(":")
    with ports.uow() as session:
        plan = _prepare(session, int(payment_id))
    if plan is None:
        return Outcome("noop")
    adapter, ref = providers(plan.provider), plan.request
    if refund_no:
        op, fn = "query_refund", lambda: [adapter.query_refund(ref, refund_no)]
    elif isinstance(adapter, RefundLister):
        op, fn = "list_refunds", lambda: adapter.list_refunds(ref)
    else:
        return Outcome("unsupported")
    results = ports.gate.call(plan.provider, op, plan.order_id, fn, request=ref)
    with ports.uow() as session:
        order = lock_order(session, plan.order_id)
        payment = lock_payment(session, plan.order_id)
        assert payment is not None
        for result in reversed(results):  # oldest first, as they happened
            apply_result(session, order, payment, result, now=ports.clock(), source=op)
    return Outcome(f"looked_up_{len(results)}")


def _prepare(session: Session, payment_id: int) -> ProviderCall | None:
    payment = session.get(Payment, payment_id)
    if payment is None or payment.status not in (
        PaymentStatus.PAID, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED,
    ):  # fmt: skip
        return None
    return ProviderCall(payment.order_id, payment.provider, provider_ref(payment))
