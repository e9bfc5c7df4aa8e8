"""Shipping-stage tasks: book the parcel, subscribe its waybill to tracking pushes (one
service step each, :mod:`services.shipping`)."""

from __future__ import annotations

from adapters.registry import booking_service, tracking_provider
from services import shipping
from services.task_names import SHIPPING_BOOK, SHIPPING_SUBSCRIBE
from settings import get_settings
from tasks.base import OrderflowTask
from workers.app import app
from workers.ports import ports, shipping_config
from workers.publish import enqueue_followups


@app.task(name=SHIPPING_BOOK, base=OrderflowTask, bind=True, order_id_arg=0)
def book(self: OrderflowTask, order_id: str) -> str:
    """Book the parcel for a PAID order and ship it (``SHIPPING_MODE=book`` only)."""
    if get_settings().shipping_mode != "book":
        return "manual"  # the warehouse registers the waybill itself
    try:
        outcome = shipping.book(order_id, booking_service(), ports(), shipping_config())
    except Exception as exc:
        self.retry_or_fail(exc)
    enqueue_followups(outcome.followups)
    return outcome.result


@app.task(name=SHIPPING_SUBSCRIBE, base=OrderflowTask, bind=True)
def subscribe(self: OrderflowTask, shipment_id: int) -> str:
    """Subscribe the waybill to Kuaidi100 pushes. Polling covers it if this never succeeds."""
    try:
        outcome = shipping.subscribe(shipment_id, tracking_provider(), ports(), shipping_config())
    except Exception as exc:
        self.retry_or_fail(exc)
    return outcome.result
