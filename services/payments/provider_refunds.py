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
   instead (DESIGN.md: a stage owns its provider call, and the webhook makes none — it answers
   the provider at once): Stripe's ``charge.refunded`` without an embedded refund list (API
   versions since 2022-11-15) lists the payment's refunds
   (:class:`~adapters.payments.base.RefundLister`); an Alipay notification whose ``out_biz_no``
   we did not issue (its ``refund_fee`` is the trade's running total, not this refund) queries
   that one refund (``alipay.trade.fastpay.refund.query``). :func:`lookup_refunds` then applies
   each answer through rule 1 or 2. The look-up is *owed durably* (DESIGN.md §3.2):

   a. :func:`request_lookup` writes a ``refund_lookups`` row (payment, refund number or empty
      for "list them all", ``due_at``) in the notification's own transaction, and returns the
      ``payments.lookup_refunds`` follow-up to publish after the commit. A table, not a column:
      Alipay can owe several look-ups for one payment at once. The same look-up asked again
      bumps the row's ``requests`` and brings ``due_at`` back to :data:`LOOKUP_FIRST_S`.
   b. :func:`claim_due_lookups` (run by the payment poll, ``maintenance.poll_payments``) claims
      rows past ``due_at`` with ``FOR UPDATE SKIP LOCKED`` and re-publishes them, pushing
      ``due_at`` on by :func:`lookup_redrive_s` (doubling from :data:`LOOKUP_FIRST_S` up to
      :data:`LOOKUP_MAX_S`): a lost publish, or a look-up whose worker died, is sent again. A
      look-up with an OPEN dead letter (same task and argument) is held, not re-sent, until an
      operator replays or discards it (as :mod:`services.sweeper` holds orders).
   c. The task applies the answer and deletes the row in one transaction — only if no
      notification asked again since it read the row (``requests`` unchanged), because that
      notification may describe a refund the answer did not include. Provider errors leave
      the row: the task retries and dead-letters like any task, and the poll re-sends it
      (unless held) for as long as it is owed.
      While the payment is not captured here yet (a refund notification overtook the
      payment's), the row is kept and re-driven (a read, no provider call); a provider with no
      way to list refunds drops it with a warning.

   Running a look-up twice records each refund once (rule 2's unique number). The daily
   reconciliation with the provider's files remains the backstop for what no one notified.
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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from adapters.payments.base import Notification, RefundLister, RefundResult
from domain.backoff import ceiling_s
from domain.orders import OrderStatus
from domain.payments import PaymentStatus, RefundStatus
from models import DeadLetter, Order, Payment, Refund
from models.payments import RefundLookup
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
_NO_MAX = 64  # refunds.refund_no, refund_lookups.refund_no
#: An owed look-up not cleared within this is re-published (a publish or worker lost); each
#: re-drive doubles the wait, up to :data:`LOOKUP_MAX_S`.
LOOKUP_FIRST_S = 60.0
LOOKUP_MAX_S = 3600.0


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
    payment rows locked by the caller. A look-up that is needed is owed in this transaction
    (:func:`request_lookup`) and returned for publishing after the commit."""
    if note.refunds_unlisted:
        return [request_lookup(session, payment.id, "", now=now)]
    result = note.refund
    if result is None:
        return []
    if _ours(session, payment, result.refund_no) is None and result.amount is None:
        # A refund we did not make, and the notification does not say how much it was.
        number = result.refund_no
        if not number or "\x00" in number or len(number) > _NO_MAX:  # no way to ask for it
            log.warning("%s refund with no usable number ignored: %r", payment.provider, result)
            return []
        return [request_lookup(session, payment.id, number, now=now)]
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


def lookup_redrive_s(attempts: int) -> float:
    """Seconds from a look-up's ``attempts``-th re-drive (0: its request) to the next one:
    doubling from :data:`LOOKUP_FIRST_S`, capped at :data:`LOOKUP_MAX_S`."""
    return ceiling_s(attempts + 1, first_s=LOOKUP_FIRST_S, cap_s=LOOKUP_MAX_S)


def request_lookup(session: Session, payment_id: int, refund_no: str, *, now: datetime) -> Followup:
    """Owe a look-up (rule 3a), in the caller's transaction: the ``refund_lookups`` row, new or
    asked again, and the follow-up to publish after the commit."""
    due = now + timedelta(seconds=lookup_redrive_s(0))
    insert = pg_insert(RefundLookup).values(
        payment_id=payment_id, refund_no=refund_no, due_at=due, attempts=0, requests=1
    )
    session.execute(
        insert.on_conflict_do_update(
            constraint="uq_refund_lookups_payment_refund",
            set_={"requests": RefundLookup.requests + 1, "attempts": 0, "due_at": due},
        )
    )
    return Followup(PAYMENTS_LOOKUP_REFUNDS, lookup_arg(payment_id, refund_no))


def claim_due_lookups(session: Session, *, now: datetime, limit: int) -> list[Followup]:
    """Look-ups owed past their ``due_at`` (rule 3b), claimed ``FOR UPDATE SKIP LOCKED`` (two
    polls split them) and moved on by :func:`lookup_redrive_s`; returns those to re-publish,
    leaving out the held ones (an OPEN dead letter for the same argument)."""
    rows = session.execute(
        select(RefundLookup, Payment.order_id)
        .join(Payment, Payment.id == RefundLookup.payment_id)
        .where(RefundLookup.due_at < now)
        .order_by(RefundLookup.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=RefundLookup)
    ).all()
    held = _dead_lettered(session)
    followups = []
    for row, order_id in rows:
        row.attempts += 1
        row.due_at = now + timedelta(seconds=lookup_redrive_s(row.attempts))
        arg = lookup_arg(row.payment_id, row.refund_no)
        if arg in held:
            continue
        timeline.record(
            session, order_id, "redrive", actor="sweeper",
            detail={"task": PAYMENTS_LOOKUP_REFUNDS, "arg": arg, "attempt": row.attempts},
        )  # fmt: skip
        followups.append(Followup(PAYMENTS_LOOKUP_REFUNDS, arg))
    return followups


def _dead_lettered(session: Session) -> set[str]:
    """Arguments of look-ups waiting in the dead letters for an operator (few: read them all)."""
    rows = session.scalars(
        select(DeadLetter.args).where(
            DeadLetter.task_name == PAYMENTS_LOOKUP_REFUNDS, DeadLetter.status == "OPEN"
        )
    )
    return {str(args[0]) for args in rows if args}


@dataclass(frozen=True, slots=True)
class LookupPlan:
    """A look-up to make (no transaction open) and what is needed to clear its row after."""

    call: ProviderCall
    payment_id: int
    refund_no: str
    #: The row's ``requests`` when read; None when no row was owed (e.g. a replayed message).
    seen: int | None


def lookup_refunds(arg: str, providers: Providers, ports: Ports) -> Outcome:
    """The ``payments.lookup_refunds`` task's step (rule 3): ask the provider about one refund
    (``"<payment id>:<refund no>"``) or every refund of the payment (``"<payment id>:"``), with
    no transaction open, then apply each answer and clear the owed row (rule 3c). Provider
    errors (an open circuit included) are raised for the task to retry; the row stays."""
    payment_id, _, refund_no = arg.partition(":")
    with ports.uow() as session:
        plan = prepare_lookup(session, int(payment_id), refund_no)
    if isinstance(plan, str):
        return Outcome(plan)
    adapter, ref = providers(plan.call.provider), plan.call.request
    if refund_no:
        op, fn = "query_refund", lambda: [adapter.query_refund(ref, refund_no)]
    elif isinstance(adapter, RefundLister):
        op, fn = "list_refunds", lambda: adapter.list_refunds(ref)
    else:  # asking again cannot help: drop it
        log.warning("%s cannot list refunds: look-up %s dropped", plan.call.provider, arg)
        with ports.uow() as session:
            clear_lookup(session, plan)
        return Outcome("unsupported")
    results = ports.gate.call(plan.call.provider, op, plan.call.order_id, fn, request=ref)
    with ports.uow() as session:
        finish_lookup(session, plan, results, now=ports.clock(), source=op)
    return Outcome(f"looked_up_{len(results)}")


def prepare_lookup(session: Session, payment_id: int, refund_no: str) -> LookupPlan | str:
    """The look-up to make, or the step's result when there is none to make now: ``noop`` (no
    such payment) or ``not_captured`` (its capture is not recorded yet: the row is kept)."""
    payment = session.get(Payment, payment_id)
    if payment is None:
        return "noop"
    if payment.status not in (
        PaymentStatus.PAID, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED,
    ):  # fmt: skip
        return "not_captured"
    seen = session.scalar(select(RefundLookup.requests).where(*_owed(payment_id, refund_no)))
    call = ProviderCall(payment.order_id, payment.provider, provider_ref(payment))
    return LookupPlan(call, payment_id, refund_no, seen)


def finish_lookup(
    session: Session,
    plan: LookupPlan,
    results: list[RefundResult],
    *,
    now: datetime,
    source: str,
) -> bool:
    """Apply the provider's answer (oldest refund first) and clear the owed row, in one
    transaction. Returns whether the row was cleared (False: none, or asked for again)."""
    order = lock_order(session, plan.call.order_id)
    payment = lock_payment(session, plan.call.order_id)
    assert payment is not None
    for result in reversed(results):  # oldest first, as they happened
        apply_result(session, order, payment, result, now=now, source=source)
    return clear_lookup(session, plan)


def clear_lookup(session: Session, plan: LookupPlan) -> bool:
    """Delete the owed row the plan read, unless a notification asked again since."""
    if plan.seen is None:
        return False
    deleted = session.execute(
        delete(RefundLookup)
        .where(*_owed(plan.payment_id, plan.refund_no), RefundLookup.requests == plan.seen)
        .returning(RefundLookup.id)
    ).first()
    return deleted is not None


def _owed(payment_id: int, refund_no: str) -> tuple[ColumnElement[bool], ...]:
    return RefundLookup.payment_id == payment_id, RefundLookup.refund_no == refund_no
