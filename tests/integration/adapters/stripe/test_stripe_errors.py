"""The Stripe adapter against the Stripe simulator, over real HTTP on 127.0.0.1: idempotency
(replays, mismatches, a key in use), transport faults and the classification of Stripe's
errors.

Each test gets a fresh simulator, with secrets generated at test time. Assertions are on
outcomes: the simulator's ledger, the values the adapter returns, the errors it classifies.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import requests

from adapters.payments.base import (
    REPLAYED_FAILURE,
    PaymentRef,
    ProviderRejected,
    ProviderUnavailable,
)
from adapters.payments.stripe import StripeProvider, classify_error
from domain.money import Money
from simulators.stripe import StripeSimulator
from tests.conftest import wait_until
from tests.integration.adapters.stripe.support import (
    create_request,
    key_in_flight,
    make_provider,
)


def test_same_idempotency_key_replays_the_same_payment_intent(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    req = create_request()
    first, second = provider.create(req), provider.create(req)
    assert first == second
    assert len(sim.ledger()["payment_intents"]) == 1


def test_same_key_different_amount_is_an_idempotency_error(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    req = create_request(amount=Money(1000, "USD"))
    provider.create(req)
    changed = create_request(req.out_trade_no, Money(2000, "USD"), key=req.idempotency_key)
    with pytest.raises(ProviderRejected) as exc:
        provider.create(changed)
    assert exc.value.code == "idempotency_error"
    [pi] = sim.ledger()["payment_intents"]
    assert pi["amount"] == 1000


def test_injected_500_is_saved_and_replayed_for_the_same_key(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    req = create_request()
    sim.set_faults(error_rate=1.0)
    with pytest.raises(ProviderUnavailable):
        provider.create(req)
    sim.set_faults(error_rate=0.0)
    with pytest.raises(ProviderUnavailable) as replayed:  # the saved 500, no new execution
        provider.create(req)
    assert replayed.value.code == REPLAYED_FAILURE  # tells the caller to mint a new key
    assert sim.ledger()["payment_intents"] == []
    assert [s for m, p, s in sim.request_log if p == "/v1/payment_intents"] == [500, 500]
    assert req.idempotency_key in sim.ledger()["idempotency_keys"]

    fresh = create_request(req.out_trade_no, key=req.idempotency_key + "-2")
    assert provider.create(fresh).provider_ref is not None
    assert len(sim.ledger()["payment_intents"]) == 1


def test_concurrent_request_with_same_key_gets_409_and_one_intent(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    sim.execution_delay_ms = 300
    req = create_request()
    outcomes: list[object] = []

    def call() -> None:
        try:
            outcomes.append(provider.create(req))
        except ProviderUnavailable as exc:
            outcomes.append(exc)

    first, second = (threading.Thread(target=call) for _ in range(2))
    first.start()
    # The second request goes out once the first holds the key (it executes for 300 ms).
    wait_until(lambda: key_in_flight(sim, req.idempotency_key), timeout_s=30, every_s=0.005)
    second.start()
    for t in (first, second):
        t.join()
    errors = [o for o in outcomes if isinstance(o, ProviderUnavailable)]
    assert len(errors) == 1 and errors[0].code == "idempotency_key_in_use"
    assert len(sim.ledger()["payment_intents"]) == 1
    sim.execution_delay_ms = 0
    assert provider.create(req) in outcomes  # the retry replays the winner


def test_timeout_is_unavailable_and_the_retry_creates_one_intent(
    sim: StripeSimulator, keys: dict[str, str]
) -> None:
    provider = make_provider(sim, keys, read_timeout=0.2)
    sim.set_faults(timeout_rate=1.0, hang_seconds=0.5)
    req = create_request()
    with pytest.raises(ProviderUnavailable) as exc:
        provider.create(req)
    assert exc.value.code == "network"
    sim.set_faults(timeout_rate=0.0)
    created = provider.create(req)
    # The hung request still executes at the simulator afterwards and meets the saved key.
    wait_until(lambda: len([p for _, p, _ in sim.request_log if p == "/v1/payment_intents"]) == 2)
    [pi] = sim.ledger()["payment_intents"]
    assert pi["id"] == created.provider_ref


def test_connection_reset_is_unavailable(provider: StripeProvider, sim: StripeSimulator) -> None:
    sim.set_faults(reset_rate=1.0)
    with pytest.raises(ProviderUnavailable):
        provider.create(create_request())
    assert sim.ledger()["payment_intents"] == []


def test_5xx_on_query_is_unavailable(provider: StripeProvider, sim: StripeSimulator) -> None:
    req = create_request()
    ref = PaymentRef(req.out_trade_no, provider.create(req).provider_ref)
    sim.set_faults(error_rate=1.0)
    with pytest.raises(ProviderUnavailable) as exc:
        provider.query(ref)
    assert exc.value.code == "api_error"


def test_business_error_is_rejected(provider: StripeProvider, sim: StripeSimulator) -> None:
    sim.set_faults(business_error="card_declined")
    with pytest.raises(ProviderRejected) as exc:
        provider.create(create_request())
    assert exc.value.code == "card_declined"
    assert sim.ledger()["payment_intents"] == []


def test_wrong_secret_key_is_rejected(sim: StripeSimulator, keys: dict[str, str]) -> None:
    provider = make_provider(sim, keys, secret_key="sk_test_wrong")
    with pytest.raises(ProviderRejected) as exc:
        provider.create(create_request())
    assert exc.value.code == "authentication_error"
    assert sim.ledger()["payment_intents"] == []


def _response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = json.dumps(body).encode()
    resp.headers.update(headers or {})
    return resp


@pytest.mark.parametrize(
    ("status", "error", "headers", "retryable", "code"),
    [
        (429, {"type": "invalid_request_error", "code": "lock_timeout"}, {}, True, "lock_timeout"),
        (400, {"type": "invalid_request_error", "code": "rate_limit"}, {}, True, "rate_limit"),
        (409, {"type": "idempotency_error"}, {}, True, "idempotency_error"),
        (503, {"type": "api_error"}, {}, True, "api_error"),
        (500, {"type": "api_error"}, {"Stripe-Should-Retry": "false"}, False, "api_error"),
        (400, {"type": "invalid_request_error"}, {"Stripe-Should-Retry": "true"}, True, None),
        (402, {"type": "card_error", "code": "card_declined"}, {}, False, "card_declined"),
        (404, {"type": "invalid_request_error", "code": "resource_missing"}, {}, False, None),
        (400, {"type": "idempotency_error", "code": "idempotency_key_mismatch"}, {}, False,
         "idempotency_error"),
    ],
)  # fmt: skip
def test_error_classification(
    status: int, error: dict[str, str], headers: dict[str, str], retryable: bool, code: str | None
) -> None:
    err = classify_error(_response(status, {"error": error}, headers))
    assert isinstance(err, ProviderUnavailable if retryable else ProviderRejected)
    assert err.code == (code or error.get("code") or error["type"])
