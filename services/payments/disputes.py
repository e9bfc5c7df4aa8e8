"""Disputes: a verified ``DISPUTE`` notification (Stripe ``charge.dispute.*``) recorded once.

:func:`apply_dispute_notification` is called by the webhook (:mod:`api.payments`) in place of
:func:`services.payments.confirm.apply_notification` for dispute events, in one transaction:

1. Deduplicated on the event id (``processed_notifications``, as every notification): a repeat
   delivery changes nothing.
2. The payment is found by the provider's reference (Stripe ``pi_…``); a dispute on a payment
   that is not ours is acknowledged and ignored (logged).
3. The order row is locked first (as every payment stage does), which serializes the events of
   one dispute; the dispute row is then inserted or updated (unique per provider and dispute id).
4. The dispute's state (status, amount, reason, evidence deadline) is taken from the event only
   as :func:`domain.disputes.takes_state` allows: a closed dispute stays closed, and an older
   event arriving late does not overwrite a newer state (event ``created`` time and status
   rank). Funds withdrawn and reinstated only grow. A close records ``outcome`` (``won``,
   ``lost``, ``closed`` for an inquiry) and ``closed_at``.
5. Every event writes a ``dispute`` row on the order's timeline (event id and type, status,
   whether it was applied).
6. A dispute first seen open flags its order (:func:`domain.disputes.order_flag`): where the
   transition table allows NEEDS_ATTENTION (RESERVED … IN_TRANSIT) the order moves there with
   reason ``dispute`` and its stage deadline is cleared, so nothing ships while it is open.
   DELIVERED and COMPLETED orders cannot move there (COMPLETED is final, and a delivered order
   must not be dragged backwards): they stay, the timeline notes the dispute, and the console's
   Attention page lists every open dispute from the disputes table (:func:`open_disputes`), with
   its evidence deadline. The transition table is deliberately not widened for this.
   No status moves backwards and no stock moves: a won or lost dispute leaves the order where
   it is, for a person to resolve (move it on, cancel, or refund).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.payments.base import DisputeEvent, Notification
from domain.disputes import CLOSED, OUTCOMES, OrderFlag, Recorded, order_flag, takes_state
from domain.orders import OrderStatus
from models import Dispute, Order, Payment
from services import timeline
from services.followup import Followup
from services.order_state import lock_order, move_order
from services.payments.common import first_delivery

log = logging.getLogger(__name__)

REASON = "dispute"


def apply_dispute_notification(
    session: Session, provider: str, note: Notification, *, now: datetime
) -> list[Followup]:
    """Apply a verified dispute notification once (see the module docstring); returns no
    follow-ups (a dispute waits for a person)."""
    event = note.dispute
    if event is None or not first_delivery(session, provider, note.event_id):
        return []
    found = None
    if event.provider_ref is not None:
        found = session.execute(
            select(Payment.order_id, Payment.id).where(
                Payment.provider == provider, Payment.provider_ref == event.provider_ref
            )
        ).first()
    if found is None:
        log.warning(
            "%s dispute %s: no payment %s here", provider, event.dispute_id, event.provider_ref
        )
        return []
    order_id, payment_id = found
    order = lock_order(session, order_id)
    row = session.scalar(
        select(Dispute)
        .where(Dispute.provider == provider, Dispute.provider_dispute_id == event.dispute_id)
        .with_for_update()
    )
    first_seen = row is None
    if row is None:
        row = _new_row(provider, order_id, payment_id, event)
        session.add(row)
    applied = record_event(row, event, now=now, fresh=first_seen)
    timeline.record(session, order_id, "dispute", detail=_detail(note, event, row, applied))
    _flag(session, order, first_seen=first_seen, status=row.status, dispute_id=event.dispute_id)
    return []


def record_event(row: Dispute, event: DisputeEvent, *, now: datetime, fresh: bool) -> bool:
    """Write ``event`` into the locked dispute ``row``: the state where rule 3 of
    :mod:`domain.disputes` allows it (returns whether it did), the funds always (never
    decreasing)."""
    row.funds_withdrawn = max(row.funds_withdrawn or 0, event.funds_withdrawn)
    row.funds_reinstated = max(row.funds_reinstated or 0, event.funds_reinstated)
    current = None if fresh else Recorded(row.status, row.event_at)
    if not takes_state(current, event.status, event.event_at):
        return False
    row.status, row.event_at = event.status, max(event.event_at, row.event_at or event.event_at)
    row.amount, row.currency = event.amount.amount, event.amount.currency
    row.reason, row.has_evidence = event.reason[:64], event.has_evidence
    if event.evidence_due_by is not None:
        row.evidence_due_by = event.evidence_due_by
    if event.status in CLOSED:
        row.outcome, row.closed_at = OUTCOMES[event.status], now
    return True


def _new_row(provider: str, order_id: str, payment_id: int, event: DisputeEvent) -> Dispute:
    return Dispute(
        provider=provider, provider_dispute_id=event.dispute_id[:128], order_id=order_id,
        payment_id=payment_id, amount=event.amount.amount, currency=event.amount.currency,
        reason=event.reason[:64], status=event.status[:32], event_at=event.event_at,
        funds_withdrawn=0, funds_reinstated=0,
    )  # fmt: skip


def _flag(
    session: Session, order: Order, *, first_seen: bool, status: str, dispute_id: str
) -> None:
    flag = order_flag(order.status, first_seen=first_seen, status=status)
    if flag is OrderFlag.MOVE:
        order.reason, order.stage_deadline = REASON, None
        move_order(session, order, OrderStatus.NEEDS_ATTENTION, dispute=dispute_id)
    elif flag is OrderFlag.NOTE:
        timeline.record(
            session, order.id, "attention",
            detail={"reason": REASON, "dispute": dispute_id, "order_status": order.status},
        )  # fmt: skip


def _detail(note: Notification, event: DisputeEvent, row: Dispute, applied: bool) -> dict[str, Any]:
    due = row.evidence_due_by
    return {
        "event_id": note.event_id, "type": note.raw_type, "dispute": event.dispute_id,
        "status": event.status, "recorded_status": row.status, "applied": applied,
        "amount": str(event.amount), "evidence_due_by": due.isoformat() if due else None,
        "funds_withdrawn": row.funds_withdrawn, "funds_reinstated": row.funds_reinstated,
        "outcome": row.outcome,
    }  # fmt: skip


def open_disputes(session: Session, *, now: datetime, limit: int = 100) -> list[dict[str, Any]]:
    """Open disputes for the Attention page, soonest evidence deadline first (none last), each
    with its order's status and ``overdue`` when the deadline has passed."""
    rows = session.execute(
        select(Dispute, Order.status, Order.external_id)
        .join(Order, Order.id == Dispute.order_id)
        .where(Dispute.outcome.is_(None))
        .order_by(Dispute.evidence_due_by.asc().nulls_last(), Dispute.id)
        .limit(limit)
    )
    return [_open_row(d, status, external_id, now) for d, status, external_id in rows]


def _open_row(d: Dispute, order_status: str, external_id: str, now: datetime) -> dict[str, Any]:
    due = d.evidence_due_by
    return {
        "order_id": d.order_id, "external_id": external_id, "order_status": order_status,
        "provider": d.provider, "dispute_id": d.provider_dispute_id, "amount": d.amount,
        "currency": d.currency, "reason": d.reason, "status": d.status, "evidence_due_by": due,
        "overdue": due is not None and due < now,
    }  # fmt: skip


def count_open(session: Session) -> int:
    """How many disputes are open (no outcome yet)."""
    return int(session.scalar(select(func.count()).where(Dispute.outcome.is_(None))) or 0)
