"""Stripe conformance: stripe-python (the official SDK) against our simulator and our adapter.

1. The SDK is the merchant, our simulator is Stripe: it creates, retrieves and refunds a
   PaymentIntent, pages the balance transactions with auto-pagination, and verifies the
   simulator's webhook with ``stripe.Webhook.construct_event``.
2. The SDK signs, our adapter verifies: a webhook signed by the SDK's own
   ``WebhookSignature.generate_signature_header`` (public, "useful for signing payloads in unit
   tests") must be accepted by ``StripeProvider.parse_notification``, and refused when signed
   with another secret.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
import stripe

from adapters.payments.base import NotificationKind, PaymentState, SignatureInvalid
from adapters.payments.stripe import StripeConfig, StripeProvider
from simulators.harness import Response
from simulators.stripe import StripeSimulator
from tests.conformance.support import Sink, sink


@pytest.fixture
def keys() -> dict[str, str]:
    return {
        "secret_key": "sk_test_" + secrets.token_hex(16),
        "webhook_secret": "whsec_" + secrets.token_hex(16),
    }


@pytest.fixture
def sim(keys: dict[str, str]) -> Iterator[StripeSimulator]:
    simulator = StripeSimulator(keys["secret_key"], keys["webhook_secret"], retry_delays=(0.1,))
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def merchant(sim: StripeSimulator) -> Iterator[Sink]:
    with sink(Response(200, b"", {})) as s:
        sim.webhook_url = s.url
        yield s


def sdk_client(sim: StripeSimulator, secret_key: str) -> stripe.StripeClient:
    # No network retries: a simulator answer the SDK dislikes must fail the test, not be retried.
    return stripe.StripeClient(secret_key, base_addresses={"api": sim.url}, max_network_retries=0)


def test_sdk_creates_retrieves_refunds_and_pages_balance_transactions(
    sim: StripeSimulator, keys: dict[str, str]
) -> None:
    client = sdk_client(sim, keys["secret_key"])
    trade_no = "T" + secrets.token_hex(6)
    created = client.v1.payment_intents.create(
        params={
            "amount": 1234,
            "currency": "usd",
            "payment_method_types": ["card"],
            "description": "conformance",
            "metadata": {"out_trade_no": trade_no, "order_id": "42"},
        }
    )
    assert isinstance(created, stripe.PaymentIntent)
    assert (created.status, created.amount, created.currency) == (
        "requires_payment_method", 1234, "usd",
    )  # fmt: skip
    assert created.metadata["out_trade_no"] == trade_no
    assert created.client_secret and created.client_secret.startswith(created.id + "_secret_")

    sim.pay(trade_no)
    paid = client.v1.payment_intents.retrieve(created.id)
    assert (paid.status, paid.amount_received) == ("succeeded", 1234)
    charge_id = paid.latest_charge
    assert isinstance(charge_id, str) and charge_id.startswith("ch_")
    expanded = client.v1.payment_intents.retrieve(created.id, params={"expand": ["latest_charge"]})
    assert isinstance(expanded.latest_charge, stripe.Charge)
    assert expanded.latest_charge.id == charge_id
    # The SDK pins an API version after 2022-11-15: a Charge no longer embeds its refunds.
    assert "refunds" not in expanded.latest_charge

    refund = client.v1.refunds.create(params={"payment_intent": created.id, "amount": 234})
    assert isinstance(refund, stripe.Refund)
    assert (refund.amount, refund.payment_intent, refund.status) == (234, created.id, "succeeded")
    listed = client.v1.refunds.list(params={"payment_intent": created.id})
    assert [r.id for r in listed.data] == [refund.id]

    # limit=1 makes every transaction its own page: auto-pagination must walk starting_after.
    page = client.v1.balance_transactions.list(params={"limit": 1})
    assert page.has_more, "two transactions exist: the first page of one must say has_more"
    walked = list(page.auto_paging_iter())
    assert len(walked) == len({t.id for t in walked}) >= 2
    by_source = {t.source: t for t in walked}
    assert (by_source[charge_id].type, by_source[charge_id].amount) == ("charge", 1234)
    assert (by_source[refund.id].type, by_source[refund.id].amount) == ("refund", -234)


def test_sdk_verifies_the_simulators_webhook(
    sim: StripeSimulator, keys: dict[str, str], merchant: Sink
) -> None:
    sim.webhook_types = {"payment_intent.succeeded", "refund.created"}
    client = sdk_client(sim, keys["secret_key"])
    trade_no = "T" + secrets.token_hex(6)
    pi = client.v1.payment_intents.create(
        params={"amount": 500, "currency": "usd", "metadata": {"out_trade_no": trade_no}}
    )
    sim.pay(trade_no)
    delivery = merchant.first()
    header = delivery.headers["stripe-signature"]

    event = stripe.Webhook.construct_event(delivery.body, header, keys["webhook_secret"])
    assert event.type == "payment_intent.succeeded"
    # The SDK builds typed objects from the event's "object" fields.
    assert isinstance(event.data.object, stripe.PaymentIntent)
    assert (event.data.object.id, event.data.object.amount_received) == (pi.id, 500)

    refund = client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 100})
    second = merchant.wait_for(2)[1]
    refunded = stripe.Webhook.construct_event(
        second.body, second.headers["stripe-signature"], keys["webhook_secret"]
    )
    assert refunded.type == "refund.created"
    assert isinstance(refunded.data.object, stripe.Refund)
    assert (refunded.data.object.id, refunded.data.object.amount) == (refund.id, 100)

    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(delivery.body, header, "whsec_" + secrets.token_hex(16))
    with pytest.raises(stripe.SignatureVerificationError):  # one byte of the body changed
        stripe.Webhook.construct_event(delivery.body + b" ", header, keys["webhook_secret"])


def _succeeded_event(pi_id: str, trade_no: str) -> bytes:
    event = {
        "id": "evt_" + secrets.token_hex(12),
        "object": "event",
        "type": "payment_intent.succeeded",
        "api_version": "2024-06-20",
        "created": 1_700_000_000,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "data": {
            "object": {
                "id": pi_id,
                "object": "payment_intent",
                "amount": 1234,
                "amount_received": 1234,
                "currency": "usd",
                "status": "succeeded",
                "metadata": {"out_trade_no": trade_no},
                "latest_charge": "ch_" + secrets.token_hex(12),
            }
        },
    }
    return json.dumps(event).encode()


def test_adapter_accepts_a_webhook_signed_by_the_sdk(keys: dict[str, str]) -> None:
    provider = StripeProvider(StripeConfig(api_base="http://127.0.0.1:1", **keys))
    trade_no = "T" + secrets.token_hex(6)
    body = _succeeded_event("pi_" + secrets.token_hex(12), trade_no)
    header = stripe.WebhookSignature.generate_signature_header(
        body.decode(), keys["webhook_secret"]
    )

    note = provider.parse_notification({"Stripe-Signature": header}, body)
    assert (note.kind, note.out_trade_no, note.raw_type) == (
        NotificationKind.PAYMENT, trade_no, "payment_intent.succeeded",
    )  # fmt: skip
    assert note.status is not None and note.status.state is PaymentState.PAID

    forged = stripe.WebhookSignature.generate_signature_header(
        body.decode(), "whsec_" + secrets.token_hex(16)
    )
    with pytest.raises(SignatureInvalid):
        provider.parse_notification({"Stripe-Signature": forged}, body)
    stale = stripe.WebhookSignature.generate_signature_header(
        body.decode(), keys["webhook_secret"], timestamp=1_700_000_000
    )
    with pytest.raises(SignatureInvalid):  # the SDK's own 300 s tolerance, which we share
        provider.parse_notification({"Stripe-Signature": stale}, body)


def test_sdk_classifies_the_simulators_errors(sim: StripeSimulator, keys: dict[str, str]) -> None:
    """Our simulator's error envelopes must map to the SDK's own exception classes (the same
    classification our adapter reimplements: retry 5xx, never retry 4xx)."""
    client = sdk_client(sim, keys["secret_key"])
    intruder = sdk_client(sim, "sk_test_" + secrets.token_hex(16))
    with pytest.raises(stripe.AuthenticationError) as auth:
        intruder.v1.payment_intents.create(params={"amount": 100, "currency": "usd"})
    assert auth.value.http_status == 401
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.payment_intents.retrieve("pi_" + secrets.token_hex(12))
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.payment_intents.create(params={"amount": 1, "currency": "usd", "colour": "x"})
    assert (unknown.value.code, unknown.value.param) == ("parameter_unknown", "colour")

    first = {"amount": 100, "currency": "usd"}
    client.v1.payment_intents.create(params=first, options={"idempotency_key": "k-1"})
    with pytest.raises(stripe.IdempotencyError):
        client.v1.payment_intents.create(
            params={**first, "amount": 101}, options={"idempotency_key": "k-1"}
        )
    sim.set_faults(business_error="card_declined")
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.create(params=first)
    assert (declined.value.http_status, declined.value.code) == (402, "card_declined")
    sim.set_faults(business_error=None, error_rate=1.0)
    with pytest.raises(stripe.APIError) as broken:
        client.v1.payment_intents.create(params=first)
    assert broken.value.http_status == 500
