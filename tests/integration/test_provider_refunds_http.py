"""Refunds made at the provider, from each simulator over real HTTP to PostgreSQL (no Celery).

Each test creates and pays the order's payment through the payment services with the real
adapter, then refunds it in the provider's "dashboard" (the simulator's control endpoint). The
simulator delivers its real, signed notification — twice — to :class:`Shop`, which does what
the webhook route does (verify and parse with the adapter, apply once in one transaction) and
keeps the follow-ups, which the test then runs as the ``payments.lookup_refunds`` task would.
Asserted: the refund on the order's timeline and in the payment's refunded amount, once.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from sqlalchemy import select

from adapters.payments.base import PaymentProvider
from models import Order, OrderEvent, Payment, Refund
from producers.intake import accept_message
from services import payments
from services.followup import Followup
from services.payments import PaymentConfig, provider_refunds
from services.reservation import reserve_order
from services.unit_of_work import unit_of_work
from simulators.alipay import AlipaySimulator
from simulators.harness import Request, Response, SimulatorServer
from simulators.stripe import StripeSimulator
from simulators.wechatpay import WeChatPaySimulator
from tests.conftest import order_message, wait_until
from tests.integration.test_payment_services import ports


def now() -> datetime:
    return datetime.now(UTC)


class Shop:
    """``POST /webhooks/<provider>`` as :mod:`api.payments` does it, follow-ups kept."""

    def __init__(self) -> None:
        self.adapters: dict[str, PaymentProvider] = {}
        self.handled: list[str] = []  # raw types, in the order applied
        self.followups: list[Followup] = []
        self._lock = threading.Lock()
        self.server = SimulatorServer("shop")
        self.server.route("POST", "/webhooks/", self._handle, prefix=True)
        self.server.start()

    def _handle(self, req: Request) -> Response:
        name = req.path.rsplit("/", 1)[-1]
        adapter = self.adapters[name]
        note = adapter.parse_notification(req.headers, req.body)
        with self._lock, unit_of_work() as s:  # one at a time: deliveries arrive concurrently
            followups = payments.apply_notification(s, name, note, now=now())
        with self._lock:
            self.handled.append(note.raw_type)
            self.followups += followups
        reply = adapter.notification_reply(True)
        return Response(reply.status_code, reply.body, {"Content-Type": reply.content_type})

    def run_lookups(self, adapter: PaymentProvider) -> int:
        """What the ``payments.lookup_refunds`` task runs, for every look-up asked so far."""
        with self._lock:
            todo, self.followups = self.followups, []
        lookups = [f for f in todo if f.task == "payments.lookup_refunds"]
        for f in lookups:
            provider_refunds.lookup_refunds(str(f.arg), lambda name: adapter, ports())
        return len(lookups)


@pytest.fixture
def shop() -> Iterator[Shop]:
    s = Shop()
    yield s
    s.server.stop()


def paid(shop: Shop, provider: str, adapter: PaymentProvider, pay: Any) -> tuple[str, str, int]:
    """An order paid at the simulator: (order id, out_trade_no, amount captured)."""
    shop.adapters[provider] = adapter
    oid = reserved_order_with(provider)
    config = PaymentConfig(notify_base_url=shop.server.url)
    assert payments.create(oid, lambda name: adapter, ports(), config).result == "created"
    with unit_of_work() as s:
        payment = s.scalars(select(Payment).where(Payment.order_id == oid)).one()
        out_trade_no, amount = payment.out_trade_no, payment.amount
    pay(out_trade_no)
    wait_until(lambda: status(oid) == "PAID")
    return oid, out_trade_no, amount


def reserved_order_with(provider: str) -> str:
    oid = accept_message(order_message("P", 1, provider=provider), channel="test").order_id
    with unit_of_work() as s:
        assert reserve_order(s, oid, now=now(), payment_window_s=600).status == "RESERVED"
    return oid


def status(oid: str) -> str:
    with unit_of_work() as s:
        return s.get_one(Order, oid).status


def refunded(oid: str) -> tuple[str, int, list[tuple[str, str | None, int]], list[str | None]]:
    """(payment status, refunded amount, refunds (status, actor, amount), the provider's
    timeline rows (to_status))."""
    with unit_of_work() as s:
        payment = s.scalars(select(Payment).where(Payment.order_id == oid)).one()
        rows = s.scalars(select(Refund).where(Refund.order_id == oid).order_by(Refund.id)).all()
        events = s.scalars(
            select(OrderEvent.to_status)
            .where(OrderEvent.order_id == oid, OrderEvent.kind == "refund")
            .where(OrderEvent.actor == "provider")
            .order_by(OrderEvent.id)
        ).all()
        return (
            payment.status,
            payment.refunded_amount,
            [(r.status, r.actor, r.amount) for r in rows],
            list(events),
        )


def test_a_stripe_dashboard_refund_delivered_twice_is_counted_once(catalog, shop):
    from tests.integration.adapters.stripe.support import make_provider

    catalog({"P": 5})
    keys = {"secret_key": "sk_test_" + secrets.token_hex(16),
            "webhook_secret": "whsec_" + secrets.token_hex(16)}  # fmt: skip
    sim = StripeSimulator(keys["secret_key"], keys["webhook_secret"], retry_delays=(0.1, 0.1))
    sim.start()
    try:
        sim.webhook_types = {"payment_intent.succeeded", "refund.created", "charge.refunded"}
        sim.webhook_url = shop.server.url + "/webhooks/stripe"
        adapter = make_provider(sim, keys)
        oid, out_trade_no, amount = paid(shop, "stripe", adapter, sim.pay)
        sim.webhook_copies = 2
        ask = {"out_trade_no": out_trade_no, "amount": amount - 1}
        assert requests.post(f"{sim.url}/_sim/dashboard_refund", json=ask, timeout=5).ok
        wait_until(lambda: len(shop.handled) == 5)  # paid, then 2 x refund.created, charge.refunded
        # charge.refunded names no refund: listed once (its copy is a repeat of the same event)
        assert shop.run_lookups(adapter) == 1
        assert refunded(oid) == (
            "PARTIALLY_REFUNDED",
            amount - 1,
            [("SUCCEEDED", "provider", amount - 1)],
            ["SUCCEEDED"],
        )
    finally:
        sim.stop()


def test_a_stripe_refund_that_arrives_only_as_refund_updated(catalog, shop):
    from tests.integration.adapters.stripe.support import make_provider

    catalog({"P": 5})
    keys = {"secret_key": "sk_test_" + secrets.token_hex(16),
            "webhook_secret": "whsec_" + secrets.token_hex(16)}  # fmt: skip
    sim = StripeSimulator(keys["secret_key"], keys["webhook_secret"], retry_delays=(0.1, 0.1))
    sim.start()
    try:
        sim.webhook_types = {"payment_intent.succeeded", "refund.updated"}
        sim.webhook_url = shop.server.url + "/webhooks/stripe"
        adapter = make_provider(sim, keys)
        oid, out_trade_no, _ = paid(shop, "stripe", adapter, sim.pay)
        refund = sim.dashboard_refund(out_trade_no, 200, status="requires_action")
        sim.settle_refund(refund["id"], "pending")
        wait_until(lambda: len(shop.handled) == 2)
        assert refunded(oid) == ("PAID", 0, [("PENDING", "provider", 200)], ["PENDING"])
        sim.settle_refund(refund["id"], "succeeded")
        wait_until(lambda: len(shop.handled) == 3)
        assert shop.handled == ["payment_intent.succeeded", "refund.updated", "refund.updated"]
        assert shop.run_lookups(adapter) == 0
        assert refunded(oid) == (
            "PARTIALLY_REFUNDED",
            200,
            [("SUCCEEDED", "provider", 200)],
            ["PENDING", "SUCCEEDED"],
        )
    finally:
        sim.stop()


def test_a_wechat_platform_refund_delivered_twice_is_counted_once(catalog, shop):
    from tests.integration.adapters.wechatpay.support import (
        APPID,
        MCHID,
        MERCHANT_SERIAL,
        Keys,
        make_provider,
        rsa_pems,
    )  # fmt: skip

    catalog({"P": 5})
    private, public = rsa_pems()
    keys = Keys(private, public, secrets.token_hex(16).encode("ascii"))
    with WeChatPaySimulator(
        mchid=MCHID, appid=APPID, merchant_serial_no=MERCHANT_SERIAL,
        merchant_public_key_pem=keys.merchant_public_pem, api_v3_key=keys.api_v3_key,
        notify_retry_delays=(0.1, 0.2, 0.4),
    ) as sim:  # fmt: skip
        adapter = make_provider(sim, keys)
        oid, out_trade_no, amount = paid(shop, "wechatpay", adapter, sim.pay)
        sim.set_options(notify_copies=2)
        ask = {"out_trade_no": out_trade_no}  # all of it
        assert requests.post(f"{sim.url}/_sim/refunds/dashboard", json=ask, timeout=5).ok
        wait_until(lambda: len(shop.handled) == 3)
        assert shop.handled.count("REFUND.SUCCESS") == 2
        assert refunded(oid) == ("REFUNDED", amount, [("SUCCEEDED", "provider", amount)],
                                 ["SUCCEEDED"])  # fmt: skip
        assert status(oid) == "NEEDS_ATTENTION"  # paid, not shipped, and all of it given back


def test_an_alipay_console_refund_delivered_twice_is_counted_once(catalog, shop):
    from tests.integration.adapters.alipay.support import APP_ID, make_provider, new_key, public_pem

    catalog({"P": 5})
    app_key = new_key()
    sim = AlipaySimulator(APP_ID, public_pem(app_key), notify_retry_delays=(0.1, 0.2, 0.4))
    sim.start()
    try:
        adapter = make_provider(sim, app_key)
        oid, out_trade_no, _ = paid(shop, "alipay", adapter, sim.pay)
        sim.configure(notify_copies=2)
        ask = {"out_trade_no": out_trade_no, "amount": "0.01"}
        assert requests.post(f"{sim.url}/_sim/dashboard_refund", json=ask, timeout=5).ok
        wait_until(lambda: len(shop.handled) == 3)
        # Alipay's refund_fee is the running total: the refund is asked for by its number (once:
        # the copy is a repeat of the same notify_id).
        assert shop.run_lookups(adapter) == 1
        assert refunded(oid) == ("PARTIALLY_REFUNDED", 1, [("SUCCEEDED", "provider", 1)],
                                 ["SUCCEEDED"])  # fmt: skip
    finally:
        sim.stop()
