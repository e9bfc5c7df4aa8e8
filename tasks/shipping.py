"""Shipping-stage tasks: book the parcel and subscribe its waybill to tracking pushes in one
task (:mod:`services.shipping`), and subscribe on its own for hand-offs and redeliveries.

Booking and subscribing need no wait between them, so ``shipping.book`` runs the subscription
right after the booking committed instead of publishing it: one Celery hop less per order. A
subscription that fails there is handed to ``shipping.subscribe`` (its own retries; polling
covers the parcel meanwhile); a waybill registered by the warehouse (API, CLI) still publishes
``shipping.subscribe``.
"""

from __future__ import annotations

from adapters.registry import booking_service, tracking_provider
from services import shipping
from services.followup import Followup
from services.task_names import SHIPPING_BOOK, SHIPPING_SUBSCRIBE
from settings import get_settings
from tasks.base import OrderflowTask
from workers.app import app
from workers.ports import ports, shipping_config
from workers.publish import enqueue_followups


@app.task(name=SHIPPING_BOOK, base=OrderflowTask, bind=True, order_id_arg=0)
def book(self: OrderflowTask, order_id: str) -> str:
    """Book the parcels of a PAID (or PARTIALLY_SHIPPED) order, one per warehouse, in turn;
    ship each and subscribe its waybill (``SHIPPING_MODE=book`` only)."""
    if get_settings().shipping_mode != "book":
        return "manual"  # the warehouse registers the waybill itself
    try:
        outcome = shipping.book(order_id, booking_service(), ports(), shipping_config())
    except Exception as exc:
        self.retry_or_fail(exc)
    later = [f for f in outcome.followups if not _subscribe_here(self, f, order_id)]
    enqueue_followups(later)
    return outcome.result


def _subscribe_here(task: OrderflowTask, followup: Followup, order_id: str) -> bool:
    """Run a subscription follow-up in this task (the booking has committed); True if it was
    dealt with here, False if it is not one (publish it). A failed subscription is handed to
    ``shipping.subscribe`` (:meth:`OrderflowTask.hand_off`). Never raises: the booking is done
    and must not be retried for a subscription; polling covers the parcel meanwhile."""
    if followup.task != SHIPPING_SUBSCRIBE:
        return False
    try:
        shipping.subscribe(int(followup.arg), tracking_provider(), ports(), shipping_config())
    except Exception as exc:
        task.hand_off(exc, SHIPPING_SUBSCRIBE, int(followup.arg), order_id=order_id)
    return True


@app.task(name=SHIPPING_SUBSCRIBE, base=OrderflowTask, bind=True)
def subscribe(self: OrderflowTask, shipment_id: int) -> str:
    """Subscribe the waybill to Kuaidi100 pushes. Polling covers it if this never succeeds.
    ``shipping.book`` hands its failed subscriptions here; API and CLI registrations publish it."""
    try:
        outcome = shipping.subscribe(shipment_id, tracking_provider(), ports(), shipping_config())
    except Exception as exc:
        self.retry_or_fail(exc)
    return outcome.result
