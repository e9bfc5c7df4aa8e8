"""The Stripe adapter against the Stripe simulator, over real HTTP on 127.0.0.1: creating, paying
and querying PaymentIntents, and closing them (with or without a recorded reference).

Each test gets a fresh simulator, with secrets generated at test time. Assertions are on
outcomes: the simulator's ledger, the values the adapter returns, the errors it classifies.
"""

from __future__ import annotations

import pytest
import requests

from adapters.payments.base import (
    ClosePayment,
    PaymentProvider,
    PaymentRef,
    PaymentState,
    ProviderRejected,
    ProviderUnavailable,
)
from adapters.payments.stripe import StripeProvider
from domain.money import Money
from simulators.stripe import StripeSimulator
from tests.conftest import wait_until
from tests.integration.adapters.stripe.support import create_request, paid_payment


def test_provider_satisfies_protocol(provider: StripeProvider) -> None:
    assert isinstance(provider, PaymentProvider)
    assert provider.name == "stripe"


@pytest.mark.parametrize(
    ("amount", "wire_currency"), [(Money(1234, "USD"), "usd"), (Money(500, "JPY"), "jpy")]
)
def test_create_pay_query_paid_with_exact_amount(
    provider: StripeProvider, sim: StripeSimulator, amount: Money, wire_currency: str
) -> None:
    req = create_request(amount=amount)
    created = provider.create(req)
    assert created.provider_ref is not None and created.provider_ref.startswith("pi_")
    assert created.instructions["client_secret"].startswith(created.provider_ref + "_secret_")
    ref = PaymentRef(req.out_trade_no, created.provider_ref)

    pending = provider.query(ref)
    assert (pending.state, pending.raw_status) == (PaymentState.PENDING, "requires_payment_method")
    assert pending.amount == amount and pending.paid_at is None

    sim.pay(req.out_trade_no)
    paid = provider.query(ref)
    assert (paid.state, paid.raw_status, paid.amount) == (PaymentState.PAID, "succeeded", amount)
    assert paid.provider_ref == created.provider_ref and paid.paid_at is not None

    [pi] = sim.ledger()["payment_intents"]
    assert pi["amount"] == amount.amount and pi["currency"] == wire_currency
    assert pi["metadata"] == {"order_id": "42", "out_trade_no": req.out_trade_no}
    assert pi["automatic_payment_methods"] == {"enabled": True}
    assert pi["description"] == req.description
    [charge] = sim.ledger()["charges"]
    assert charge["amount"] == amount.amount and charge["payment_intent"] == pi["id"]


def test_query_without_provider_ref_is_rejected(provider: StripeProvider) -> None:
    with pytest.raises(ProviderRejected) as exc:
        provider.query(PaymentRef("T1", None))
    assert exc.value.code == "missing_reference"


def test_auto_pay_and_http_control_endpoint(provider: StripeProvider, sim: StripeSimulator) -> None:
    sim.auto_pay_after_ms = 50
    req = create_request()
    ref = PaymentRef(req.out_trade_no, provider.create(req).provider_ref)
    wait_until(lambda: provider.query(ref).state is PaymentState.PAID)

    sim.auto_pay_after_ms = None
    req2 = create_request()
    ref2 = PaymentRef(req2.out_trade_no, provider.create(req2).provider_ref)
    answer = requests.post(
        f"{sim.url}/_sim/pay", json={"out_trade_no": req2.out_trade_no}, timeout=2
    )
    assert answer.status_code == 200 and answer.json()["status"] == "succeeded"
    assert provider.query(ref2).state is PaymentState.PAID


def test_close_unpaid_cancels(provider: StripeProvider, sim: StripeSimulator) -> None:
    req = create_request()
    ref = PaymentRef(req.out_trade_no, provider.create(req).provider_ref)
    result = provider.close(ClosePayment(ref, "close-1"))
    assert result.closed and result.status.state is PaymentState.CLOSED
    assert result.status.raw_status == "canceled"
    [pi] = sim.ledger()["payment_intents"]
    assert pi["status"] == "canceled"
    again = provider.close(ClosePayment(ref, "close-2"))  # a new key: Stripe refuses, we re-read
    assert again.closed and again.status.state is PaymentState.CLOSED


def test_close_paid_reports_paid(provider: StripeProvider, sim: StripeSimulator) -> None:
    ref, _ = paid_payment(provider, sim, 1500)
    for _ in range(2):  # the second call replays the saved 400 for the same key
        result = provider.close(ClosePayment(ref, "close-1"))
        assert not result.closed
        assert (result.status.state, result.status.amount) == (
            PaymentState.PAID,
            Money(1500, "USD"),
        )
    [pi] = sim.ledger()["payment_intents"]
    assert pi["status"] == "succeeded"


def test_close_without_reference_after_a_stored_create_failure_is_closed_never_created(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    """The create failed with a 500 Stripe stored for its key: repeating it replays the failure,
    so no PaymentIntent can exist — the close reports the trade closed without creating one."""
    req = create_request()
    sim.set_faults(error_rate=1.0)
    with pytest.raises(ProviderUnavailable):
        provider.create(req)
    sim.set_faults(error_rate=0.0)
    result = provider.close(ClosePayment(PaymentRef(req.out_trade_no), "close-1", create=req))
    assert result.closed
    assert (result.status.state, result.status.raw_status) == (
        PaymentState.NOT_FOUND,
        "never_created",
    )
    assert sim.ledger()["payment_intents"] == []


def test_close_without_reference_recovers_the_intent_and_cancels_it(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    """The create's answer was lost (a reset: nothing stored), or it succeeded and the id was
    never recorded: the repeated create returns the intent, which is then cancelled."""
    lost = create_request()
    sim.set_faults(reset_rate=1.0)
    with pytest.raises(ProviderUnavailable):
        provider.create(lost)
    sim.set_faults(reset_rate=0.0)
    unrecorded = create_request()
    pi_id = provider.create(unrecorded).provider_ref
    for req in (lost, unrecorded):
        result = provider.close(ClosePayment(PaymentRef(req.out_trade_no), "close-1", create=req))
        assert result.closed and result.status.state is PaymentState.CLOSED
        assert result.status.provider_ref is not None
    by_trade = {pi["metadata"]["out_trade_no"]: pi for pi in sim.ledger()["payment_intents"]}
    assert by_trade[unrecorded.out_trade_no]["id"] == pi_id
    assert {pi["status"] for pi in by_trade.values()} == {"canceled"}
    assert len(by_trade) == 2 and sim.ledger()["charges"] == []


def test_close_without_reference_of_a_paid_intent_reports_paid(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    req = create_request(amount=Money(1500, "USD"))
    provider.create(req)
    sim.pay(req.out_trade_no)
    result = provider.close(ClosePayment(PaymentRef(req.out_trade_no), "close-1", create=req))
    assert not result.closed
    assert (result.status.state, result.status.amount) == (PaymentState.PAID, Money(1500, "USD"))
    assert result.status.provider_ref is not None


def test_cancel_key_replaying_a_stored_500_moves_to_the_next_key(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    req = create_request()
    ref = PaymentRef(req.out_trade_no, provider.create(req).provider_ref)
    sim.set_faults(error_rate=1.0)
    with pytest.raises(ProviderUnavailable) as first:  # a fresh 500: Stripe stores it
        provider.close(ClosePayment(ref, "close-1"))
    assert first.value.code == "api_error"
    sim.set_faults(error_rate=0.0)
    for _ in range(2):  # the key replays the 500; the next key cancels (then is replayed)
        result = provider.close(ClosePayment(ref, "close-1"))
        assert result.closed and result.status.state is PaymentState.CLOSED
    [pi] = sim.ledger()["payment_intents"]
    assert pi["status"] == "canceled"
    cancel_keys = [k for k in sim.ledger()["idempotency_keys"] if k.startswith("cancel:")]
    assert cancel_keys == [
        f"cancel:{ref.provider_ref}:close-1",
        f"cancel:{ref.provider_ref}:close-1:r1",
    ]
