"""Fixtures for the Stripe adapter tests: generated secrets, a fresh simulator per test (stopped
in the background, all joined when the module ends), the provider and a merchant webhook
endpoint that runs the adapter's ``parse_notification``."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from adapters.payments.stripe import StripeProvider
from simulators.stripe import StripeSimulator
from tests.integration.adapters.stripe.support import (
    Merchant,
    make_provider,
    stop_later,
    stopping,
)


@pytest.fixture(scope="module", autouse=True)
def _join_stopped_servers() -> Iterator[None]:
    yield
    for thread in stopping:
        thread.join(timeout=5)


@pytest.fixture
def keys() -> dict[str, str]:
    return {
        "secret_key": "sk_test_" + secrets.token_hex(16),
        "webhook_secret": "whsec_" + secrets.token_hex(16),
    }


@pytest.fixture
def sim(keys: dict[str, str]) -> Iterator[StripeSimulator]:
    simulator = StripeSimulator(keys["secret_key"], keys["webhook_secret"], retry_delays=(0.1, 0.1))
    simulator.start()
    yield simulator
    stop_later(simulator)


@pytest.fixture
def provider(sim: StripeSimulator, keys: dict[str, str]) -> StripeProvider:
    return make_provider(sim, keys)


@pytest.fixture
def merchant(sim: StripeSimulator, provider: StripeProvider) -> Iterator[Merchant]:
    m = Merchant(provider)
    m.server.start()
    sim.webhook_url = m.url
    yield m
    stop_later(m.server)
