"""Shipping-stage tasks: book the parcel, subscribe its waybill to tracking pushes."""

from __future__ import annotations

from adapters.registry import booking_service, tracking_provider
from domain.errors import ProviderRejected
from services import shipping
from services.task_names import SHIPPING_BOOK, SHIPPING_SUBSCRIBE
from services.unit_of_work import unit_of_work
from settings import get_settings
from tasks.base import OrderflowTask, utcnow
from tasks.providers import CircuitOpen, call
from workers.app import app
from workers.publish import enqueue_followups


@app.task(name=SHIPPING_BOOK, base=OrderflowTask, bind=True, order_id_arg=0)
def book(self: OrderflowTask, order_id: str) -> str:
    """Book the parcel for a PAID order (same booking key on every retry) and ship it."""
    s = get_settings()
    if s.shipping_mode != "book":
        return "manual"  # the warehouse registers the waybill itself
    try:
        with unit_of_work() as session:
            plan = shipping.prepare_booking(
                session, order_id, now=utcnow(), redrive_s=s.shipping_redrive_s
            )
        if plan is None:
            return "noop"
        service = booking_service()
        try:
            booked = call(
                "warehouse", "book", order_id, lambda: service.book(plan.request),
                request=plan.request,
            )  # fmt: skip
        except CircuitOpen:
            return "circuit_open"  # the sweeper re-drives it at the stage deadline
        except ProviderRejected as exc:
            with unit_of_work() as session:
                shipping.fail_booking(session, order_id, exc.code or str(exc))
            return "rejected"
        with unit_of_work() as session:
            followups = shipping.ship(
                session, order_id, booked, now=utcnow(), actor="warehouse",
                first_poll_s=get_settings().tracking_first_poll_s,
            )  # fmt: skip
    except Exception as exc:
        self.retry_or_fail(exc)
    enqueue_followups(followups)
    return booked.waybill


@app.task(name=SHIPPING_SUBSCRIBE, base=OrderflowTask, bind=True)
def subscribe(self: OrderflowTask, shipment_id: int) -> str:
    """Subscribe the waybill to Kuaidi100 pushes. Polling covers it if this never succeeds."""
    s = get_settings()
    try:
        with unit_of_work() as session:
            target = shipping.subscription_target(session, shipment_id)
        if target is None:
            return "noop"
        order_id, carrier, waybill, phone = target
        provider = tracking_provider()
        callback = f"{s.public_base_url.rstrip('/')}/webhooks/kuaidi100"
        sent = {"carrier": carrier, "waybill": waybill, "phone": phone, "callback": callback}
        try:
            newly = call(
                "kuaidi100", "subscribe", order_id,
                lambda: provider.subscribe(carrier, waybill, callback, phone), request=sent,
            )  # fmt: skip
        except CircuitOpen:
            return "circuit_open"
        with unit_of_work() as session:
            shipping.mark_subscribed(session, shipment_id, newly=newly)
    except Exception as exc:
        self.retry_or_fail(exc)
    return "subscribed" if newly else "already"
