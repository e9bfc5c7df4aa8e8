"""When Kuaidi100 has finished with a parcel: polling stops for good, whatever its status.

Until a parcel is DELIVERED or EXPIRED it was polled, so one left in EXCEPTION (a problem
parcel, a refusal, a return) was queried hourly forever. Kuaidi100 says itself when it is done
(provider-protocols.md §4; Kuaidi100's push documentation: ``status`` "polling 监控中,
shutdown 结束, abort 中止, updateall 重新推送 … 当快递单为已签收时 status=shutdown, 当 message
为 3天查询无记录 或 60天无变化时 status=abort"). The rules, each with its reason:

1. **A ``shutdown`` push ends tracking.** Kuaidi100 ended the subscription because the parcel
   was signed for (by the recipient, or by the sender for a return): it will push nothing more
   and the trace will not change. The push's ``lastResult`` is applied first, as any push.
2. **An ``abort`` push ends tracking too; it is not re-subscribed.** Kuaidi100 stopped
   because it found no trace within 3 days (3天查询无记录: wrong carrier or waybill, or a parcel
   never handed over) or nothing changed for 60 days (60天无变化). Subscribing again would
   only repeat that verdict days later (and counts against Kuaidi100's limit of 4 subscriptions
   per number a month); our own queries would find the same nothing, hourly. What is needed is
   a person (fix the waybill, ask the carrier), and the adapter already reports both cases as
   EXCEPTION / EXPIRED, which flag the order for one.
3. **A result with ``ischeck=1`` (``signed``) ends tracking**, from a query or a push: someone
   signed for the parcel, nothing moves after that. (Kuaidi100 says the push's ``ischeck`` is
   secondary to ``state``; a signed parcel's ``state`` is 3 or 4 anyway, and its push is a
   ``shutdown``.)
4. **A result in state 4 (退签, returned and signed for by the sender) ends tracking**: the
   return is complete. Not 6 (being returned), 14 (refused: the return trip follows), 2 (疑难,
   may resolve) or 13 (customs): the carrier is still moving those.
5. ``polling`` and ``updateall`` pushes, and any other result, end nothing.

What ending does (:func:`end_tracking`, in the transaction that applied the result):
``tracking_ended_at`` is set (once: a duplicate or late signal changes nothing) and
``next_poll_at`` cleared; the scheduler never claims the shipment again, and a poll already in
flight schedules no next one (:mod:`.schedule`). Results that arrive afterwards still add their
unseen events as facts but move neither the shipment nor its order (:mod:`.results`): the
carrier said it was finished, so what remains is for a person. An order already in
NEEDS_ATTENTION keeps its reason; an order whose parcel ended without a delivery scan (e.g. a
shutdown or abort while IN_TRANSIT) is flagged ``tracking_ended: <why>`` so it does not wait
silently; a delivered parcel's order is left alone.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from adapters.logistics.base import PushUpdate, TrackingResult
from domain.orders import OrderStatus, can_transition
from domain.tracking import ENDED_REASON, ShipmentStatus
from models import Order, Shipment
from services import timeline
from services.order_state import move_order
from services.tracking.results import ACTOR, apply_locking

#: Push statuses that end the subscription (rules 1 and 2).
ENDING_PUSHES = frozenset({"shutdown", "abort"})
#: ``state`` codes after which the carrier moves the parcel no more (rule 4).
ENDING_STATES = frozenset({"4"})


def end_reason(result: TrackingResult | None, push_status: str = "", message: str = "") -> str:
    """Why Kuaidi100 is finished with the parcel, or "" while it is still tracking it (the
    rules in the module docstring, in order). Pure."""
    if push_status in ENDING_PUSHES:
        return f"kuaidi100 {push_status}" + (f" ({message})" if message else "")
    if result is None:
        return ""
    if result.signed:
        return "signed for (ischeck=1)"
    if result.raw_state in ENDING_STATES:
        return f"returned and signed for by the sender (state {result.raw_state}, 退签)"
    return ""


def ended_flag(order_status: str, shipment_status: str, why: str) -> str | None:
    """The reason to flag the order with when its parcel's tracking ended, or None: only a
    parcel that ended without a delivery scan, and only an order that may still go to
    NEEDS_ATTENTION (one already there keeps its reason). Pure."""
    if shipment_status == ShipmentStatus.DELIVERED or order_status == OrderStatus.NEEDS_ATTENTION:
        return None
    if not can_transition(OrderStatus(order_status), OrderStatus.NEEDS_ATTENTION):
        return None
    return f"{ENDED_REASON}: {why}; last status {shipment_status}, no delivery scan"


def apply_push(session: Session, shipment_id: int, update: PushUpdate, *, now: datetime) -> None:
    """Apply a verified push to a shipment: its ``lastResult`` as
    :func:`~services.tracking.results.apply_result` does, then end tracking if the push says
    so. Locks the order, then the shipment. ``update.result`` must not be None (it names the
    shipment)."""
    if update.result is None:
        raise ValueError("a push without lastResult names no shipment")
    shipment = apply_locking(session, shipment_id, update.result, now=now, source="push")
    why = end_reason(update.result, update.push_status, update.message)
    if why:
        end_tracking(session, shipment, why, now=now, source="push")


def end_tracking(
    session: Session, shipment: Shipment, why: str, *, now: datetime, source: str
) -> bool:
    """Mark the (locked) shipment finished: never polled again. The caller holds the order's
    lock too (:func:`~services.tracking.results.apply_locking` took both). Idempotent: False,
    and nothing written, if it had ended already."""
    if shipment.tracking_ended_at is not None:
        return False
    shipment.tracking_ended_at = now
    shipment.next_poll_at = None
    order = session.get(Order, shipment.order_id)  # locked by apply_locking: no query
    assert order is not None
    timeline.record(
        session, order.id, "tracking",
        detail={"shipment_id": shipment.id, "source": source, "tracking_ended": why,
                "status": shipment.status},
        actor=ACTOR,
    )  # fmt: skip
    flag = ended_flag(order.status, shipment.status, why)
    if flag is not None:
        order.reason = flag[:200]
        move_order(session, order, OrderStatus.NEEDS_ATTENTION, actor=ACTOR, reason=flag,
                   source=source, waybill=shipment.waybill)  # fmt: skip
    return True
