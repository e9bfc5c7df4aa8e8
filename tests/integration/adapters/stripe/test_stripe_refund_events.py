"""Stripe's current refund protocol, the adapter against the simulator over real HTTP: the
``refund.created|updated|failed`` events, ``charge.refunded`` without an embedded refund list
(API versions since 2022-11-15), refunds made in the dashboard, listing a payment's refunds, the
simulator honouring ``Stripe-Version``, and ``STRIPE_API_VERSION`` sent on every request."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pydantic
import pytest
import requests

from adapters import registry
from adapters.payments.base import ClosePayment, NotificationKind, PaymentRef, RefundState
from adapters.payments.stripe import StripeProvider
from domain.money import Money
from settings import Settings, get_settings
from simulators.stripe import API_VERSION, StripeSimulator
from tests.conftest import wait_until
from tests.integration.adapters.stripe.support import (
    Merchant,
    create_request,
    paid_payment,
    refund_request,
)


def test_todays_refund_events_name_the_refund_and_charge_refunded_does_not(
    provider: StripeProvider, sim: StripeSimulator, merchant: Merchant
) -> None:
    ref, req = paid_payment(provider, sim, 1000)
    made = provider.refund(refund_request(ref, "R1", 400))
    wait_until(
        lambda: bool(merchant.of_type("charge.refunded") and merchant.of_type("refund.created"))
    )
    [created] = merchant.of_type("refund.created")
    assert created.kind is NotificationKind.REFUND and created.refund is not None
    assert (created.refund.refund_no, created.refund.amount) == ("R1", Money(400, "USD"))
    assert created.refund.provider_refund_ref == made.provider_refund_ref
    assert created.refund.state is RefundState.SUCCEEDED
    assert (created.out_trade_no, created.provider_ref) == (req.out_trade_no, ref.provider_ref)
    [charge] = merchant.of_type("charge.refunded")
    # No embedded list: the adapter invents no refund from the charge's total.
    assert charge.kind is NotificationKind.REFUND and charge.refund is None
    assert charge.refunds_unlisted and charge.provider_ref == ref.provider_ref
    [listed] = provider.list_refunds(ref)
    assert (listed.refund_no, listed.amount, listed.provider_refund_ref) == (
        "R1", Money(400, "USD"), made.provider_refund_ref)  # fmt: skip


def test_a_dashboard_refund_carries_no_refund_no_and_names_the_payment_intent(
    provider: StripeProvider, sim: StripeSimulator, merchant: Merchant
) -> None:
    ref, _ = paid_payment(provider, sim, 1000)
    ask = {"payment_intent": ref.provider_ref, "amount": 250}
    answer = requests.post(f"{sim.url}/_sim/dashboard_refund", json=ask, timeout=5)
    assert answer.status_code == 200 and answer.json()["metadata"] == {}
    wait_until(lambda: bool(merchant.of_type("refund.created")))
    [created] = merchant.of_type("refund.created")
    assert created.refund is not None and created.out_trade_no is None
    assert (created.refund.refund_no, created.refund.amount) == ("", Money(250, "USD"))
    assert created.refund.provider_refund_ref == answer.json()["id"]
    assert created.provider_ref == ref.provider_ref
    assert [r.refund_no for r in provider.list_refunds(ref)] == [""]
    too_much = {"payment_intent": ref.provider_ref, "amount": 751}
    assert (
        requests.post(f"{sim.url}/_sim/dashboard_refund", json=too_much, timeout=5).status_code
        == 409
    )


def test_a_refund_that_arrives_only_as_refund_updated(
    provider: StripeProvider, sim: StripeSimulator, merchant: Merchant
) -> None:
    """An endpoint that gets only ``refund.updated``: pending first, then succeeded, and never
    a ``refund.created`` or ``charge.refunded``."""
    sim.webhook_types = {"refund.updated"}
    ref, _ = paid_payment(provider, sim, 1000)
    refund = sim.dashboard_refund(ref.provider_ref or "", 300, status="requires_action")
    sim.settle_refund(refund["id"], "pending")
    wait_until(lambda: len(merchant.accepted) == 1)  # deliveries run concurrently: keep order
    sim.settle_refund(refund["id"], "succeeded")
    wait_until(lambda: len(merchant.accepted) == 2)
    assert [n.raw_type for n in merchant.accepted] == ["refund.updated", "refund.updated"]
    states = [n.refund.state for n in merchant.accepted if n.refund]
    assert states == [RefundState.PENDING, RefundState.SUCCEEDED]
    assert {n.provider_ref for n in merchant.accepted} == {ref.provider_ref}


def test_refund_failed_carries_our_refund_no(
    provider: StripeProvider, sim: StripeSimulator, merchant: Merchant
) -> None:
    sim.refunds_start_pending = True
    ref, _ = paid_payment(provider, sim, 1000)
    pending = provider.refund(refund_request(ref, "R9", 1000))
    sim.settle_refund(pending.provider_refund_ref or "", "failed")
    wait_until(lambda: bool(merchant.of_type("refund.failed")))
    [failed] = merchant.of_type("refund.failed")
    assert failed.refund is not None and failed.refund.refund_no == "R9"
    assert failed.refund.state is RefundState.FAILED


def test_the_simulator_answers_in_the_requested_api_version(
    provider: StripeProvider, sim: StripeSimulator, keys: dict[str, str]
) -> None:
    ref, _ = paid_payment(provider, sim, 1000)
    provider.refund(refund_request(ref, "R1", 100))

    def charge(version: str | None) -> requests.Response:
        headers = {"Authorization": f"Bearer {keys['secret_key']}"}
        if version:
            headers["Stripe-Version"] = version
        url = f"{sim.url}/v1/payment_intents/{ref.provider_ref}"
        return requests.get(url, params={"expand[]": "latest_charge"}, headers=headers, timeout=5)

    old = charge("2022-08-01").json()["latest_charge"]
    assert [r["metadata"]["refund_no"] for r in old["refunds"]["data"]] == ["R1"]
    assert "refunds" not in charge("2022-11-15").json()["latest_charge"]
    assert "refunds" not in charge(None).json()["latest_charge"]  # the account's default: today
    sim.api_version = "2020-08-27"
    assert "refunds" in charge(None).json()["latest_charge"]
    refused = charge("yesterday")
    assert refused.status_code == 400 and "Invalid Stripe API version" in refused.text


@pytest.fixture
def configured(
    sim: StripeSimulator, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The registry's Stripe adapters built from settings pointing at ``sim`` with
    ``STRIPE_API_VERSION=2022-08-01`` (not the simulator's default, so a missing header shows)."""
    env = {
        "STRIPE_API_BASE": sim.url,
        "STRIPE_SECRET_KEY": keys["secret_key"],
        "STRIPE_WEBHOOK_SECRET": keys["webhook_secret"],
        "STRIPE_API_VERSION": "2022-08-01",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    registry.reset()
    yield
    registry.reset()
    get_settings.cache_clear()  # after monkeypatch restores the environment (fixture order)


def test_the_configured_api_version_is_sent_on_every_request(
    sim: StripeSimulator, configured: None
) -> None:
    provider = registry.payment_provider("stripe")
    assert isinstance(provider, StripeProvider)
    ref, _ = paid_payment(provider, sim, 1000)
    provider.query(ref)
    provider.refund(refund_request(ref, "R1", 100))
    provider.query_refund(ref, "R1")
    open_req = create_request()
    created = provider.create(open_req)
    provider.close(ClosePayment(PaymentRef(open_req.out_trade_no, created.provider_ref), "c1"))
    day = datetime.now(UTC).date() - timedelta(days=2)  # complete: no "not ready" short cut
    registry.settlement_source("stripe").fetch_bill(day, "balance", now=datetime.now(UTC))

    with sim._state:
        seen = list(sim.api_requests)
    calls = {(method, "/".join(path.split("/")[:3]), path.endswith("/cancel"))
             for method, path, _ in seen}  # fmt: skip
    assert calls == {
        ("POST", "/v1/payment_intents", False), ("GET", "/v1/payment_intents", False),
        ("POST", "/v1/payment_intents", True), ("POST", "/v1/refunds", False),
        ("GET", "/v1/refunds", False), ("GET", "/v1/balance_transactions", False),
    }  # fmt: skip
    assert {version for _, _, version in seen} == {"2022-08-01"}


def test_the_default_api_version_is_the_one_the_simulator_speaks() -> None:
    assert Settings.model_fields["stripe_api_version"].default == API_VERSION
    for bad in ("latest", "2024-6-20", "2024-06-20; x"):
        with pytest.raises(pydantic.ValidationError, match="stripe_api_version"):
            Settings(stripe_api_version=bad)
