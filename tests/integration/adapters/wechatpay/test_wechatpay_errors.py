"""WeChat Pay v3 adapter against the WeChat Pay simulator over real HTTP on 127.0.0.1: response
signature verification and the classification of transport faults and error answers.

Every key (merchant API key, platform key, APIv3 key) is generated at test time. Outcomes are
asserted on the adapter's results and on the simulator's ledger.
"""

from __future__ import annotations

from typing import Any

import pytest

from adapters.payments.base import (
    ClosePayment,
    PaymentRef,
    ProviderRejected,
    ProviderUnavailable,
    SignatureInvalid,
)
from adapters.payments.wechatpay import WeChatPayProvider
from simulators.wechatpay import WeChatPaySimulator
from tests.integration.adapters.wechatpay.support import (
    Keys,
    create_request,
    make_provider,
    new_trade_no,
    rsa_pems,
)


# -- response verification and error classification ------------------------------------------------
def test_tampered_response_signature_raises_signature_invalid(
    provider: WeChatPayProvider, sim: WeChatPaySimulator
) -> None:
    request = create_request(300)
    provider.create(request)
    sim.set_options(corrupt_response_signatures=True)
    with pytest.raises(SignatureInvalid):
        provider.query(PaymentRef(request.out_trade_no))
    with pytest.raises(SignatureInvalid):  # 204 with an empty body is verified too
        provider.close(ClosePayment(PaymentRef(request.out_trade_no), "close-1"))


def test_response_signed_by_unknown_platform_key_raises(
    sim: WeChatPaySimulator, keys: Keys
) -> None:
    _, other_public = rsa_pems()
    provider = make_provider(sim, keys, platform_public_keys={sim.platform_serial: other_public})
    with pytest.raises(SignatureInvalid):
        provider.create(create_request(100))


@pytest.mark.parametrize(
    ("faults", "code"),
    [
        ({"error_rate": 1.0}, "SYSTEM_ERROR"),
        ({"timeout_rate": 1.0, "hang_seconds": 1.0}, None),
        ({"reset_rate": 1.0}, None),
        ({"business_error": "FREQUENCY_LIMITED"}, "FREQUENCY_LIMITED"),
    ],
    ids=["5xx", "timeout", "reset", "429"],
)
def test_transient_failures_raise_provider_unavailable(
    faults: dict[str, Any], code: str | None, sim: WeChatPaySimulator, keys: Keys
) -> None:
    provider = make_provider(sim, keys, read_timeout=0.3)
    sim.set_faults(**faults)
    with pytest.raises(ProviderUnavailable) as err:
        provider.create(create_request(100))
    assert err.value.retryable and err.value.code == code


def test_business_error_raises_provider_rejected_with_code(
    provider: WeChatPayProvider, sim: WeChatPaySimulator
) -> None:
    sim.set_faults(business_error="TRADE_OVERDUE")
    with pytest.raises(ProviderRejected) as err:
        provider.query(PaymentRef(new_trade_no()))
    assert err.value.code == "TRADE_OVERDUE" and not err.value.retryable


def test_bad_request_signature_is_sign_error(sim: WeChatPaySimulator, keys: Keys) -> None:
    wrong_private, _ = rsa_pems()
    provider = make_provider(sim, keys, merchant_private_key_pem=wrong_private)
    with pytest.raises(ProviderRejected) as err:
        provider.create(create_request(100))
    assert err.value.code == "SIGN_ERROR"
    assert sim.ledger()["orders"] == {}


def test_wrong_mchid_is_no_auth(sim: WeChatPaySimulator, keys: Keys) -> None:
    provider = make_provider(sim, keys, mchid="1900009999")
    with pytest.raises(ProviderRejected) as err:
        provider.query(PaymentRef(new_trade_no()))
    assert err.value.code == "NO_AUTH"
