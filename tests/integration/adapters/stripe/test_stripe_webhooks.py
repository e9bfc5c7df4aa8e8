"""The Stripe adapter against the Stripe simulator, over real HTTP on 127.0.0.1: webhooks
(payments, failures, cancellations, refunds; duplicates, reordering, stale signatures) and
the Stripe-Signature check against forgeries.

Each test gets a fresh simulator and a merchant endpoint that runs the adapter's
``parse_notification``, with secrets generated at test time. Assertions are on
outcomes: the simulator's ledger, the values the adapter returns, the errors it classifies.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from adapters.payments.base import (
    ClosePayment,
    NotificationKind,
    PaymentRef,
    PaymentState,
    SignatureInvalid,
)
from adapters.payments.stripe import StripeConfig, StripeProvider
from domain.money import Money
from simulators.stripe import StripeSimulator
from tests.conftest import wait_until
from tests.integration.adapters.stripe.support import (
    Merchant,
    create_request,
    paid_payment,
    refund_request,
)


def test_payment_webhook_is_verified_and_parsed(
    provider: StripeProvider, sim: StripeSimulator, merchant: Merchant
) -> None:
    req = create_request(amount=Money(2500, "EUR"))
    created = provider.create(req)
    sim.pay(created.provider_ref or "")
    wait_until(lambda: bool(merchant.of_type("payment_intent.succeeded")))
    [note] = merchant.of_type("payment_intent.succeeded")
    assert note.kind is NotificationKind.PAYMENT and note.event_id.startswith("evt_")
    assert note.out_trade_no == req.out_trade_no and note.status is not None
    assert (note.status.state, note.status.amount) == (PaymentState.PAID, Money(2500, "EUR"))
    assert note.status.provider_ref == created.provider_ref and note.status.paid_at is not None
    created_event = merchant.of_type("payment_intent.created")
    assert created_event and created_event[0].kind is NotificationKind.OTHER
    assert merchant.refused == []


def test_failed_and_canceled_webhooks(
    provider: StripeProvider, sim: StripeSimulator, merchant: Merchant
) -> None:
    req = create_request()
    ref = PaymentRef(req.out_trade_no, provider.create(req).provider_ref)
    sim.fail_payment(req.out_trade_no)
    provider.close(ClosePayment(ref, "close-1"))
    wait_until(lambda: bool(merchant.of_type("payment_intent.canceled")))
    [failed] = merchant.of_type("payment_intent.payment_failed")
    assert failed.kind is NotificationKind.PAYMENT and failed.status is not None
    assert failed.status.state is PaymentState.PENDING
    [canceled] = merchant.of_type("payment_intent.canceled")
    assert canceled.status is not None and canceled.status.state is PaymentState.CLOSED


def test_refund_webhook_carries_refund_no(
    provider: StripeProvider, sim: StripeSimulator, merchant: Merchant
) -> None:
    """An account on an API version before 2022-11-15: ``charge.refunded`` embeds the refunds
    (today's shapes: test_stripe_refund_events.py)."""
    sim.api_version = "2022-08-01"
    ref, req = paid_payment(provider, sim, 1000)
    provider.refund(refund_request(ref, "R1", 400))
    provider.refund(refund_request(ref, "R2", 600))
    wait_until(lambda: len(merchant.of_type("charge.refunded")) == 2)
    by_no = {n.refund.refund_no: n for n in merchant.of_type("charge.refunded") if n.refund}
    assert by_no["R1"].refund is not None and by_no["R1"].refund.amount == Money(400, "USD")
    assert (
        by_no["R1"].kind is NotificationKind.REFUND and by_no["R1"].out_trade_no == req.out_trade_no
    )
    assert by_no["R1"].status is None  # partial
    assert by_no["R2"].status is not None and by_no["R2"].status.state is PaymentState.REFUNDED


def test_duplicate_and_out_of_order_deliveries(
    provider: StripeProvider, sim: StripeSimulator, merchant: Merchant
) -> None:
    sim.webhook_types = {"payment_intent.succeeded", "charge.refunded"}
    sim.webhook_copies = 2
    sim.hold_webhooks()
    ref, _ = paid_payment(provider, sim, 1000)
    provider.refund(refund_request(ref, "R1", 1000))
    assert sim.release_webhooks(order="reverse") == 2
    wait_until(lambda: len(merchant.accepted) == 4)
    types = [n.raw_type for n in merchant.accepted]
    assert types[:2] == ["charge.refunded", "charge.refunded"]  # newest first
    assert len({n.event_id for n in merchant.accepted}) == 2  # duplicates share the event id


def test_stale_signed_webhook_is_refused_and_retried(
    provider: StripeProvider, sim: StripeSimulator, merchant: Merchant
) -> None:
    sim.webhook_stale_by_s = 301
    sim.webhook_types = {"payment_intent.succeeded"}
    paid_payment(provider, sim)
    wait_until(lambda: len(sim.notifier.deliveries) == 3)  # first try + 2 retries, all refused
    assert merchant.accepted == [] and len(merchant.refused) == 3
    assert {status for _, status, _ in sim.notifier.deliveries} == {400}


@pytest.fixture
def signed_event(provider: StripeProvider, sim: StripeSimulator) -> tuple[bytes, int]:
    """A real ``payment_intent.succeeded`` body from the simulator and a current timestamp."""
    paid_payment(provider, sim)
    [event] = [e for e in sim.ledger()["events"] if e["type"] == "payment_intent.succeeded"]
    return json.dumps(event, separators=(",", ":")).encode(), int(time.time())


def test_signature_accepts_any_matching_v1(
    provider: StripeProvider, sim: StripeSimulator, signed_event: tuple[bytes, int]
) -> None:
    body, t = signed_event
    good = sim.sign(body, t).split("v1=")[1]
    header = f"t={t},v1={'0' * 64},v1={good},v0=abc"
    note = provider.parse_notification({"STRIPE-SIGNATURE": header}, body)
    assert note.kind is NotificationKind.PAYMENT


def stripe_sign(secret: str, body: bytes, t: int) -> str:
    """Stripe's scheme, written out here independently of adapter and simulator."""
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def _forgeries(secret: str, body: bytes, t: int) -> dict[str, tuple[dict[str, str], bytes]]:
    good = stripe_sign(secret, body, t)
    tampered = body.replace(b'"amount_received":1000', b'"amount_received":1')
    assert tampered != body
    return {
        "wrong secret": ({"Stripe-Signature": stripe_sign("whsec_other", body, t)}, body),
        "tampered body": ({"Stripe-Signature": good}, tampered),
        "301 s old": ({"Stripe-Signature": stripe_sign(secret, body, t - 301)}, body),
        "301 s ahead": ({"Stripe-Signature": stripe_sign(secret, body, t + 301)}, body),
        "missing header": ({}, body),
        "empty header": ({"Stripe-Signature": ""}, body),
        "no v1": ({"Stripe-Signature": good.replace("v1=", "v0=")}, body),
        "bad t": ({"Stripe-Signature": good.replace(f"t={t}", "t=abc")}, body),
        "garbage": ({"Stripe-Signature": "garbage"}, body),
    }


def test_forged_webhooks_are_refused(
    provider: StripeProvider, keys: dict[str, str], signed_event: tuple[bytes, int]
) -> None:
    body, t = signed_event
    for name, (headers, payload) in _forgeries(keys["webhook_secret"], body, t).items():
        with pytest.raises(SignatureInvalid):
            provider.parse_notification(headers, payload)
            pytest.fail(f"accepted forgery: {name}")
    # the untouched message still verifies: the refusals above were about the forgeries
    good = {"Stripe-Signature": stripe_sign(keys["webhook_secret"], body, t)}
    assert provider.parse_notification(good, body).event_id


@pytest.mark.parametrize("created", [-62135596801, 253402300800, 10**20, -(10**20)])
def test_a_signed_event_created_outside_datetime_range_parses_without_a_time(
    provider: StripeProvider,
    keys: dict[str, str],
    signed_event: tuple[bytes, int],
    created: int,
) -> None:
    # Found by the signed-nonsense fuzzer: created=-62135596801 (before year 1) was a 500.
    body, t = signed_event
    event = json.loads(body)
    event["created"] = created
    body = json.dumps(event).encode()
    headers = {"Stripe-Signature": stripe_sign(keys["webhook_secret"], body, t)}
    note = provider.parse_notification(headers, body)
    assert note.kind is NotificationKind.PAYMENT and note.status is not None
    assert note.status.state is PaymentState.PAID and note.status.paid_at is None


def test_notification_reply() -> None:
    cfg = StripeConfig(
        "http://127.0.0.1:9", secret_key="sk_test_SECRET", webhook_secret="whsec_SECRET"
    )
    provider = StripeProvider(cfg)
    ok, bad = provider.notification_reply(True), provider.notification_reply(False)
    assert (ok.status_code, json.loads(ok.body)) == (200, {"received": True})
    assert bad.status_code == 400 and ok.content_type == "application/json"
    assert "SECRET" not in repr(cfg)  # secrets stay out of logs
