"""The Alipay adapter against the Alipay simulator, over real HTTP on 127.0.0.1: response
signature problems, requests the gateway refuses, transport faults and the classification of
business errors.

All RSA keys are generated here at test time; the simulator generates its own Alipay key pair.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.payments.alipay import AlipayProvider
from adapters.payments.base import (
    PaymentRef,
    ProviderRejected,
    ProviderUnavailable,
    SignatureInvalid,
)
from simulators.alipay import AlipaySimulator
from tests.integration.adapters.alipay.support import (
    create_request,
    make_provider,
    new_key,
    paid_trade,
    refund,
)


# -- response signatures, gateway errors, faults -------------------------------------------------
@pytest.mark.parametrize("mode", ["corrupt", "missing", "tamper"])
def test_response_signature_problems_raise_signature_invalid(
    provider: AlipayProvider, sim: AlipaySimulator, mode: str
) -> None:
    paid_trade(provider, sim, "S-1")
    sim.configure(response_sign=mode)
    with pytest.raises(SignatureInvalid):
        provider.query(PaymentRef("S-1"))
    with pytest.raises(SignatureInvalid):
        provider.refund(refund("S-1", "RF-1", "1.00"))
    assert len(sim.ledger()["refunds"]) == 1  # the refund happened; only its answer was bad


def test_request_signed_with_wrong_key_is_refused_by_gateway(
    sim: AlipaySimulator,
) -> None:
    wrong_key = make_provider(sim, new_key())
    with pytest.raises(ProviderRejected) as exc:
        wrong_key.create(create_request("G-1"))
    assert exc.value.code == "isv.invalid-signature"
    assert sim.ledger()["trades"] == {}


def test_wrong_app_id_is_refused_by_gateway(
    sim: AlipaySimulator, app_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(ProviderRejected) as exc:
        make_provider(sim, app_key, app_id="2021000000000999").create(create_request("G-2"))
    assert exc.value.code == "isv.invalid-app-id"
    assert sim.ledger()["trades"] == {}


@pytest.mark.parametrize(
    "fault",
    [{"error_rate": 1.0}, {"timeout_rate": 1.0, "hang_seconds": 1.5}, {"reset_rate": 1.0}],
    ids=["5xx", "timeout", "reset"],
)
def test_transport_faults_are_unavailable_and_retry_is_safe(
    provider: AlipayProvider, sim: AlipaySimulator, fault: dict[str, float]
) -> None:
    sim.set_faults(**fault)
    with pytest.raises(ProviderUnavailable) as exc:
        provider.create(create_request("F-1"))
    assert exc.value.retryable is True
    timed_out = "timeout_rate" in fault  # the held request is still served after the fault
    if not timed_out:
        assert sim.ledger()["trades"] == {}
    sim.set_faults(error_rate=0.0, timeout_rate=0.0, reset_rate=0.0)
    created = provider.create(create_request("F-1"))
    assert list(sim.ledger()["trades"]) == ["F-1"]
    assert created.instructions["qr_code"] == sim.ledger()["trades"]["F-1"]["qr_code"]


@pytest.mark.parametrize(
    ("sub_code", "error"),
    [
        ("ACQ.TRADE_BUYER_NOT_MATCH", ProviderRejected),
        ("ACQ.ACCESS_FORBIDDEN", ProviderRejected),
        ("ACQ.SYSTEM_ERROR", ProviderUnavailable),
        ("isp.unknow-error", ProviderUnavailable),  # code 20000
    ],
)
def test_business_error_fault_is_classified(
    provider: AlipayProvider, sim: AlipaySimulator, sub_code: str, error: type[Exception]
) -> None:
    sim.set_faults(business_error=sub_code)
    with pytest.raises(error) as exc:
        provider.query(PaymentRef("B-1"))
    assert type(exc.value) is error
    assert getattr(exc.value, "code", None) == sub_code
