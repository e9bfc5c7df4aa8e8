"""The provider webhooks of the running API (uvicorn on 127.0.0.1, real PostgreSQL and Redis,
the provider simulators' generated keys in its settings).

Properties: a body correctly signed with the provider's real key but with generated content
(wrong types, missing fields, unknown statuses, amounts out of range) never gets a 5xx and never
moves an order; a provider the deployment does not use answers 404 (not 500).

Size: the examples per provider are few by default and more with ``RELIABILITY_FULL=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from settings import get_settings
from tests.security.fuzz_api_support import FULL, HYPOTHESIS, Target

WEBHOOK_EXAMPLES = 300 if FULL else 40


def test_webhooks_of_providers_not_configured_are_404_not_500(db, monkeypatch):
    """A deployment that does not use a provider has no webhook for it: anyone posting there
    gets 404 (it used to be a 500 from the missing settings)."""
    from fastapi.testclient import TestClient

    from adapters import registry
    from api.app import create_app

    for name in ("ALIPAY_APP_ID", "WECHATPAY_MCHID", "STRIPE_SECRET_KEY", "KUAIDI100_KEY"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    registry.reset()
    try:
        with TestClient(create_app(), raise_server_exceptions=False) as client:
            for provider in ("alipay", "wechatpay", "stripe", "kuaidi100"):
                r = client.post(f"/webhooks/{provider}", content=b"notify_id=1&sign=x")
                assert r.status_code == 404, (provider, r.status_code, r.text)
                assert r.json()["error"] == "not_found"
    finally:
        registry.reset()


# --- webhooks: correctly signed nonsense --------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False), st.text(max_size=40),
)  # fmt: skip
_junk = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=12,
)  # fmt: skip


def _mostly(*good: Any) -> Any:
    """Usually one of ``good`` (so parsing gets deep), sometimes anything at all."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(good), _junk)


def _object(required: dict[str, Any], optional: dict[str, Any]) -> Any:
    return st.fixed_dictionaries(required, optional=optional)


def _alipay(t: Target, trade: str) -> Any:
    values = st.text(max_size=30) | st.sampled_from(
        ["", "10.00", "0.01", "-1", "1e400", "NaN", "abc", "2024-01-01 10:00:00", "x" * 300]
    )
    return _object(
        {
            "notify_id": _mostly("n-1", "n-2", "") | st.text(max_size=20),
            "app_id": st.sampled_from(["2021000000000001", "2021000000000001", "other"]),
            "out_trade_no": st.sampled_from([trade, trade, "unknown-trade", ""]),
            "trade_status": st.sampled_from(
                ["TRADE_SUCCESS", "TRADE_FINISHED", "TRADE_CLOSED", "WAIT_BUYER_PAY", "", "bogus"]
            ),
        },
        {
            k: values
            for k in (
                "notify_type",
                "total_amount",
                "receipt_amount",
                "refund_fee",
                "gmt_refund",
                "out_biz_no",
                "trade_no",
                "gmt_payment",
                "seller_id",
                "buyer_pay_amount",
                "currency",
            )
        },
    ).map(lambda d: {k: v if isinstance(v, str) else json.dumps(v) for k, v in d.items()})


def _wechat_resource(trade: str) -> Any:
    amount = _object(
        {},
        {
            "total": _mostly(1000, 1, 0, -1, 2**63),
            "payer_total": _scalars,
            "currency": _mostly("CNY", "USD", ""),
            "refund": _scalars,
        },
    )
    return _object({
        "mchid": st.sampled_from(["1900000001", "1900000001", "1900000001", "1900000002"]),
        "out_trade_no": _mostly(trade, "unknown"), "out_refund_no": _mostly("r-1", ""),
        "trade_state": _mostly("SUCCESS", "CLOSED", "REFUND", "NOTPAY", "PAYERROR"),
        "refund_status": _mostly("SUCCESS", "CLOSED", "ABNORMAL", "PROCESSING"),
    }, {
        "amount": amount | _junk, "transaction_id": _scalars,
        "success_time": _mostly("2024-01-01T10:00:00+08:00", "yesterday"), "junk": _junk,
    })  # fmt: skip


def _stripe_event(trade: str) -> Any:
    obj = _object({
        "metadata": _object({}, {"out_trade_no": _mostly(trade, "unknown"),
                                 "refund_no": _scalars}) | _junk,
        "id": _mostly("pi_1", "ch_1", "re_1"), "amount": _mostly(1000, 0, -1, 2**70),
        "currency": _mostly("cny", "usd", "", "xx"),
        "status": _mostly("succeeded", "canceled", "requires_payment_method", "pending"),
    }, {
        "amount_received": _mostly(1000, 0), "amount_refunded": _mostly(0, 1000),
        "payment_intent": _scalars, "junk": _junk,
        "refunds": _object({}, {"data": st.lists(_junk, max_size=2)}),
    })  # fmt: skip
    return _object({
        "id": _mostly("evt_1", "evt_2", ""),
        "type": _mostly("payment_intent.succeeded", "payment_intent.canceled",
                        "payment_intent.payment_failed", "charge.refunded",
                        "charge.refund.updated", "x"),
        "data": _object({"object": obj}, {}) | _junk,
    }, {"created": _scalars})  # fmt: skip


def _kuaidi100_param(trade: str) -> Any:
    step = _object(
        {},
        {
            "time": _mostly("2024-01-01 10:00:00", "bad", ""),
            "ftime": _scalars,
            "context": _scalars,
            "status": _scalars,
            "areaCode": _scalars,
        },
    )
    last = _object({"com": _mostly("yuantong", "sf"), "nu": _mostly(trade, "YT1234567")}, {
        "state": _mostly("0", "1", "3", "5", "14", "x", 3),
        "ischeck": _scalars, "data": st.lists(step | _junk, max_size=3) | _junk,
    })  # fmt: skip
    return _object({"status": _mostly("polling", "shutdown", "abort", "updateall")},
                   {"message": _mostly("", "3天查询无记录"), "lastResult": last | _junk,
                    "autoCheck": _scalars})  # fmt: skip


def _signed(t: Target, provider: str, draw: Any) -> tuple[bytes, dict[str, str]]:
    """A notification signed with the provider's real key whose content is generated."""
    trade = t.order_id.replace("-", "")
    if provider == "alipay":
        body = t.stack.alipay.sign_notification(draw(_alipay(t, trade)))
        return body, {"Content-Type": "application/x-www-form-urlencoded"}
    if provider == "wechatpay":
        kind = draw(st.sampled_from(["TRANSACTION.SUCCESS", "REFUND.SUCCESS", "REFUND.ABNORMAL",
                                     "REFUND.CLOSED", "TRANSACTION.X"]))  # fmt: skip
        headers, body = t.stack.wechatpay.build_notification(kind, draw(_wechat_resource(trade)))
        return body, headers
    if provider == "stripe":
        body = json.dumps(draw(_stripe_event(trade))).encode()
        return body, {"Content-Type": "application/json",
                      "Stripe-Signature": t.stack.stripe.sign(body)}  # fmt: skip
    param = json.dumps(draw(_kuaidi100_param(trade)), ensure_ascii=False)
    salt = os.environ["KUAIDI100_CALLBACK_SALT"]
    sign = hashlib.md5((param + salt).encode()).hexdigest().upper()  # the protocol's MD5
    form = urlencode({"param": param, "sign": sign}).encode()
    return form, {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("provider", ["alipay", "wechatpay", "stripe", "kuaidi100"])
def test_signed_nonsense_notifications_never_5xx(target, provider):
    """A body signed with the provider's real key but with arbitrary content (wrong types, missing
    fields, unknown statuses, amounts out of range) is parsed after verification: it may be
    acknowledged or refused, but it must never crash the handler, and never move the order
    (it has no payment, so no notification can be for it)."""
    statuses: Counter[int] = Counter()
    session = requests.Session()

    @settings(HYPOTHESIS, max_examples=WEBHOOK_EXAMPLES)
    @given(data=st.data())
    def run(data: Any) -> None:
        body, headers = _signed(target, provider, data.draw)
        r = session.post(f"{target.base_url}/webhooks/{provider}", data=body, headers=headers,
                         timeout=30)  # fmt: skip
        statuses[r.status_code] += 1
        assert r.status_code < 500, (r.status_code, r.text[:300], body[:300])

    run()
    print(f"signed nonsense {provider}: {dict(statuses)}")
    # Some were acknowledged: the signatures are real, so parsing past verification was fuzzed.
    assert sum(n for code, n in statuses.items() if 200 <= code < 300) > 0, statuses
    order = requests.get(f"{target.base_url}/v1/orders/{target.order_id}",
                         headers={"X-API-Key": target.api_key}, timeout=30).json()  # fmt: skip
    assert order["status"] == "RECEIVED" and order["payment"] is None
