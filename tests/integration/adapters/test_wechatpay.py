"""WeChat Pay v3 adapter against the WeChat Pay simulator over real HTTP on 127.0.0.1.

Every key (merchant API key, platform key, APIv3 key) is generated at test time. Outcomes are
asserted on the adapter's results and on the simulator's ledger (orders, charges, refunds).
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from adapters.payments.base import (
    ClosePayment,
    CreatePayment,
    NotificationKind,
    PaymentProvider,
    PaymentRef,
    PaymentState,
    ProviderRejected,
    ProviderUnavailable,
    RefundRequest,
    RefundState,
    SignatureInvalid,
)
from adapters.payments.wechatpay import WeChatPayConfig, WeChatPayProvider
from domain.money import Money
from simulators.harness import Request, Response, SimulatorServer
from simulators.wechatpay import WeChatPaySimulator
from tests.conftest import wait_until

MCHID = "1900000001"
APPID = "wxd678efh567hg6787"
MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"

Headers = dict[str, str]


@dataclass(frozen=True)
class Keys:
    merchant_private_pem: bytes
    merchant_public_pem: bytes
    api_v3_key: bytes


def _rsa_pems() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


class Receiver:
    """A merchant webhook endpoint: records every delivery, answers from ``replies`` (else 204)."""

    def __init__(self) -> None:
        self.server = SimulatorServer("merchant-webhook").start()
        self.server.route("POST", "/notify", self._handle)
        self.received: list[tuple[Headers, bytes]] = []
        self.replies: list[int] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.server.url + "/notify"

    def _handle(self, req: Request) -> Response:
        with self._lock:
            self.received.append((req.headers, req.body))
            return Response(self.replies.pop(0) if self.replies else 204)

    def wait_for(self, count: int, timeout_s: float = 60.0) -> list[tuple[Headers, bytes]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(f"expected {count} deliveries, got {len(self.received)}")

    def clear(self) -> None:
        with self._lock:
            self.received.clear()
            self.replies.clear()


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys() -> Keys:
    private, public = _rsa_pems()
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


def make_provider(sim: WeChatPaySimulator, keys: Keys, **overrides: Any) -> WeChatPayProvider:
    settings: dict[str, Any] = {
        "base_url": sim.url,
        "mchid": MCHID,
        "appid": APPID,
        "merchant_serial_no": MERCHANT_SERIAL,
        "merchant_private_key_pem": keys.merchant_private_pem,
        "api_v3_key": keys.api_v3_key,
        "platform_public_keys": {sim.platform_serial: sim.platform_public_key_pem},
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
    }
    settings.update(overrides)
    return WeChatPayProvider(WeChatPayConfig(**settings))


@pytest.fixture
def provider(sim: WeChatPaySimulator, keys: Keys) -> WeChatPayProvider:
    return make_provider(sim, keys)


def new_trade_no() -> str:
    return "T" + uuid.uuid4().hex[:24]


def create_request(
    amount: int = 1234,
    *,
    out_trade_no: str | None = None,
    notify_url: str = "https://merchant.example/wechat/notify",
    currency: str = "CNY",
) -> CreatePayment:
    no = out_trade_no or new_trade_no()
    return CreatePayment(
        out_trade_no=no,
        idempotency_key=no,
        amount=Money(amount, currency),
        description="orderflow test order",
        notify_url=notify_url,
        expires_at=datetime(2099, 1, 1, tzinfo=UTC),
        metadata={"order_id": "42"},
    )


def paid_order(
    provider: WeChatPayProvider, sim: WeChatPaySimulator, amount: int, notify_url: str | None = None
) -> PaymentRef:
    request = create_request(amount, **({"notify_url": notify_url} if notify_url else {}))
    provider.create(request)
    sim.pay(request.out_trade_no)
    return PaymentRef(request.out_trade_no)


def refund_request(ref: PaymentRef, refund_no: str, amount: int, total: int) -> RefundRequest:
    return RefundRequest(
        ref=ref,
        refund_no=refund_no,
        amount=Money(amount, "CNY"),
        total=Money(total, "CNY"),
        reason="customer cancelled",
    )


# -- orders ----------------------------------------------------------------------------------------
def test_provider_satisfies_the_port(provider: WeChatPayProvider) -> None:
    assert isinstance(provider, PaymentProvider)
    assert provider.name == "wechatpay"


def test_native_order_pay_then_query_paid_with_exact_amount(
    provider: WeChatPayProvider, sim: WeChatPaySimulator
) -> None:
    request = create_request(1234)
    created = provider.create(request)
    assert created.instructions["code_url"].startswith("weixin://wxpay/bizpayurl?pr=")
    ref = PaymentRef(request.out_trade_no)
    pending = provider.query(ref)
    assert (pending.state, pending.raw_status) == (PaymentState.PENDING, "NOTPAY")

    sim.pay(request.out_trade_no)
    status = provider.query(ref)

    ledger = sim.ledger()
    assert status.state is PaymentState.PAID and status.raw_status == "SUCCESS"
    assert status.amount == Money(1234, "CNY")
    assert status.provider_ref == ledger["orders"][request.out_trade_no]["transaction_id"]
    assert status.paid_at is not None and status.paid_at.tzinfo is not None
    assert [(c["out_trade_no"], c["amount"]) for c in ledger["charges"]] == [
        (request.out_trade_no, 1234)
    ]


def test_identical_replay_returns_same_code_url_and_one_order(
    provider: WeChatPayProvider, sim: WeChatPaySimulator
) -> None:
    request = create_request(500)
    first = provider.create(request)
    second = provider.create(request)
    assert first.instructions == second.instructions
    assert list(sim.ledger()["orders"]) == [request.out_trade_no]


def test_conflicting_replay_is_rejected_and_changes_nothing(
    provider: WeChatPayProvider, sim: WeChatPaySimulator
) -> None:
    request = create_request(500)
    provider.create(request)
    with pytest.raises(ProviderRejected) as err:
        provider.create(create_request(501, out_trade_no=request.out_trade_no))
    assert err.value.code == "OUT_TRADE_NO_USED" and not err.value.retryable
    assert sim.ledger()["orders"][request.out_trade_no]["total"] == 500


def test_invalid_parameter_is_rejected_with_code(
    provider: WeChatPayProvider, sim: WeChatPaySimulator
) -> None:
    with pytest.raises(ProviderRejected) as err:
        provider.create(create_request(100, currency="USD"))
    assert err.value.code == "PARAM_ERROR" and "/amount/currency" in str(err.value)
    assert sim.ledger()["orders"] == {}


def test_query_unknown_order_is_not_found(provider: WeChatPayProvider) -> None:
    status = provider.query(PaymentRef(new_trade_no()))
    assert (status.state, status.raw_status) == (PaymentState.NOT_FOUND, "ORDER_NOT_EXIST")


def test_close_unpaid_order(provider: WeChatPayProvider, sim: WeChatPaySimulator) -> None:
    request = create_request(800)
    provider.create(request)
    ref = PaymentRef(request.out_trade_no)

    result = provider.close(ClosePayment(ref, idempotency_key="close-1"))
    again = provider.close(ClosePayment(ref, idempotency_key="close-1"))

    assert result.closed and result.status.state is PaymentState.CLOSED
    assert again.closed
    assert provider.query(ref).state is PaymentState.CLOSED
    assert sim.ledger()["orders"][request.out_trade_no]["trade_state"] == "CLOSED"
    with pytest.raises(ValueError):
        sim.pay(request.out_trade_no)  # a closed order cannot be paid any more
    assert sim.ledger()["charges"] == []


def test_close_paid_order_reports_paid(
    provider: WeChatPayProvider, sim: WeChatPaySimulator
) -> None:
    ref = paid_order(provider, sim, 900)
    result = provider.close(ClosePayment(ref, idempotency_key="close-1"))
    assert not result.closed
    assert result.status.state is PaymentState.PAID
    assert result.status.amount == Money(900, "CNY")
    assert sim.ledger()["orders"][ref.out_trade_no]["trade_state"] == "SUCCESS"


# -- refunds ---------------------------------------------------------------------------------------
def test_partial_then_full_refund_and_same_refund_no_refunds_once(
    provider: WeChatPayProvider, sim: WeChatPaySimulator
) -> None:
    ref = paid_order(provider, sim, 1000)

    first = provider.refund(refund_request(ref, "R1-" + ref.out_trade_no, 300, 1000))
    replay = provider.refund(refund_request(ref, "R1-" + ref.out_trade_no, 300, 1000))
    second = provider.refund(refund_request(ref, "R2-" + ref.out_trade_no, 700, 1000))

    assert first.state is RefundState.SUCCEEDED and first.amount == Money(300, "CNY")
    assert replay.provider_refund_ref == first.provider_refund_ref
    assert second.state is RefundState.SUCCEEDED and second.amount == Money(700, "CNY")
    ledger = sim.ledger()
    assert sorted(r["amount"] for r in ledger["refunds"]) == [300, 700]
    assert ledger["orders"][ref.out_trade_no]["refunded"] == 1000
    assert provider.query(ref).state is PaymentState.REFUNDED

    with pytest.raises(ProviderRejected) as err:
        provider.refund(refund_request(ref, "R3-" + ref.out_trade_no, 1, 1000))
    assert err.value.code == "NOTENOUGH"
    with pytest.raises(ProviderRejected) as err:  # same number, different amount
        provider.refund(refund_request(ref, "R1-" + ref.out_trade_no, 200, 1000))
    assert err.value.code == "INVALID_REQUEST"
    assert len(sim.ledger()["refunds"]) == 2


def test_refund_query_follows_processing_to_success(
    provider: WeChatPayProvider, sim: WeChatPaySimulator
) -> None:
    sim.set_options(refund_settle_after_ms=None)  # refunds stay PROCESSING until settled
    ref = paid_order(provider, sim, 600)
    refund_no = "R-" + ref.out_trade_no

    created = provider.refund(refund_request(ref, refund_no, 250, 600))
    pending = provider.query_refund(ref, refund_no)
    sim.settle_refund(refund_no)
    settled = provider.query_refund(ref, refund_no)

    assert created.state is RefundState.PENDING and pending.raw_status == "PROCESSING"
    assert settled.state is RefundState.SUCCEEDED and settled.raw_status == "SUCCESS"
    assert settled.amount == Money(250, "CNY")
    assert settled.provider_refund_ref == created.provider_refund_ref
    with pytest.raises(ProviderRejected) as err:
        provider.query_refund(ref, "R-unknown")
    assert err.value.code == "RESOURCE_NOT_EXISTS"


# -- notifications ---------------------------------------------------------------------------------
def test_payment_notification_is_retried_until_acknowledged_and_parses_to_paid(
    provider: WeChatPayProvider, sim: WeChatPaySimulator, receiver: Receiver
) -> None:
    receiver.replies = [500]  # the first delivery fails, WeChat must retry
    ref = paid_order(provider, sim, 4321, notify_url=receiver.url)

    deliveries = receiver.wait_for(2)
    notes = [provider.parse_notification(h, b) for h, b in deliveries]

    note = notes[0]
    assert note.kind is NotificationKind.PAYMENT and note.raw_type == "TRANSACTION.SUCCESS"
    assert note.out_trade_no == ref.out_trade_no
    assert note.status is not None and note.status.state is PaymentState.PAID
    assert note.status.amount == Money(4321, "CNY")
    assert note.status.provider_ref == sim.ledger()["orders"][ref.out_trade_no]["transaction_id"]
    assert {n.event_id for n in notes} == {note.event_id}  # a retry is the same event


def test_refund_notification_parses_to_refund(
    provider: WeChatPayProvider, sim: WeChatPaySimulator, receiver: Receiver
) -> None:
    ref = paid_order(provider, sim, 1000)
    request = replace(
        refund_request(ref, "R-" + ref.out_trade_no, 400, 1000), notify_url=receiver.url
    )
    result = provider.refund(request)

    headers, body = receiver.wait_for(1)[0]
    note = provider.parse_notification(headers, body)

    assert note.kind is NotificationKind.REFUND and note.raw_type == "REFUND.SUCCESS"
    assert note.out_trade_no == ref.out_trade_no
    assert note.refund is not None
    assert note.refund.refund_no == request.refund_no
    assert note.refund.state is RefundState.SUCCEEDED
    assert note.refund.amount == Money(400, "CNY")
    assert note.refund.provider_refund_ref == result.provider_refund_ref


def test_duplicate_and_out_of_order_notifications(
    provider: WeChatPayProvider, sim: WeChatPaySimulator, receiver: Receiver
) -> None:
    sim.set_options(hold_notifications=True, notify_copies=2)
    first = paid_order(provider, sim, 100, notify_url=receiver.url)
    second = paid_order(provider, sim, 200, notify_url=receiver.url)
    assert sim.release_notifications(reverse=True) == 2

    notes = [provider.parse_notification(h, b) for h, b in receiver.wait_for(4)]

    # Released newest first, 50 ms apart; on a loaded machine two deliveries can still swap,
    # so the adapter's contract is checked on the set: every copy parses, copies share an id.
    arrived = sorted(n.out_trade_no for n in notes)
    assert arrived == sorted([second.out_trade_no] * 2 + [first.out_trade_no] * 2)
    assert len({n.event_id for n in notes}) == 2  # duplicates share the event id


def _transaction(
    out_trade_no: str = "T0000001", mchid: str = MCHID, appid: str = APPID
) -> dict[str, Any]:
    return {
        "appid": appid,
        "mchid": mchid,
        "out_trade_no": out_trade_no,
        "transaction_id": "4200000000000000000000000001",
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "success_time": "2025-01-01T12:00:00+08:00",
        "amount": {"total": 1000, "payer_total": 1000, "currency": "CNY"},
    }


def _signed(sim: WeChatPaySimulator, **options: Any) -> tuple[Headers, bytes]:
    """A notification the simulator signs; ``mchid`` goes into the encrypted resource."""
    resource = _transaction(mchid=options.pop("mchid", MCHID), appid=options.pop("appid", APPID))
    return sim.build_notification("TRANSACTION.SUCCESS", resource, **options)


def forge_bad_signature(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    return _signed(sim, corrupt_signature=True)


def forge_attacker_key(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    """Well formed, but signed by someone else's key under our platform serial."""
    headers, body = _signed(sim)
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    message = f"{headers['Wechatpay-Timestamp']}\n{headers['Wechatpay-Nonce']}\n".encode()
    signature = attacker.sign(message + body + b"\n", padding.PKCS1v15(), hashes.SHA256())
    return {**headers, "Wechatpay-Signature": base64.b64encode(signature).decode()}, body


def forge_tampered_body(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    headers, body = _signed(sim)
    return headers, body.replace(b'"id":"EV-', b'"id":"EX-')


def forge_wrong_serial(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    return _signed(sim, serial="PUB_KEY_ID_0000UNKNOWN")


def forge_missing_signature(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    headers, body = _signed(sim)
    return {k: v for k, v in headers.items() if k != "Wechatpay-Signature"}, body


def forge_stale_timestamp(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    return _signed(sim, timestamp=int(time.time()) - 301)


def forge_future_timestamp(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    return _signed(sim, timestamp=int(time.time()) + 600)


def forge_bad_gcm_tag(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    return _signed(sim, corrupt_tag=True)  # correctly signed, but the ciphertext fails its tag


def forge_wrong_mchid(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    return _signed(sim, mchid="1900009999")  # genuine, but for another merchant


def forge_wrong_appid(sim: WeChatPaySimulator) -> tuple[Headers, bytes]:
    return _signed(sim, appid="wx0000000000000bad")  # our merchant, but another app's trade


Forgery = Callable[[WeChatPaySimulator], tuple[Headers, bytes]]

#: name → (forgery, text the SignatureInvalid message must contain: proves *which* check fired)
FORGERIES: dict[str, tuple[Forgery, str]] = {
    "bad_signature": (forge_bad_signature, "does not verify"),
    "attacker_key": (forge_attacker_key, "does not verify"),
    "tampered_body": (forge_tampered_body, "does not verify"),
    "wrong_serial": (forge_wrong_serial, "unknown Wechatpay-Serial"),
    "missing_signature": (forge_missing_signature, "missing"),
    "stale_timestamp": (forge_stale_timestamp, "Timestamp"),
    "future_timestamp": (forge_future_timestamp, "Timestamp"),
    "bad_gcm_tag": (forge_bad_gcm_tag, "GCM"),
    "wrong_mchid": (forge_wrong_mchid, "mchid"),
    "wrong_appid": (forge_wrong_appid, "appid"),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_notifications_raise_signature_invalid(
    name: str, provider: WeChatPayProvider, sim: WeChatPaySimulator
) -> None:
    forge, reason = FORGERIES[name]
    headers, body = forge(sim)
    with pytest.raises(SignatureInvalid, match=reason):
        provider.parse_notification(headers, body)


def test_notification_just_inside_tolerance_is_accepted(
    provider: WeChatPayProvider, sim: WeChatPaySimulator
) -> None:
    headers, body = sim.build_notification(
        "TRANSACTION.SUCCESS", _transaction(), timestamp=int(time.time()) - 290
    )
    note = provider.parse_notification({k.upper(): v for k, v in headers.items()}, body)
    assert note.status is not None and note.status.amount == Money(1000, "CNY")


def test_notification_replies(provider: WeChatPayProvider) -> None:
    ok, fail = provider.notification_reply(True), provider.notification_reply(False)
    assert (ok.status_code, ok.body) == (204, b"")
    assert fail.status_code == 500 and b'"code":"FAIL"' in fail.body


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
    _, other_public = _rsa_pems()
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
    wrong_private, _ = _rsa_pems()
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


# -- simulator control plane -----------------------------------------------------------------------
def test_http_control_plane_and_auto_pay(
    provider: WeChatPayProvider, sim: WeChatPaySimulator
) -> None:
    request = create_request(777)
    provider.create(request)
    resp = requests.post(
        sim.url + "/_sim/pay", json={"out_trade_no": request.out_trade_no}, timeout=5
    )
    assert resp.status_code == 200 and resp.json()["trade_state"] == "SUCCESS"
    ledger = requests.get(sim.url + "/_sim/ledger", timeout=5).json()
    assert ledger["charges"][0]["amount"] == 777

    requests.post(sim.url + "/_sim/options", json={"auto_pay_after_ms": 50}, timeout=5)
    auto = create_request(55)
    provider.create(auto)
    wait_until(
        lambda: provider.query(PaymentRef(auto.out_trade_no)).state is PaymentState.PAID,
        every_s=0.05,
    )
    assert len(sim.ledger()["charges"]) == 2
