"""Fixtures for the Kuaidi100 adapter tests: generated keys, one simulator per test module (reset
before each test that uses it), dedicated simulators, the provider and a push receiver."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from adapters.logistics.kuaidi100 import Kuaidi100Provider
from simulators.kuaidi100 import Kuaidi100Simulator
from tests.integration.adapters.kuaidi100.support import (
    CUSTOMER,
    SIM_DEFAULTS,
    PushReceiver,
    provider_for,
)


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return {"key": secrets.token_hex(8), "salt": secrets.token_hex(8)}


@pytest.fixture(scope="module")
def shared_sim(keys: dict[str, str]) -> Iterator[Kuaidi100Simulator]:
    # One server for the module (a server takes ~0.5 s to shut down); reset between tests.
    with Kuaidi100Simulator(CUSTOMER, keys["key"], **SIM_DEFAULTS) as sim:
        yield sim


@pytest.fixture
def sim(shared_sim: Kuaidi100Simulator) -> Kuaidi100Simulator:
    shared_sim.reset()  # faults, waybills, subscriptions, ledger, push options
    return shared_sim


@pytest.fixture
def make_sim(keys: dict[str, str]) -> Iterator[Callable[..., Kuaidi100Simulator]]:
    """Dedicated simulators for tests that need other settings."""
    started: list[Kuaidi100Simulator] = []

    def factory(**overrides: Any) -> Kuaidi100Simulator:
        sim = Kuaidi100Simulator(CUSTOMER, keys["key"], **{**SIM_DEFAULTS, **overrides})
        started.append(sim.start())
        return sim

    yield factory
    for sim in started:
        sim.stop()


@pytest.fixture
def provider(sim: Kuaidi100Simulator, keys: dict[str, str]) -> Kuaidi100Provider:
    return provider_for(sim, keys)


@pytest.fixture
def receiver(provider: Kuaidi100Provider) -> Iterator[PushReceiver]:
    r = PushReceiver(provider)
    yield r
    r.close()
