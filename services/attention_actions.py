"""Operator actions on an order in NEEDS_ATTENTION (the console's order page).

:func:`act` locks the order and refuses (``ConflictError``, nothing written) unless it is in
NEEDS_ATTENTION; then the service that owns the use case decides, and the console's timeline
row (:func:`services.console.record_action`) and an audit row naming the person are written in
the caller's transaction. What must run next comes back as :class:`Followup` tasks, for the
caller to publish after the commit.

1. **cancel** — :func:`services.payments.cancel_order`, the cancel of the API and the CLI: the
   stock is released once (ACTIVE reservations -> RELEASED), an open trade is closed and what
   was captured is refunded. An order with a booked parcel cancels only what has not shipped
   (unbooked parcels, lines no warehouse took), refunds exactly their share and follows its
   booked parcels (:func:`services.payments.close.cancel_unshipped`); it is not CANCELLED.
2. **refund** — :func:`services.payments.refund_for_order` with a new refund number: all that
   was captured and is not refunded or requested yet. The order stays in NEEDS_ATTENTION: a
   refund is a money decision, not a resolution. Refused when nothing was captured or nothing
   is left to refund.
3. **retry** — runs again the step the order's reason names (:func:`retry_step`):

   * ``booking_rejected:…`` — NEEDS_ATTENTION -> PAID (PARTIALLY_SHIPPED if a parcel is
     booked) with a new stage deadline, and ``shipping.book`` published (what the sweeper
     sends for an overdue PAID order: the same booking key, so at most one parcel). A second
     refusal flags the order again.
   * ``reallocation_failed:…`` — first the lines no warehouse took are reserved again
     (:func:`services.parcel_planning.rereserve_unplaced`: any warehouse with free stock now, same
     allocation policy, ledger rows and new parcels); then as ``booking_rejected`` (the
     parcels already planned keep their keys). With still no stock the retry is refused
     naming the lines (resolve or cancel instead) and nothing changes.
   * ``tracking_exception:…`` — the shipment is made due now, so the next tracking tick polls
     it (never within the carrier's minimum interval, the beat's rule); the scan that shows the
     parcel moving again moves the order on by itself (:func:`domain.tracking.order_follows`).
   * anything else is refused with what to do instead (:data:`RETRY_REFUSALS`): a refused
     payment cannot be created again (the table has no way back to RESERVED), an amount
     mismatch is no failed step, a returned parcel is not cleared by a scan, ended tracking
     cannot be polled.

4. **resolve** (a note of 1-500 characters) — the person says the problem is handled. The
   transition table lets NEEDS_ATTENTION move on to PAID, SHIPPED, IN_TRANSIT, DELIVERED or
   CANCELLED, and the attention list *is* that status, so a resolution is a transition, never a
   timeline note alone: the order goes back on the pipeline where it was flagged
   (:func:`resolve_target`), with its reason cleared and the note on the transition:

   * flagged in PAID (booking refused) -> PAID with no stage deadline: the booking is not sent
     again (that is *retry*); the warehouse registers the waybill
     (``POST /v1/orders/{id}/shipments``), as in manual shipping;
   * flagged before payment with the payment captured (amount mismatch) -> PAID: the person
     accepts the amount taken, and the booking starts as after any payment (``shipping.book``,
     ship-by deadline);
   * flagged in SHIPPED or IN_TRANSIT (or PARTIALLY_DELIVERED) by a tracking exception -> back
     there; tracking goes on; flagged in PARTIALLY_SHIPPED -> back there, and ``shipping.book``
     books the parcels left (ship-by deadline);
   * ``reallocation_failed`` -> the lines no warehouse took are dropped *and their share
     refunded* (:func:`services.payments.close.refund_unplaced`, the cancel's refund number
     for them), then the order goes where its parcels say (PAID / PARTIALLY_SHIPPED, and
     ``shipping.book`` books the parcels left, ship-by deadline; SHIPPED or later if all are
     booked). Refused when no parcel is left to ship (cancel instead). A resolve never moves
     on an order with lines it neither ships nor refunds;
   * refused: no payment captured (cancel instead), a returned parcel (its later "delivered" is
     to the sender and would complete the order), tracking ended (nothing would move it on).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.allocation import DEFAULT_POLICY, Policy
from domain.errors import ConflictError, ValidationError
from domain.orders import OrderStatus
from domain.parcels import climb, order_progress
from domain.payments import CAPTURED
from domain.tracking import is_final
from models import Order, OrderEvent, Payment, Shipment
from models.logistics import OUTBOUND_ONLY
from services import console, operators, parcel_planning, parcels, payments
from services.followup import Followup
from services.order_state import lock_order, move_order
from services.payments.close import refund_unplaced
from services.task_names import PAYMENTS_CLOSE, SHIPPING_BOOK, TRACKING_POLL

ACTIONS = ("cancel", "refund", "retry", "resolve")
NOTE_MAX = 500
CANCEL_REASON = "cancelled by an operator (console)"

#: Reason prefixes (``orders.reason``) and why *retry* refuses them.
RETRY_REFUSALS: dict[str, str] = {
    "payment_rejected": "the provider refused the payment and the order cannot go back to "
    "RESERVED to create another: cancel it (its stock is released)",
    "amount_mismatch": "no step failed: the payment was taken with another amount; resolve it "
    "(accept the amount) or cancel it (refund)",
    "tracking_returned": "the parcel is on its way back to the sender and no scan clears that: "
    "cancel it (refund) or ship again",
    "tracking_expired": "the carrier stopped tracking this parcel: there is nothing to poll",
    "tracking_ended": "the carrier finished tracking this parcel: there is nothing to poll",
}
S = OrderStatus
#: The reason of an order whose refused parcel's lines found no warehouse.
REALLOCATION_FAILED = "reallocation_failed"


@dataclass(frozen=True, slots=True)
class Done:
    """What an action did: ``summary`` for the person, ``followups`` to publish after commit."""

    summary: str
    followups: list[Followup] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


def act(
    session: Session,
    order_id: str,
    action: str,
    *,
    now: datetime,
    actor: str,
    address: str,
    note: str = "",
    redrive_s: int = 60,
    policy: Policy = DEFAULT_POLICY,
) -> Done:
    """Run ``action`` on a NEEDS_ATTENTION order and write its timeline and audit rows.

    Raises ``NotFound`` (no such order), ``ValidationError`` (unknown action, bad note) or
    ``ConflictError`` (the order's state does not allow it); the caller's transaction then
    rolls back, so a refusal changes nothing. ``redrive_s``: the stage deadline a retried
    booking gets (``SHIPPING_REDRIVE_S``); ``policy``: where a retry reserves lines again
    (``ALLOCATION_STRATEGY``, ``WAREHOUSES``).
    """
    if action not in ACTIONS:
        raise ValidationError("action", f"must be one of {', '.join(ACTIONS)}")
    note = _checked_note(note) if action == "resolve" else note.strip()[:NOTE_MAX]
    order = lock_order(session, order_id)
    if order.status != S.NEEDS_ATTENTION:
        raise ConflictError(
            f"order {order_id} is {order.status}: {action} is for orders in NEEDS_ATTENTION",
            field="status",
        )
    flagged = {"reason": order.reason or ""}
    done = _run(session, order, action, now=now, actor=actor, note=note, redrive_s=redrive_s,
                policy=policy)  # fmt: skip
    detail = {**flagged, **done.detail, **({"note": note} if note else {})}
    console.record_action(session, order_id, action, actor=actor, detail=detail)
    operators.audit(
        session, actor=actor, action=f"order_{action}", target=f"order:{order_id}",
        address=address, detail=detail,
    )  # fmt: skip
    return done


def _checked_note(note: str) -> str:
    note = note.strip()
    if not note:
        raise ValidationError("note", "say how it was handled (required)")
    if len(note) > NOTE_MAX:
        raise ValidationError("note", f"at most {NOTE_MAX} characters")
    return note


def _run(
    session: Session,
    order: Order,
    action: str,
    *,
    now: datetime,
    actor: str,
    note: str,
    redrive_s: int,
    policy: Policy,
) -> Done:
    if action == "cancel":
        return _cancel(session, order, now=now, actor=actor, note=note)
    if action == "refund":
        return _refund(session, order, now=now, actor=actor, note=note)
    if action == "retry":
        return _retry(session, order, now=now, actor=actor, redrive_s=redrive_s, policy=policy)
    if (order.reason or "").startswith(REALLOCATION_FAILED):
        return _resolve_unplaced(session, order, now=now, actor=actor, note=note)
    return _resolve(session, order, now=now, actor=actor, note=note)


# --- cancel and refund: the payment services' own use cases ------------------------------------


def _cancel(session: Session, order: Order, *, now: datetime, actor: str, note: str) -> Done:
    reason = f"{CANCEL_REASON}: {note}" if note else CANCEL_REASON
    followups = payments.cancel_order(session, order.id, now=now, actor=actor, reason=reason)
    if order.status != S.CANCELLED:  # booked parcels: only what had not shipped
        then = " (refunding its share)" if followups else ""
        now_at = ("stays flagged" if order.status == S.NEEDS_ATTENTION
                  else f"follows its booked parcels ({order.status})")  # fmt: skip
        return Done(f"order {order.id}: what had not shipped is cancelled{then}; the order "
                    f"{now_at}", followups)  # fmt: skip
    refunding = any(f.task != PAYMENTS_CLOSE for f in followups)
    then = " (refunding what was paid)" if refunding else " (closing the payment)"
    return Done(f"order {order.id} cancelled" + (then if followups else ""), followups)


def _refund(session: Session, order: Order, *, now: datetime, actor: str, note: str) -> Done:
    refund_no = f"console-{uuid.uuid4().hex[:24]}"
    try:
        followup = payments.refund_for_order(
            session, order.id, amount=None, refund_no=refund_no,
            reason=note or "refunded by an operator (console)", actor=actor, now=now,
        )  # fmt: skip
    except ValidationError as exc:  # no payment, none captured, nothing left
        raise ConflictError(f"order {order.id}: nothing to refund ({exc})", field="status") from exc
    return Done(f"order {order.id}: full refund requested ({refund_no})",
                [followup] if followup else [], {"refund_no": refund_no})  # fmt: skip


# --- retry ---------------------------------------------------------------------------------


def retry_step(reason: str) -> str:
    """The task that re-runs the step ``reason`` names, or ``ConflictError`` saying why not."""
    kind = reason.split(":", 1)[0].strip()
    if kind in ("booking_rejected", REALLOCATION_FAILED):
        return SHIPPING_BOOK
    if kind == "tracking_exception":
        return TRACKING_POLL
    why = RETRY_REFUSALS.get(kind, f"no step to retry for the reason {reason!r}")
    raise ConflictError(f"cannot retry: {why}", field="status")


def _retry(
    session: Session, order: Order, *, now: datetime, actor: str, redrive_s: int, policy: Policy
) -> Done:
    step = retry_step(order.reason or "")
    if step == TRACKING_POLL:
        shipment = _tracked_shipment(session, order)
        shipment.next_poll_at = now
        return Done(f"order {order.id}: tracking of {shipment.waybill} polled at the next tick",
                    detail={"step": step, "shipment_id": shipment.id})  # fmt: skip
    placed = ""
    detail: dict[str, Any] = {"step": step}
    if (order.reason or "").startswith(REALLOCATION_FAILED):
        created = parcel_planning.rereserve_unplaced(session, order, now=now, policy=policy)
        where = ", ".join(f"{parcels.named(parcels.parcel_lines(session, p.id))} at "
                          f"{p.warehouse}" for p in created)  # fmt: skip
        placed, detail["parcels"] = f"{where} reserved again; ", [p.id for p in created]
    target = _booking_status(session, order.id)
    order.reason = None
    order.stage_deadline = now + timedelta(seconds=redrive_s)
    move_order(session, order, target, actor=actor, retry=step)
    return Done(f"order {order.id}: {placed}{step} sent again", [Followup(step, order.id)],
                detail)  # fmt: skip


def _booking_status(session: Session, order_id: str) -> OrderStatus:
    """Where an order whose booking goes on stands: PAID, or PARTIALLY_SHIPPED once a parcel
    is booked (its live parcels say; PAID with none planned yet)."""
    live = [parcels.parcel_of(p) for p in parcels.live_parcels(session, order_id)]
    return S.PARTIALLY_SHIPPED if any(p.booked for p in live) else S.PAID


def _tracked_shipment(session: Session, order: Order) -> Shipment:
    """The parcel a ``tracking_exception`` is about: the one its reason names (``parcel <id>
    (<warehouse>)``, an order of several parcels), else the order's only tracked one."""
    named = re.search(r"\bparcel (\d+) \(", order.reason or "")
    stmt = select(Shipment).where(
        Shipment.order_id == order.id, Shipment.cancelled_at.is_(None), OUTBOUND_ONLY
    )
    if named:
        stmt = stmt.where(Shipment.id == int(named.group(1)))
    found = [
        s
        for s in session.scalars(stmt.order_by(Shipment.id).with_for_update())
        if s.waybill is not None and not is_final(s.status)
    ]
    if not found:
        raise ConflictError(f"cannot retry: order {order.id} has no tracked parcel", field="status")
    shipment = next((s for s in found if s.status == "EXCEPTION"), found[0])
    if shipment.tracking_ended_at is not None:  # services.tracking.finish: never polled again
        raise ConflictError(f"cannot retry: {RETRY_REFUSALS['tracking_ended']}", field="status")
    return shipment


def _still_tracked(session: Session, order_id: str) -> bool:
    """Tracking can still move the order on: some live parcel is not final, and none that is
    not final has had its tracking ended (nothing would move that one, so the order)."""
    rows = session.execute(
        select(Shipment.status, Shipment.tracking_ended_at).where(
            Shipment.order_id == order_id, Shipment.cancelled_at.is_(None), OUTBOUND_ONLY
        )
    ).all()
    open_ = [ended for status, ended in rows if not is_final(status)]
    return bool(open_) and all(ended is None for ended in open_)


# --- resolve -------------------------------------------------------------------------------


def resolve_target(
    flagged_from: str | None, reason: str, *, captured: bool, tracked: bool
) -> OrderStatus:
    """Where a resolved order goes back to (see the module docstring), or ``ConflictError``.

    ``flagged_from``: the status the order left for NEEDS_ATTENTION (its timeline);
    ``captured``: its payment was taken; ``tracked``: its parcel is still being tracked.
    """
    if reason.startswith("tracking_returned"):
        raise ConflictError(f"cannot resolve: {RETRY_REFUSALS['tracking_returned']}",
                            field="status")  # fmt: skip
    if flagged_from in (S.PARTIALLY_SHIPPED, S.SHIPPED, S.IN_TRANSIT, S.PARTIALLY_DELIVERED):
        if not tracked:
            raise ConflictError("cannot resolve: tracking has ended and nothing would move the "
                                "order on from there; cancel it", field="status")  # fmt: skip
        return S(flagged_from)
    if flagged_from == S.PAID or (flagged_from in (S.RESERVED, S.AWAITING_PAYMENT) and captured):
        return S.PAID
    if flagged_from in (S.RESERVED, S.AWAITING_PAYMENT):
        raise ConflictError("cannot resolve: no payment was captured and the order cannot go "
                            "back to wait for one; cancel it", field="status")  # fmt: skip
    raise ConflictError(f"cannot resolve: the timeline does not say where the order was "
                        f"flagged (from {flagged_from!r})", field="status")  # fmt: skip


def _resolve(session: Session, order: Order, *, now: datetime, actor: str, note: str) -> Done:
    flagged_from = _flagged_from(session, order.id)
    payment = session.scalar(select(Payment.status).where(Payment.order_id == order.id))
    target = resolve_target(
        flagged_from, order.reason or "", captured=payment in CAPTURED,
        tracked=_still_tracked(session, order.id),
    )  # fmt: skip
    accepted = target == S.PAID and flagged_from != S.PAID  # the payment is accepted: book
    # A partly booked order goes on booking its other parcels (same keys).
    accepted = accepted or target == S.PARTIALLY_SHIPPED
    order.reason = None
    order.stage_deadline = now + timedelta(seconds=payments.SHIP_BY_S) if accepted else None
    move_order(session, order, target, actor=actor, resolved=note)
    followups = [Followup(SHIPPING_BOOK, order.id)] if accepted else []
    return Done(f"order {order.id} resolved: back to {target}", followups,
                {"to": str(target), "from": flagged_from})  # fmt: skip


def _resolve_unplaced(
    session: Session, order: Order, *, now: datetime, actor: str, note: str
) -> Done:
    """Resolve ``reallocation_failed`` (module docstring): refund the unplaced lines' share,
    then follow the parcels left, booking those not booked yet."""
    live = [parcels.parcel_of(p) for p in parcels.live_parcels(session, order.id)]
    if not live:
        raise ConflictError("cannot resolve: no parcel is left to ship; cancel the order "
                            "(its payment is refunded)", field="status")  # fmt: skip
    refunded, followups = refund_unplaced(session, order, now=now, actor=actor, reason=note)
    booking = not all(p.booked for p in live)
    order.reason = None
    order.stage_deadline = now + timedelta(seconds=payments.SHIP_BY_S) if booking else None
    target = _booking_status(session, order.id) if booking else order_progress(live)
    for step in climb(order.status, target):
        move_order(session, order, step, actor=actor, resolved=note)
    if booking:
        followups.append(Followup(SHIPPING_BOOK, order.id))
    amount = sum(a for _, a in refunded)
    return Done(f"order {order.id} resolved: back to {order.status}, the lines no warehouse "
                f"took refunded ({amount})", followups,
                {"to": str(order.status), "refunded": refunded})  # fmt: skip


def _flagged_from(session: Session, order_id: str) -> str | None:
    """The status the order was in when it was last moved to NEEDS_ATTENTION."""
    return session.scalar(
        select(OrderEvent.from_status)
        .where(
            OrderEvent.order_id == order_id,
            OrderEvent.kind == "transition",
            OrderEvent.to_status == S.NEEDS_ATTENTION,
        )
        .order_by(OrderEvent.id.desc())
        .limit(1)
    )
