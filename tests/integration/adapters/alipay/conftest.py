"""Fixtures for the Alipay adapter tests: the app key and one simulator per test module (reset
before each test that uses it), the provider and a merchant notify endpoint."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.payments.alipay import AlipayProvider
from simulators.alipay import AlipaySimulator
from tests.integration.adapters.alipay.support import (
    APP_ID,
    Receiver,
    make_provider,
    new_key,
    public_pem,
)


@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture(scope="module")
def running_sim(app_key: rsa.RSAPrivateKey) -> Iterator[AlipaySimulator]:
    # One server per module: stopping one costs the harness's 0.5 s shutdown poll.
    simulator = AlipaySimulator(
        APP_ID, public_pem(app_key), notify_retry_delays=(0.1, 0.2, 0.4)
    ).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def sim(running_sim: AlipaySimulator) -> AlipaySimulator:
    running_sim.reset()  # faults, trades, refunds, notifications and options
    return running_sim


@pytest.fixture
def provider(sim: AlipaySimulator, app_key: rsa.RSAPrivateKey) -> AlipayProvider:
    return make_provider(sim, app_key)


@pytest.fixture
def receiver(provider: AlipayProvider) -> Iterator[Receiver]:
    r = Receiver(provider)
    yield r
    r.close()
