"""WeChat Pay v3 platform-certificate mode against the simulator over real HTTP on 127.0.0.1:
``GET /v3/certificates`` downloaded and decrypted, an unknown serial learnt by one download, a
forged serial refused after one download, a tampered list refused, ``Wechatpay-Serial`` on
requests, public-key mode unchanged, and a certificate rotation in the middle of a run.

Every key and certificate is generated at test time. The adapter's clock is injected (real time
plus an offset) so the "at most one download per minute" rule is crossed without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from adapters.payments.base import (
    Notification,
    NotificationKind,
    PaymentRef,
    PaymentState,
    ProviderRejected,
    ProviderUnavailable,
    SignatureInvalid,
)
from adapters.payments.wechatpay import WeChatPayConfig, WeChatPayProvider
from simulators.wechatpay import WeChatPaySimulator
from tests.integration.adapters.wechatpay.support import (
    APPID,
    MCHID,
    MERCHANT_SERIAL,
    Keys,
    Receiver,
    create_request,
    make_provider,
    rsa_pems,
)

GAP_S = 60.0  # the adapter's shortest gap between two downloads (the default)
# Short enough that moving the clock past it twice keeps request timestamps within WeChat's
# five-minute tolerance (the default is an hour).
REFRESH_S = 100.0


class Clock:
    """Real time plus an offset the test moves forward (both sides' timestamps stay close)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture(scope="module")
def cert_sim(keys: Keys) -> Iterator[WeChatPaySimulator]:
    with WeChatPaySimulator(
        mchid=MCHID,
        appid=APPID,
        merchant_serial_no=MERCHANT_SERIAL,
        merchant_public_key_pem=keys.merchant_public_pem,
        api_v3_key=keys.api_v3_key,
        key_mode="platform_certificate",
        notify_retry_delays=(0.1, 0.2, 0.4),
    ) as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def _clean_cert_sim(cert_sim: WeChatPaySimulator) -> None:
    cert_sim.reset()  # also restores the initial certificate


@pytest.fixture
def clock() -> Clock:
    return Clock()


def cert_provider(
    sim: WeChatPaySimulator, keys: Keys, clock: Clock, **extra: Any
) -> WeChatPayProvider:
    """A certificate-mode merchant that trusts nothing yet (it bootstraps by downloading)."""
    settings: dict[str, Any] = {
        "base_url": sim.url,
        "mchid": MCHID,
        "appid": APPID,
        "merchant_serial_no": MERCHANT_SERIAL,
        "merchant_private_key_pem": keys.merchant_private_pem,
        "api_v3_key": keys.api_v3_key,
        "key_mode": "platform_certificate",
        "certificate_refresh_s": REFRESH_S,
        "certificate_min_refresh_gap_s": GAP_S,
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
    }
    return WeChatPayProvider(WeChatPayConfig(**(settings | extra)), clock=clock)


def create_and_pay(provider: WeChatPayProvider, sim: WeChatPaySimulator, notify_url: str) -> str:
    request = create_request(100, notify_url=notify_url)
    provider.create(request)
    sim.pay(request.out_trade_no)
    return request.out_trade_no


# -- download, decrypt, verify ---------------------------------------------------------------------
def test_certificates_are_downloaded_once_and_their_serial_sent_on_requests(
    cert_sim: WeChatPaySimulator, keys: Keys, clock: Clock
) -> None:
    provider = cert_provider(cert_sim, keys, clock)
    request = create_request(500)

    provider.create(request)
    status = provider.query(PaymentRef(request.out_trade_no))

    assert status.state is PaymentState.PENDING
    assert cert_sim.certificate_downloads == 1  # the first call bootstraps, the second reuses
    serial = cert_sim.platform_serial
    # The download itself names no key; every business request names the certificate we hold.
    assert cert_sim.request_serials == {"": 1, serial: 2}


def test_response_signed_with_a_new_serial_downloads_once_then_verifies(
    cert_sim: WeChatPaySimulator, keys: Keys, clock: Clock
) -> None:
    provider = cert_provider(cert_sim, keys, clock)
    request = create_request(700)
    provider.create(request)
    control = cert_sim.url + "/_sim/certificates"  # the rotation as a harness would drive it
    new = requests.post(control, json={"action": "publish"}, timeout=5).json()["serials"][-1]
    switched = requests.post(control, json={"action": "switch", "serial": new}, timeout=5)
    assert switched.json()["signing"] == new
    clock.advance(GAP_S + 1)

    status = provider.query(PaymentRef(request.out_trade_no))

    assert status.state is PaymentState.PENDING
    assert cert_sim.certificate_downloads == 2
    provider.query(PaymentRef(request.out_trade_no))
    assert cert_sim.certificate_downloads == 2  # known now: no further download
    assert cert_sim.request_serials[new] == 1  # the newest certificate is the one we name


def test_forged_serial_is_refused_after_one_download_per_interval(
    cert_sim: WeChatPaySimulator, keys: Keys, clock: Clock
) -> None:
    provider = cert_provider(cert_sim, keys, clock)
    provider.create(create_request(100))
    clock.advance(GAP_S + 1)
    resource = {"mchid": MCHID, "appid": APPID, "out_trade_no": "T1", "trade_state": "SUCCESS"}

    for _ in range(5):
        headers, body = cert_sim.build_notification(
            "TRANSACTION.SUCCESS", resource, serial="6F4515299B63E8B3DDFEEF69DA0F5F988B89D9C1"
        )
        with pytest.raises(SignatureInvalid, match="unknown Wechatpay-Serial"):
            provider.parse_notification(headers, body)

    assert cert_sim.certificate_downloads == 2  # bootstrap + one for the first forgery


@pytest.mark.parametrize(
    "option",
    ["tamper_certificates", "corrupt_response_signatures"],
    ids=["certificate-not-ours", "answer-signature-broken"],
)
def test_tampered_certificate_list_is_refused_and_nothing_is_sent(
    cert_sim: WeChatPaySimulator, keys: Keys, clock: Clock, option: str
) -> None:
    cert_sim.set_options(**{option: True})
    provider = cert_provider(cert_sim, keys, clock)

    with pytest.raises(SignatureInvalid):
        provider.create(create_request(100))

    assert cert_sim.certificate_downloads == 1
    assert cert_sim.ledger()["orders"] == {}  # no request went out unverifiable


def test_pinned_certificate_verifies_the_first_download(
    cert_sim: WeChatPaySimulator, keys: Keys, clock: Clock
) -> None:
    pinned = {cert_sim.platform_serial: cert_sim.platform_public_key_pem}
    provider = cert_provider(cert_sim, keys, clock, platform_public_keys=pinned)
    provider.create(create_request(100))
    assert cert_sim.certificate_downloads == 1


def test_sim_refuses_a_request_naming_a_key_it_does_not_have(
    sim: WeChatPaySimulator, keys: Keys
) -> None:
    _, stranger = rsa_pems()
    both = {
        "PUB_KEY_ID_0000000000BOGUS": stranger,
        sim.platform_serial: sim.platform_public_key_pem,
    }
    provider = make_provider(sim, keys, platform_public_keys=both)

    with pytest.raises(ProviderRejected) as err:
        provider.create(create_request(100))

    assert err.value.code == "PARAM_ERROR" and "Wechatpay-Serial" in str(err.value)
    assert sim.ledger()["orders"] == {}


# -- public-key mode -------------------------------------------------------------------------------
def test_public_key_mode_sends_its_key_id_and_never_downloads(
    provider: WeChatPayProvider, sim: WeChatPaySimulator
) -> None:
    provider.create(create_request(100))
    assert sim.request_serials == {sim.platform_serial: 1}
    assert sim.platform_serial.startswith("PUB_KEY_ID_")
    assert sim.certificate_downloads == 0


def test_certificate_mode_against_a_public_key_merchant_is_unavailable(
    sim: WeChatPaySimulator, keys: Keys, clock: Clock
) -> None:
    provider = cert_provider(sim, keys, clock)
    with pytest.raises(ProviderUnavailable) as err:
        provider.create(create_request(100))
    assert err.value.code == "SYSTEM_ERROR"  # WeChat's answer to merchants on public keys
    assert sim.ledger()["orders"] == {}


# -- rotation in the middle of a run ---------------------------------------------------------------
def test_certificate_rotation_in_the_middle_of_a_run_refuses_and_loses_nothing(
    cert_sim: WeChatPaySimulator, keys: Keys, clock: Clock, receiver: Receiver
) -> None:
    provider = cert_provider(cert_sim, keys, clock)
    old = cert_sim.platform_serial
    paid: list[str] = []
    notes: list[Notification] = []
    signed_by: set[str] = set()

    def run(n: int) -> None:
        paid.extend(create_and_pay(provider, cert_sim, receiver.url) for _ in range(n))

    def webhook() -> None:
        """The merchant's webhook handles each notification as it arrives."""
        for headers, body in receiver.wait_for(len(paid))[len(notes) :]:
            signed_by.add(headers["wechatpay-serial"])
            notes.append(provider.parse_notification(headers, body))

    run(3)  # before: one certificate
    webhook()
    new = cert_sim.publish_certificate()
    run(2)  # published, not signing yet: the old one still signs everything
    webhook()
    clock.advance(REFRESH_S + 1)  # the periodic download learns the new one (both valid)
    cert_sim.set_options(hold_notifications=True)
    run(2)  # notifications signed with the old certificate, delivered after the switch
    cert_sim.switch_signing(new)
    run(2)  # signed with the new certificate
    cert_sim.set_options(hold_notifications=False)
    cert_sim.release_notifications()
    webhook()
    cert_sim.retire_certificate(old)
    clock.advance(REFRESH_S + 1)  # the next periodic download drops the retired one
    run(2)  # after
    webhook()

    assert signed_by == {old, new}  # the run really crossed the rotation
    assert all(n.kind is NotificationKind.PAYMENT for n in notes)
    assert all(n.status is not None and n.status.state is PaymentState.PAID for n in notes)
    assert sorted(n.out_trade_no or "" for n in notes) == sorted(paid)  # none lost
    assert [c["out_trade_no"] for c in cert_sim.ledger()["charges"]] == paid
    for no in paid:  # every order still verifies after the old certificate is gone
        assert provider.query(PaymentRef(no)).state is PaymentState.PAID
    # The bootstrap and two periodic downloads: the rotation forced no extra one.
    assert cert_sim.certificate_downloads == 3
    assert set(cert_sim.request_serials) == {"", old, new}
    assert cert_sim.certificate_info()["serials"] == [new]
