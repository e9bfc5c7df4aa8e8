"""A refund made in Stripe's dashboard, end to end: the simulator sends today's
``charge.refunded`` (no embedded refund list, no refund of ours named) twice over real HTTP to
the running API; the webhook enqueues ``payments.lookup_refunds``, which a real worker runs
against the simulator's ``GET /v1/refunds``. Judged in the database: one refund with actor
``provider``, the payment's refunded amount and the order's timeline."""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import select

from models import OrderEvent, Payment, Refund
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.e2e.test_payments import out_trade_no, wait_status

pytestmark = pytest.mark.e2e


def _refunds(order_id: str) -> tuple[int, list[tuple[str, str | None, int]], int]:
    """(payment's refunded amount, refunds (status, actor, amount), provider timeline rows)."""
    with unit_of_work() as s:
        payment = s.scalars(select(Payment).where(Payment.order_id == order_id)).one()
        rows = s.scalars(select(Refund).where(Refund.order_id == order_id)).all()
        events = s.scalars(
            select(OrderEvent.id).where(
                OrderEvent.order_id == order_id,
                OrderEvent.kind == "refund",
                OrderEvent.actor == "provider",
            )
        ).all()
        return payment.refunded_amount, [(r.status, r.actor, r.amount) for r in rows], len(events)


def test_a_stripe_dashboard_refund_found_by_the_lookup_task_is_recorded_once(
    start_pipeline, catalog
):
    catalog({"PR": 5}, price=2500)
    p = start_pipeline()
    oid = p.post_order(order_message("PR", 1, provider="stripe"))
    wait_status(p, oid, "AWAITING_PAYMENT")
    p.stack.pay("stripe", out_trade_no(oid))
    wait_status(p, oid, "PAID")
    stripe = p.stack.stripe
    stripe.webhook_types = {"charge.refunded"}  # only the event that names no refund
    stripe.webhook_copies = 2
    sent = len(stripe.notifier.deliveries)
    ask = {"out_trade_no": out_trade_no(oid), "amount": 700}
    answer = requests.post(f"{stripe.url}/_sim/dashboard_refund", json=ask, timeout=10)
    assert answer.status_code == 200, answer.text
    wait_until(lambda: len([d for d in stripe.notifier.deliveries[sent:] if d[1] == 200]) == 2, 60)
    wait_until(
        lambda: _refunds(oid)[1] == [("SUCCEEDED", "provider", 700)], 60, show=lambda: _refunds(oid)
    )
    assert _refunds(oid) == (700, [("SUCCEEDED", "provider", 700)], 1)
    assert p.get_order(oid)["payment"]["status"] == "PARTIALLY_REFUNDED"
