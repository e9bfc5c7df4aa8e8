"""The Stripe adapter against the Stripe simulator, over real HTTP on 127.0.0.1: partial and full
refunds, each made once whatever is replayed, refunds over the remainder, queries by refund
number and pending refunds that settle.

Each test gets a fresh simulator, with secrets generated at test time. Assertions are on
outcomes: the simulator's ledger, the values the adapter returns, the errors it classifies.
"""

from __future__ import annotations

import pytest
import requests

from adapters.payments.base import PaymentState, ProviderRejected, ProviderUnavailable, RefundState
from adapters.payments.stripe import StripeProvider
from domain.money import Money
from simulators.stripe import StripeSimulator
from tests.integration.adapters.stripe.support import paid_payment, refund_request


def test_partial_then_full_refund_each_once(provider: StripeProvider, sim: StripeSimulator) -> None:
    ref, _ = paid_payment(provider, sim, 1000)
    first = provider.refund(refund_request(ref, "R1", 300))
    assert (first.state, first.amount, first.refund_no) == (
        RefundState.SUCCEEDED,
        Money(300, "USD"),
        "R1",
    )
    assert provider.refund(refund_request(ref, "R1", 300)) == first  # same refund_no: same refund
    assert provider.query(ref).state is PaymentState.PAID

    rest = provider.refund(refund_request(ref, "R2", 700))
    assert (
        rest.state is RefundState.SUCCEEDED
        and rest.provider_refund_ref != first.provider_refund_ref
    )
    ledger = sim.ledger()
    assert sorted(r["amount"] for r in ledger["refunds"]) == [300, 700]
    assert {r["metadata"]["refund_no"] for r in ledger["refunds"]} == {"R1", "R2"}
    assert ledger["charges"][0]["amount_refunded"] == 1000 and ledger["charges"][0]["refunded"]
    assert provider.query(ref).state is PaymentState.REFUNDED

    with pytest.raises(ProviderRejected) as exc:
        provider.refund(refund_request(ref, "R3", 1))
    assert exc.value.code == "charge_already_refunded"
    assert len(sim.ledger()["refunds"]) == 2


def test_refund_key_replaying_a_stored_500_moves_on_once_no_refund_exists(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    ref, _ = paid_payment(provider, sim, 1000)
    sim.set_faults(error_rate=1.0)
    with pytest.raises(ProviderUnavailable):  # stored under the key "R1"
        provider.refund(refund_request(ref, "R1", 400))
    sim.set_faults(error_rate=0.0)
    first = provider.refund(refund_request(ref, "R1", 400))
    again = provider.refund(refund_request(ref, "R1", 400))
    assert first.state is RefundState.SUCCEEDED and again == first
    [refund] = sim.ledger()["refunds"]
    assert (refund["amount"], refund["metadata"]["refund_no"]) == (400, "R1")
    assert "R1" in sim.ledger()["idempotency_keys"] and "R1:r1" in sim.ledger()["idempotency_keys"]


def test_refund_key_replaying_a_stored_500_finds_the_refund_instead_of_making_another(
    provider: StripeProvider, sim: StripeSimulator, keys: dict[str, str]
) -> None:
    """Stripe stored a 500 for the key, yet a refund with this number exists (the request did
    its work before failing): it is the answer, and no second refund is made."""
    ref, _ = paid_payment(provider, sim, 1000)
    sim.set_faults(error_rate=1.0)
    with pytest.raises(ProviderUnavailable):
        provider.refund(refund_request(ref, "R1", 400))
    sim.set_faults(error_rate=0.0)
    made = requests.post(  # the refund the failed request made after all
        f"{sim.url}/v1/refunds",
        data={"payment_intent": ref.provider_ref, "amount": "400", "metadata[refund_no]": "R1"},
        headers={"Authorization": f"Bearer {keys['secret_key']}", "Idempotency-Key": "other"},
        timeout=2,
    )
    assert made.status_code == 200, made.text
    result = provider.refund(refund_request(ref, "R1", 400))
    assert result.provider_refund_ref == made.json()["id"]
    assert len(sim.ledger()["refunds"]) == 1
    assert not any(k.startswith("R1:") for k in sim.ledger()["idempotency_keys"])


def test_refund_over_remaining_is_rejected(provider: StripeProvider, sim: StripeSimulator) -> None:
    ref, _ = paid_payment(provider, sim, 1000)
    provider.refund(refund_request(ref, "R1", 600))
    with pytest.raises(ProviderRejected) as exc:
        provider.refund(refund_request(ref, "R2", 500))
    assert exc.value.code == "amount_too_large"
    assert [r["amount"] for r in sim.ledger()["refunds"]] == [600]


def test_query_refund_by_refund_no(provider: StripeProvider, sim: StripeSimulator) -> None:
    ref, _ = paid_payment(provider, sim, 1000)
    r1 = provider.refund(refund_request(ref, "R1", 100))
    provider.refund(refund_request(ref, "R2", 200))
    found = provider.query_refund(ref, "R1")
    assert found == r1 and found.amount == Money(100, "USD")
    with pytest.raises(ProviderRejected) as exc:
        provider.query_refund(ref, "R9")
    assert exc.value.code == "resource_missing"


def test_pending_refund_settles(provider: StripeProvider, sim: StripeSimulator) -> None:
    sim.refunds_start_pending = True
    ref, _ = paid_payment(provider, sim, 1000)
    pending = provider.refund(refund_request(ref, "R1", 400))
    assert pending.state is RefundState.PENDING
    assert pending.provider_refund_ref is not None
    sim.settle_refund(pending.provider_refund_ref, "failed")
    assert provider.query_refund(ref, "R1").state is RefundState.FAILED
