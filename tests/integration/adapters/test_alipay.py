"""The Alipay adapter against the Alipay simulator, over real HTTP on 127.0.0.1.

All RSA keys are generated here at test time; the simulator generates its own Alipay key pair.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from adapters.payments.alipay import AlipayConfig, AlipayProvider
from adapters.payments.base import (
    ClosePayment,
    CreatePayment,
    Notification,
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
from domain.errors import ValidationError
from domain.money import Money
from simulators.alipay import AlipaySimulator, SimulatorError
from tests.conftest import wait_until

APP_ID = "2021000123456789"
BEIJING_OFFSET = timedelta(hours=8)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_key() -> rsa.RSAPrivateKey:
    return _new_key()


@pytest.fixture(scope="module")
def running_sim(app_key: rsa.RSAPrivateKey) -> Iterator[AlipaySimulator]:
    # One server per module: stopping one costs the harness's 0.5 s shutdown poll.
    simulator = AlipaySimulator(
        APP_ID, _public_pem(app_key), notify_retry_delays=(0.1, 0.2, 0.4)
    ).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def sim(running_sim: AlipaySimulator) -> AlipaySimulator:
    running_sim.server.reset()  # faults, trades, refunds, notifications and options
    return running_sim


def _provider(
    sim: AlipaySimulator, app_key: rsa.RSAPrivateKey, *, app_id: str = APP_ID
) -> AlipayProvider:
    config = AlipayConfig(
        gateway_url=sim.gateway_url,
        app_id=app_id,
        app_private_key_pem=_private_pem(app_key),
        alipay_public_key_pem=sim.alipay_public_key_pem,
        connect_timeout=1.0,
        read_timeout=0.5,  # short, so the timeout fault costs half a second
    )
    session = requests.Session()
    session.trust_env = False  # never route 127.0.0.1 through an environment proxy
    return AlipayProvider(config, session=session)


@pytest.fixture
def provider(sim: AlipaySimulator, app_key: rsa.RSAPrivateKey) -> AlipayProvider:
    return _provider(sim, app_key)


class Receiver:
    """A merchant notify endpoint: verifies with the provider and answers as it prescribes."""

    def __init__(self, provider: AlipayProvider, fail_first: int = 0) -> None:
        self.parsed: list[Notification] = []
        self.rejected: list[Exception] = []
        self.fail_first = fail_first
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                reply = receiver.handle(dict(self.headers.items()), body)
                self.send_response(reply.status_code)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

        self.provider = provider
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/notify/alipay"

    def handle(self, headers: dict[str, str], body: bytes) -> Any:
        try:
            note = self.provider.parse_notification(headers, body)
        except SignatureInvalid as exc:
            with self._lock:
                self.rejected.append(exc)
            return self.provider.notification_reply(False)
        with self._lock:
            self.parsed.append(note)
            if self.fail_first > 0:  # e.g. our database was down: ask Alipay to retry
                self.fail_first -= 1
                return self.provider.notification_reply(False)
        return self.provider.notification_reply(True)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver(provider: AlipayProvider) -> Iterator[Receiver]:
    r = Receiver(provider)
    yield r
    r.close()


def cny(text: str) -> Money:
    return Money.from_major_str(text, "CNY")


def create_request(out_trade_no: str, amount: str = "12.34", notify_url: str = "") -> CreatePayment:
    return CreatePayment(
        out_trade_no=out_trade_no,
        idempotency_key=out_trade_no,
        amount=cny(amount),
        description="测试订单 #1 & co",  # non-ASCII and '&' exercise raw-value signing
        notify_url=notify_url,
        expires_at=datetime(2099, 1, 1, tzinfo=UTC),
    )


def paid_trade(
    provider: AlipayProvider, sim: AlipaySimulator, otn: str, amount: str = "100.00"
) -> None:
    provider.create(create_request(otn, amount))
    sim.pay(otn)


def refund(otn: str, refund_no: str, amount: str, total: str = "100.00") -> RefundRequest:
    return RefundRequest(PaymentRef(otn), refund_no, cny(amount), cny(total), "customer return")


# -- create / query ------------------------------------------------------------------------------
def test_provider_satisfies_the_port(provider: AlipayProvider) -> None:
    assert isinstance(provider, PaymentProvider)
    assert provider.name == "alipay"


def test_precreate_pay_query_reports_paid_with_exact_amount(
    provider: AlipayProvider, sim: AlipaySimulator
) -> None:
    created = provider.create(create_request("T-1", "12.34"))
    assert created.provider_ref is None
    assert created.instructions["qr_code"] == sim.ledger()["trades"]["T-1"]["qr_code"]
    assert created.instructions["qr_code"].startswith("https://qr.alipay.com/")

    # Not scanned yet: Alipay does not know the trade.
    assert provider.query(PaymentRef("T-1")).state is PaymentState.NOT_FOUND

    sim.pay("T-1")
    status = provider.query(PaymentRef("T-1"))
    trade = sim.ledger()["trades"]["T-1"]
    assert status.state is PaymentState.PAID
    assert status.raw_status == "TRADE_SUCCESS"
    assert status.amount == Money(1234, "CNY")
    assert status.provider_ref == trade["trade_no"]
    assert status.paid_at is not None and status.paid_at.utcoffset() == BEIJING_OFFSET
    assert status.paid_at.strftime("%Y-%m-%d %H:%M:%S") == trade["paid_at"]
    [charge] = sim.ledger()["charges"]
    assert (charge["out_trade_no"], charge["amount"]) == ("T-1", "12.34")
    assert (charge["trade_no"], charge["paid_at"]) == (trade["trade_no"], trade["paid_at"])


def test_query_by_provider_ref_and_before_scan_when_visible(
    provider: AlipayProvider, sim: AlipaySimulator
) -> None:
    sim.configure(visible_before_scan=True)
    provider.create(create_request("T-2", "0.01"))
    pending = provider.query(PaymentRef("T-2"))
    assert pending.state is PaymentState.PENDING
    assert pending.raw_status == "WAIT_BUYER_PAY"
    assert pending.amount == Money(1, "CNY")
    by_ref = provider.query(PaymentRef("T-2", provider_ref=pending.provider_ref))
    assert by_ref.provider_ref == sim.ledger()["trades"]["T-2"]["trade_no"]


def test_create_replay_returns_the_same_trade(
    provider: AlipayProvider, sim: AlipaySimulator
) -> None:
    first = provider.create(create_request("T-3"))
    second = provider.create(create_request("T-3"))
    assert first == second
    assert list(sim.ledger()["trades"]) == ["T-3"]


def test_create_replay_with_changed_amount_or_after_payment_is_rejected(
    provider: AlipayProvider, sim: AlipaySimulator
) -> None:
    provider.create(create_request("T-4", "12.34"))
    with pytest.raises(ProviderRejected) as inconsistent:
        provider.create(create_request("T-4", "12.35"))
    assert inconsistent.value.code == "ACQ.CONTEXT_INCONSISTENT"
    assert sim.ledger()["trades"]["T-4"]["total_amount"] == "12.34"

    sim.pay("T-4")
    with pytest.raises(ProviderRejected) as paid:
        provider.create(create_request("T-4", "12.34"))
    assert paid.value.code == "ACQ.TRADE_HAS_SUCCESS"
    assert len(sim.ledger()["charges"]) == 1


def test_non_cny_amount_is_refused_before_any_call(
    provider: AlipayProvider, sim: AlipaySimulator
) -> None:
    request = CreatePayment(
        out_trade_no="T-5",
        idempotency_key="T-5",
        amount=Money(100, "USD"),
        description="x",
        notify_url="http://127.0.0.1:9/notify",
        expires_at=datetime(2099, 1, 1, tzinfo=UTC),
    )
    calls_before = len(sim.server.request_log)
    with pytest.raises(ValidationError):
        provider.create(request)
    assert sim.ledger()["trades"] == {}
    assert len(sim.server.request_log) == calls_before


def test_auto_pay_after_precreate(provider: AlipayProvider, sim: AlipaySimulator) -> None:
    sim.configure(auto_pay_after_ms=100)
    provider.create(create_request("T-6", "5.00"))
    status = wait_until(
        lambda: (s := provider.query(PaymentRef("T-6"))).state is PaymentState.PAID and s,
        every_s=0.02,
    )
    assert status.amount == cny("5.00")


# -- close ---------------------------------------------------------------------------------------
def test_close_never_scanned_is_closed_and_cannot_be_paid_later(
    provider: AlipayProvider, sim: AlipaySimulator
) -> None:
    provider.create(create_request("C-1"))
    result = provider.close(ClosePayment(PaymentRef("C-1"), "close-C-1"))
    assert result.closed is True
    assert result.status.state is PaymentState.CLOSED
    assert result.status.raw_status == "ACQ.TRADE_NOT_EXIST"
    assert sim.ledger()["trades"]["C-1"]["status"] == "TRADE_CLOSED"
    with pytest.raises(SimulatorError):
        sim.pay("C-1")
    assert sim.ledger()["charges"] == []


def test_close_scanned_unpaid_closes_and_is_repeatable(
    provider: AlipayProvider, sim: AlipaySimulator
) -> None:
    provider.create(create_request("C-2"))
    sim.scan("C-2")
    result = provider.close(ClosePayment(PaymentRef("C-2"), "close-C-2"))
    trade = sim.ledger()["trades"]["C-2"]
    assert result.closed is True
    assert result.status.provider_ref == trade["trade_no"]
    assert trade["status"] == "TRADE_CLOSED"
    assert provider.query(PaymentRef("C-2")).state is PaymentState.CLOSED
    assert provider.close(ClosePayment(PaymentRef("C-2"), "close-C-2")).closed is True


def test_close_paid_trade_reports_not_closed_with_paid_status(
    provider: AlipayProvider, sim: AlipaySimulator
) -> None:
    paid_trade(provider, sim, "C-3", "88.80")
    result = provider.close(ClosePayment(PaymentRef("C-3"), "close-C-3"))
    assert result.closed is False
    assert result.status.state is PaymentState.PAID
    assert result.status.amount == cny("88.80")
    assert sim.ledger()["trades"]["C-3"]["status"] == "TRADE_SUCCESS"


# -- refunds -------------------------------------------------------------------------------------
def test_partial_then_full_refund_and_replay_refunds_once(
    provider: AlipayProvider, sim: AlipaySimulator
) -> None:
    paid_trade(provider, sim, "R-1")
    first = provider.refund(refund("R-1", "RF-1", "30.00"))
    assert (first.state, first.raw_status) == (RefundState.SUCCEEDED, "fund_change=Y")
    assert first.amount == cny("30.00")
    replay = provider.refund(refund("R-1", "RF-1", "30.00"))
    assert (replay.state, replay.raw_status) == (RefundState.SUCCEEDED, "fund_change=N")
    ledger = sim.ledger()
    assert [(r["out_request_no"], r["amount"]) for r in ledger["refunds"]] == [("RF-1", "30.00")]
    assert ledger["trades"]["R-1"]["refunded_amount"] == "30.00"
    assert provider.query(PaymentRef("R-1")).state is PaymentState.PAID

    rest = provider.refund(refund("R-1", "RF-2", "70.00"))
    assert rest.raw_status == "fund_change=Y"
    trade = sim.ledger()["trades"]["R-1"]
    assert (trade["refunded_amount"], trade["status"]) == ("100.00", "TRADE_CLOSED")
    status = provider.query(PaymentRef("R-1"))
    assert (status.state, status.raw_status) == (PaymentState.REFUNDED, "TRADE_CLOSED")
    with pytest.raises(ProviderRejected):
        provider.refund(refund("R-1", "RF-3", "0.01"))
    assert len(sim.ledger()["refunds"]) == 2


def test_refund_over_remaining_amount_is_rejected(
    provider: AlipayProvider, sim: AlipaySimulator
) -> None:
    paid_trade(provider, sim, "R-2", "10.00")
    with pytest.raises(ProviderRejected) as exc:
        provider.refund(refund("R-2", "RF-1", "10.01", total="10.00"))
    assert exc.value.code == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
    assert sim.ledger()["refunds"] == []


def test_refund_query(provider: AlipayProvider, sim: AlipaySimulator) -> None:
    paid_trade(provider, sim, "R-3")
    provider.refund(refund("R-3", "RF-1", "12.34"))
    found = provider.query_refund(PaymentRef("R-3"), "RF-1")
    assert (found.state, found.raw_status) == (RefundState.SUCCEEDED, "REFUND_SUCCESS")
    assert found.amount == cny("12.34")
    assert found.refund_no == "RF-1"
    missing = provider.query_refund(PaymentRef("R-3"), "RF-unknown")
    assert (missing.state, missing.raw_status) == (RefundState.FAILED, "NOT_FOUND")


# -- notifications -------------------------------------------------------------------------------
def test_payment_notification_is_delivered_verified_and_acknowledged(
    provider: AlipayProvider, sim: AlipaySimulator, receiver: Receiver
) -> None:
    provider.create(create_request("N-1", "66.60", notify_url=receiver.url))
    sim.pay("N-1")
    note = wait_until(lambda: receiver.parsed and receiver.parsed[0])
    sent = sim.ledger()["notifications"][0]
    assert note.kind is NotificationKind.PAYMENT
    assert note.event_id == sent["notify_id"]
    assert note.out_trade_no == "N-1"
    assert note.raw_type == "trade_status_sync"
    assert note.status is not None
    assert (note.status.state, note.status.amount) == (PaymentState.PAID, cny("66.60"))
    assert note.status.provider_ref == sim.ledger()["trades"]["N-1"]["trade_no"]
    wait_until(lambda: [receiver.url, 200, 1] in sim.ledger()["deliveries"])
    assert [d for d in sim.ledger()["deliveries"] if d[0] == receiver.url] == [
        [receiver.url, 200, 1]
    ]
    assert receiver.rejected == []


def test_duplicate_notifications_and_retry_until_success(
    provider: AlipayProvider, sim: AlipaySimulator, receiver: Receiver
) -> None:
    sim.configure(notify_copies=3)
    receiver.fail_first = 1
    provider.create(create_request("N-2", notify_url=receiver.url))
    sim.pay("N-2")
    # 3 copies, one answered "fail" → one retry: four deliveries, all with the same notify_id.
    wait_until(lambda: len(receiver.parsed) == 4)
    assert {n.event_id for n in receiver.parsed} == {sim.ledger()["notifications"][0]["notify_id"]}
    deliveries = [d for d in sim.ledger()["deliveries"] if d[0] == receiver.url]
    assert sorted(d[1] for d in deliveries) == [200, 200, 200, 400]
    assert max(d[2] for d in deliveries) == 2
    assert sim.notifier.pending() == 0


def test_refund_notifications_out_of_order(
    provider: AlipayProvider, sim: AlipaySimulator, receiver: Receiver
) -> None:
    sim.configure(notify_hold=True)
    provider.create(create_request("N-3", "20.00", notify_url=receiver.url))
    sim.pay("N-3")
    provider.refund(refund("N-3", "RF-9", "20.00", total="20.00"))
    assert sim.release_notifications(reverse=True) == 2
    wait_until(lambda: len(receiver.parsed) == 2)
    refunded, paid = receiver.parsed  # delivered newest first
    assert refunded.status is not None and paid.status is not None
    assert refunded.status.state is PaymentState.REFUNDED
    assert refunded.refund is not None and refunded.refund.refund_no == "RF-9"
    assert refunded.refund.raw_status == "refund_fee=20.00"
    assert paid.status.state is PaymentState.PAID and paid.refund is None


def _sent_body(sim: AlipaySimulator) -> bytes:
    return str(sim.ledger()["notifications"][0]["body"]).encode()


def _with(body: bytes, **changes: str) -> bytes:
    return urlencode({**dict(parse_qsl(body.decode())), **changes}).encode()


def test_forged_notifications_are_rejected(provider: AlipayProvider, sim: AlipaySimulator) -> None:
    provider.create(create_request("N-4", "50.00", notify_url="http://127.0.0.1:9/notify"))
    sim.pay("N-4")
    body = _sent_body(sim)
    good = provider.parse_notification({}, body)
    assert good.status is not None and good.status.amount == cny("50.00")

    params = dict(parse_qsl(body.decode()))
    attacker = _new_key()
    attacker_sign = attacker.sign(b"anything", padding.PKCS1v15(), hashes.SHA256())
    forgeries = {
        "tampered total_amount": _with(body, total_amount="0.01"),
        "bad signature": _with(body, sign=base64.b64encode(attacker_sign).decode()),
        "not base64": _with(body, sign="%%%"),
        "no signature": urlencode({k: v for k, v in params.items() if k != "sign"}).encode(),
        "legacy RSA sign_type": _with(body, sign_type="RSA"),
        "wrong app_id": sim.sign_notification({**params, "app_id": "2021999999999999"}),
        "repeated field": body + b"&total_amount=0.01",
    }
    for label, forged in forgeries.items():
        with pytest.raises(SignatureInvalid):
            provider.parse_notification({}, forged)
            pytest.fail(f"accepted forgery: {label}")


def test_forged_notification_gets_fail_reply_over_http(
    provider: AlipayProvider, sim: AlipaySimulator, receiver: Receiver
) -> None:
    provider.create(create_request("N-5", notify_url="http://127.0.0.1:9/notify"))
    sim.pay("N-5")
    forged = _with(_sent_body(sim), total_amount="0.01")
    resp = requests.post(receiver.url, data=forged, timeout=5)
    assert (resp.status_code, resp.content) == (400, b"fail")
    assert receiver.parsed == [] and len(receiver.rejected) == 1


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
    wrong_key = _provider(sim, _new_key())
    with pytest.raises(ProviderRejected) as exc:
        wrong_key.create(create_request("G-1"))
    assert exc.value.code == "isv.invalid-signature"
    assert sim.ledger()["trades"] == {}


def test_wrong_app_id_is_refused_by_gateway(
    sim: AlipaySimulator, app_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(ProviderRejected) as exc:
        _provider(sim, app_key, app_id="2021000000000999").create(create_request("G-2"))
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


def test_http_control_plane(provider: AlipayProvider, sim: AlipaySimulator) -> None:
    provider.create(create_request("H-1", "3.00"))
    resp = requests.post(f"{sim.url}/_sim/pay", json={"out_trade_no": "H-1"}, timeout=5)
    assert resp.status_code == 200 and resp.json()["status"] == "TRADE_SUCCESS"
    ledger = requests.get(f"{sim.url}/_sim/ledger", timeout=5).json()
    assert ledger["charges"][0]["amount"] == "3.00"
    again = requests.post(f"{sim.url}/_sim/pay", json={"out_trade_no": "nope"}, timeout=5)
    assert again.status_code == 409
    pem = requests.get(f"{sim.url}/_sim/alipay_public_key", timeout=5).content
    assert pem == sim.alipay_public_key_pem
