"""Fixtures for the WeChat Pay adapter tests: generated keys, one simulator and one merchant
webhook receiver per test module, the simulator reset before every test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from adapters.payments.wechatpay import WeChatPayProvider
from simulators.wechatpay import WeChatPaySimulator
from tests.integration.adapters.wechatpay.support import (
    APPID,
    MCHID,
    MERCHANT_SERIAL,
    Keys,
    Receiver,
    make_provider,
    rsa_pems,
)


@pytest.fixture(scope="module")
def keys() -> Keys:
    private, public = rsa_pems()
    return Keys(private, public, secrets.token_hex(16).encode("ascii"))  # 32 ASCII bytes


@pytest.fixture(scope="module")
def sim(keys: Keys) -> Iterator[WeChatPaySimulator]:
    with WeChatPaySimulator(
        mchid=MCHID,
        appid=APPID,
        merchant_serial_no=MERCHANT_SERIAL,
        merchant_public_key_pem=keys.merchant_public_pem,
        api_v3_key=keys.api_v3_key,
        notify_retry_delays=(0.1, 0.2, 0.4),
    ) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def _receiver_server() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.stop()


@pytest.fixture
def receiver(_receiver_server: Receiver) -> Receiver:
    _receiver_server.clear()
    return _receiver_server


@pytest.fixture(autouse=True)
def _clean_sim(sim: WeChatPaySimulator) -> None:
    sim.reset()


@pytest.fixture
def provider(sim: WeChatPaySimulator, keys: Keys) -> WeChatPayProvider:
    return make_provider(sim, keys)
