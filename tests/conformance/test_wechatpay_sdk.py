"""WeChat Pay v3 conformance: wechatpayv3 (minibear2021, the widely used Python SDK) against our
simulator and our adapter.

1. The SDK is the merchant, our simulator is WeChat Pay, in both key modes (a WeChat Pay public
   key ``PUB_KEY_ID_…``, and platform certificates the SDK downloads from ``/v3/certificates``
   and decrypts itself): Native order, query, refund, refund query, close (a 204 whose empty
   body is signed), trade bill + download. The SDK verifies every 2xx answer's signature
   itself (``Core.request`` raises on a bad one); the payment and refund notifications the
   simulator delivers are verified and decrypted by the SDK's ``callback``.
2. Our adapter is the merchant, the SDK checks it: the Authorization header our adapter really
   sent (captured by a recording proxy) must equal, signature included, what the SDK's
   ``build_authorization`` makes for the same method, URL, timestamp, nonce and body.

The SDK has its gateway hard-coded (``Core._gate_way``) and, in certificate mode, downloads the
certificates from inside its constructor; :func:`sdk_for` points it at the simulator before that
download (the only private attribute the suite touches on this SDK).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import secrets
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import wechatpayv3.utils
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.core import Core

from adapters.payments.base import PaymentRef
from adapters.payments.wechatpay import WeChatPayConfig, WeChatPayProvider
from simulators.harness import Response
from simulators.wechatpay import WeChatPaySimulator
from tests.conformance.support import Sink, recording, sink
from tests.conftest import wait_until
from tests.integration.adapters.wechatpay.support import (
    APPID,
    MCHID,
    MERCHANT_SERIAL,
    Keys,
    create_request,
    refund_request,
    rsa_pems,
)

CST = timezone(timedelta(hours=8))
AUTH_PARAM = re.compile(r'(\w+)="([^"]*)"')


@pytest.fixture(scope="module")
def keys() -> Keys:
    private, public = rsa_pems()
    return Keys(private, public, secrets.token_hex(16).encode("ascii"))  # 32 ASCII bytes


def start_sim(keys: Keys, key_mode: str) -> WeChatPaySimulator:
    return WeChatPaySimulator(
        mchid=MCHID, appid=APPID, merchant_serial_no=MERCHANT_SERIAL,
        merchant_public_key_pem=keys.merchant_public_pem, api_v3_key=keys.api_v3_key,
        key_mode=key_mode, notify_retry_delays=(0.1, 0.2),
    ).start()  # fmt: skip


@pytest.fixture(scope="module", params=["public_key", "platform_certificate"])
def sim(request: pytest.FixtureRequest, keys: Keys) -> Iterator[WeChatPaySimulator]:
    simulator = start_sim(keys, request.param)
    yield simulator
    simulator.stop()


@pytest.fixture
def merchant() -> Iterator[Sink]:
    with sink(Response(204)) as s:
        yield s


def sdk_for(
    sim: WeChatPaySimulator,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    *,
    notify_url: str | None = None,
    public_key_pem: bytes | None = None,
) -> WeChatPay:
    """A wechatpayv3 client talking to ``sim`` (public-key mode when ``sim`` uses one)."""
    mode: dict[str, str] = {}
    if sim.key_mode == "public_key":
        pem = public_key_pem or sim.platform_public_key_pem
        mode = {"public_key": pem.decode(), "public_key_id": sim.platform_serial}
    with monkeypatch.context() as m:  # no download from api.mch.weixin.qq.com in __init__
        m.setattr(Core, "_init_certificates", lambda _self: None)
        client = WeChatPay(
            wechatpay_type=WeChatPayType.NATIVE, mchid=MCHID,
            private_key=keys.merchant_private_pem.decode(), cert_serial_no=MERCHANT_SERIAL,
            appid=APPID, apiv3_key=keys.api_v3_key.decode(), notify_url=notify_url, **mode,
        )  # fmt: skip
    client._core._gate_way = sim.url
    if sim.key_mode == "platform_certificate":
        client._core._init_certificates()  # downloads, decrypts and loads them, or raises
    return client


def ok(answer: tuple[int, Any], status: int = 200) -> Any:
    code, body = answer
    assert code == status, body
    return json.loads(body) if body else None


def test_sdk_pays_queries_refunds_closes_and_decrypts_notifications(
    sim: WeChatPaySimulator, keys: Keys, merchant: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.reset()
    client = sdk_for(sim, keys, monkeypatch, notify_url=merchant.url)
    trade_no = "T" + secrets.token_hex(8)
    expire = (datetime.now(CST) + timedelta(hours=1)).isoformat(timespec="seconds")
    created = ok(client.pay("会员卡 #1 & co", trade_no, {"total": 1234}, time_expire=expire))
    assert created["code_url"].startswith("weixin://wxpay/bizpayurl?pr=")
    assert ok(client.query(out_trade_no=trade_no))["trade_state"] == "NOTPAY"

    sim.pay(trade_no)
    paid = ok(client.query(out_trade_no=trade_no))
    assert (paid["trade_state"], paid["amount"]["total"]) == ("SUCCESS", 1234)
    by_id = ok(client.query(transaction_id=paid["transaction_id"]))
    assert by_id["out_trade_no"] == trade_no

    note = client.callback(merchant.first().headers, merchant.first().body)
    assert note is not None, "the SDK refused the simulator's payment notification"
    assert note["event_type"] == "TRANSACTION.SUCCESS"
    assert (note["resource"]["out_trade_no"], note["resource"]["trade_state"]) == (
        trade_no, "SUCCESS",
    )  # fmt: skip

    refund_no = "R" + secrets.token_hex(8)
    refund = ok(
        client.refund(
            out_refund_no=refund_no,
            out_trade_no=trade_no,
            reason="conformance",
            amount={"refund": 234, "total": 1234, "currency": "CNY"},
        )
    )
    assert (refund["out_refund_no"], refund["amount"]["refund"]) == (refund_no, 234)
    assert ok(client.query_refund(out_refund_no=refund_no))["refund_id"] == refund["refund_id"]

    def refund_note() -> dict[str, Any] | None:
        for delivery in list(merchant.received):
            parsed = client.callback(delivery.headers, delivery.body)
            if parsed and parsed["event_type"].startswith("REFUND."):
                return dict(parsed)
        return None

    decrypted = wait_until(refund_note, 20.0, 0.02)
    assert decrypted["resource"]["out_refund_no"] == refund_no
    assert decrypted["resource"]["amount"]["refund"] == 234

    unpaid = "T" + secrets.token_hex(8)
    ok(client.pay("to close", unpaid, {"total": 100}))
    assert ok(client.close(unpaid), 204) is None  # the SDK verified the signed empty body
    assert ok(client.query(out_trade_no=unpaid))["trade_state"] == "CLOSED"


def test_sdk_downloads_the_trade_bill(
    sim: WeChatPaySimulator, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.reset()
    client = sdk_for(sim, keys, monkeypatch, notify_url="https://127.0.0.1:1/notify")
    trade_no = "T" + secrets.token_hex(8)
    ok(client.pay("bill me", trade_no, {"total": 1000}))
    sim.pay(trade_no)
    today = datetime.now(CST).date()
    tomorrow_11 = datetime.combine(today + timedelta(days=1), datetime.min.time(), CST)
    sim.bills.control({"action": "now", "at": (tomorrow_11 + timedelta(hours=11)).isoformat()})

    applied = ok(client.trade_bill(today.isoformat()))
    assert applied["hash_type"] == "SHA1"
    code, file = client.download_bill(applied["download_url"])
    assert code == 200 and isinstance(file, bytes)
    text = gzip.decompress(file)
    assert hashlib.sha1(text).hexdigest() == applied["hash_value"]
    assert trade_no in text.decode("utf-8")


def test_sdk_rejects_a_wrong_key(
    sim: WeChatPaySimulator, keys: Keys, merchant: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verifications above can fail: the SDK must refuse answers and notifications when it
    holds another key (public-key mode) or another APIv3 key (both modes)."""
    sim.reset()
    client = sdk_for(sim, keys, monkeypatch, notify_url=merchant.url)
    trade_no = "T" + secrets.token_hex(8)
    ok(client.pay("wrong key", trade_no, {"total": 100}))
    sim.pay(trade_no)
    delivery = merchant.first()
    client._core._apiv3_key = secrets.token_hex(16)
    assert client.callback(delivery.headers, delivery.body) is None
    if sim.key_mode == "public_key":
        other = rsa_pems()[1]
        stranger = sdk_for(sim, keys, monkeypatch, public_key_pem=other)
        with pytest.raises(Exception, match="failed to verify the signature"):
            stranger.query(out_trade_no=trade_no)


def test_sdk_follows_a_certificate_rotation(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """WeChat's documented rotation, as the SDK lives it: a new certificate is published, then
    signs; the SDK meets an unknown ``Wechatpay-Serial``, downloads the list again and verifies."""
    sim = start_sim(keys, "platform_certificate")
    try:
        client = sdk_for(sim, keys, monkeypatch, notify_url="https://127.0.0.1:1/notify")
        trade_no = "T" + secrets.token_hex(8)
        ok(client.pay("rotate", trade_no, {"total": 100}))
        new = sim.publish_certificate()
        sim.switch_signing(new)
        assert ok(client.query(out_trade_no=trade_no))["trade_state"] == "NOTPAY"
        sim.retire_certificate()
        assert ok(client.query(out_trade_no=trade_no))["trade_state"] == "NOTPAY"
        assert sim.certificate_info()["downloads"] == 2  # at start, and on meeting the new one
        assert client._core._certificates[-1].serial_number == int(new, 16)
    finally:
        sim.stop()


# -- our adapter's requests, checked by the SDK's signer ------------------------------------------
def _sdk_authorization(
    keys: Keys,
    method: str,
    raw_path: str,
    body: bytes,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """What wechatpayv3's ``build_authorization`` writes for this request, at the adapter's
    timestamp and nonce (its clock is frozen to the adapter's for the call)."""
    clock = types.SimpleNamespace(time=lambda: int(auth["timestamp"]))
    monkeypatch.setattr(wechatpayv3.utils, "time", clock)
    header = wechatpayv3.utils.build_authorization(
        raw_path, method, MCHID, MERCHANT_SERIAL,
        wechatpayv3.utils.load_private_key(keys.merchant_private_pem.decode()),
        data=body.decode("utf-8"), nonce_str=auth["nonce_str"],
    )  # fmt: skip
    schema, _, params = header.partition(" ")
    assert schema == "WECHATPAY2-SHA256-RSA2048"
    return dict(AUTH_PARAM.findall(params))


def test_adapter_authorization_equals_the_sdks(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = start_sim(keys, "public_key")
    try:
        with recording(sim.url) as proxy:
            provider = WeChatPayProvider(
                WeChatPayConfig(
                    base_url=proxy.url,
                    mchid=MCHID,
                    appid=APPID,
                    merchant_serial_no=MERCHANT_SERIAL,
                    merchant_private_key_pem=keys.merchant_private_pem,
                    api_v3_key=keys.api_v3_key,
                    platform_public_keys={sim.platform_serial: sim.platform_public_key_pem},
                )
            )
            request = create_request(1234, notify_url="https://127.0.0.1:1/wx/notify")
            provider.create(request)
            sim.pay(request.out_trade_no)
            ref = PaymentRef(request.out_trade_no)
            provider.query(ref)
            provider.refund(refund_request(ref, "R" + secrets.token_hex(8), 234, 1234))
    finally:
        sim.stop()
    checked = (
        ("POST", "/v3/pay/transactions/native"), ("GET", "/v3/pay/"),
        ("POST", "/v3/refund/domestic/refunds"),
    )  # fmt: skip
    for method, prefix in checked:
        sent = proxy.only(method, prefix)
        schema, _, params = sent.headers["authorization"].partition(" ")
        assert schema == "WECHATPAY2-SHA256-RSA2048"
        ours = dict(AUTH_PARAM.findall(params))
        sdk = _sdk_authorization(keys, method, sent.raw_path, sent.body, ours, monkeypatch)
        assert ours == sdk, f"{method} {sent.raw_path}: our Authorization differs from the SDK's"
    assert "?mchid=" in proxy.only("GET", "/v3/pay/").raw_path  # the query string was signed


def test_sdk_signer_comparison_can_fail(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above is not vacuous: one changed body byte changes the SDK's signature."""
    auth = {"timestamp": str(int(datetime.now(UTC).timestamp())), "nonce_str": "N" * 32}
    body = b'{"a":1}'
    first = _sdk_authorization(keys, "POST", "/v3/x", body, auth, monkeypatch)
    second = _sdk_authorization(keys, "POST", "/v3/x", body + b" ", auth, monkeypatch)
    assert first["signature"] != second["signature"]
