"""The Stripe adapter against the Stripe simulator, over real HTTP on 127.0.0.1.

Each test gets a fresh simulator (and, for webhooks, a merchant endpoint that runs the adapter's
``parse_notification``), with secrets generated at test time. Assertions are on outcomes: the
simulator's ledger, the values the adapter returns, the errors it classifies.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from adapters.payments.base import (
    REPLAYED_FAILURE,
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
from adapters.payments.stripe import StripeConfig, StripeProvider, classify_error
from domain.money import Money
from simulators.harness import Request, Response, SimulatorServer
from simulators.stripe import StripeSimulator
from tests.conftest import wait_until

# -- fixtures ---------------------------------------------------------------------------------
_stopping: list[threading.Thread] = []


def stop_later(server: SimulatorServer) -> None:
    """``stop()`` waits up to 0.5 s for ``serve_forever`` to notice; overlap that with the next
    test instead of paying it per test. All stops are joined when the module ends."""
    thread = threading.Thread(target=server.stop, name=f"stop-{server.name}")
    thread.start()
    _stopping.append(thread)


@pytest.fixture(scope="module", autouse=True)
def _join_stopped_servers() -> Iterator[None]:
    yield
    for thread in _stopping:
        thread.join(timeout=5)


@pytest.fixture
def keys() -> dict[str, str]:
    return {
        "secret_key": "sk_test_" + secrets.token_hex(16),
        "webhook_secret": "whsec_" + secrets.token_hex(16),
    }


@pytest.fixture
def sim(keys: dict[str, str]) -> Iterator[StripeSimulator]:
    simulator = StripeSimulator(keys["secret_key"], keys["webhook_secret"], retry_delays=(0.1, 0.1))
    simulator.start()
    yield simulator
    stop_later(simulator)


def make_provider(sim: StripeSimulator, keys: dict[str, str], **overrides: Any) -> StripeProvider:
    settings: dict[str, Any] = {"connect_timeout": 1.0, "read_timeout": 2.0, **overrides}
    return StripeProvider(StripeConfig(api_base=sim.url, **{**keys, **settings}))


@pytest.fixture
def provider(sim: StripeSimulator, keys: dict[str, str]) -> StripeProvider:
    return make_provider(sim, keys)


class Merchant:
    """A webhook endpoint that verifies with the adapter and records what it accepted."""

    def __init__(self, provider: StripeProvider) -> None:
        self.provider = provider
        self.accepted: list[Notification] = []
        self.refused: list[str] = []
        self.server = SimulatorServer("merchant")
        self.server.route("POST", "/stripe/webhook", self._handle)
        self.url = f"{self.server.url}/stripe/webhook"

    def _handle(self, req: Request) -> Response:
        try:
            notification = self.provider.parse_notification(req.headers, req.body)
        except SignatureInvalid as exc:
            self.refused.append(str(exc))
            reply = self.provider.notification_reply(False)
        else:
            self.accepted.append(notification)
            reply = self.provider.notification_reply(True)
        return Response(reply.status_code, reply.body, {"Content-Type": reply.content_type})

    def of_type(self, raw_type: str) -> list[Notification]:
        return [n for n in self.accepted if n.raw_type == raw_type]


@pytest.fixture
def merchant(sim: StripeSimulator, provider: StripeProvider) -> Iterator[Merchant]:
    m = Merchant(provider)
    m.server.start()
    sim.webhook_url = m.url
    yield m
    stop_later(m.server)


def create_request(
    out_trade_no: str | None = None, amount: Money | None = None, key: str | None = None
) -> CreatePayment:
    out_trade_no = out_trade_no or "T" + secrets.token_hex(6)
    return CreatePayment(
        out_trade_no=out_trade_no,
        idempotency_key=key or f"create-{out_trade_no}",
        amount=amount or Money(1234, "USD"),
        description="order " + out_trade_no,
        notify_url="http://127.0.0.1:1/unused",
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
        metadata={"order_id": "42"},
    )


def paid_payment(
    provider: StripeProvider, sim: StripeSimulator, amount: int = 1000
) -> tuple[PaymentRef, CreatePayment]:
    req = create_request(amount=Money(amount, "USD"))
    created = provider.create(req)
    sim.pay(req.out_trade_no)
    return PaymentRef(req.out_trade_no, created.provider_ref), req


def refund_request(
    ref: PaymentRef, refund_no: str, amount: int, total: int = 1000
) -> RefundRequest:
    return RefundRequest(
        ref=ref,
        refund_no=refund_no,
        amount=Money(amount, "USD"),
        total=Money(total, "USD"),
        reason="customer asked",
    )


# -- create / query -----------------------------------------------------------------------------
def test_provider_satisfies_protocol(provider: StripeProvider) -> None:
    assert isinstance(provider, PaymentProvider)
    assert provider.name == "stripe"


@pytest.mark.parametrize(
    ("amount", "wire_currency"), [(Money(1234, "USD"), "usd"), (Money(500, "JPY"), "jpy")]
)
def test_create_pay_query_paid_with_exact_amount(
    provider: StripeProvider, sim: StripeSimulator, amount: Money, wire_currency: str
) -> None:
    req = create_request(amount=amount)
    created = provider.create(req)
    assert created.provider_ref is not None and created.provider_ref.startswith("pi_")
    assert created.instructions["client_secret"].startswith(created.provider_ref + "_secret_")
    ref = PaymentRef(req.out_trade_no, created.provider_ref)

    pending = provider.query(ref)
    assert (pending.state, pending.raw_status) == (PaymentState.PENDING, "requires_payment_method")
    assert pending.amount == amount and pending.paid_at is None

    sim.pay(req.out_trade_no)
    paid = provider.query(ref)
    assert (paid.state, paid.raw_status, paid.amount) == (PaymentState.PAID, "succeeded", amount)
    assert paid.provider_ref == created.provider_ref and paid.paid_at is not None

    [pi] = sim.ledger()["payment_intents"]
    assert pi["amount"] == amount.amount and pi["currency"] == wire_currency
    assert pi["metadata"] == {"order_id": "42", "out_trade_no": req.out_trade_no}
    assert pi["automatic_payment_methods"] == {"enabled": True}
    assert pi["description"] == req.description
    [charge] = sim.ledger()["charges"]
    assert charge["amount"] == amount.amount and charge["payment_intent"] == pi["id"]


def test_query_without_provider_ref_is_rejected(provider: StripeProvider) -> None:
    with pytest.raises(ProviderRejected) as exc:
        provider.query(PaymentRef("T1", None))
    assert exc.value.code == "missing_reference"


def test_auto_pay_and_http_control_endpoint(provider: StripeProvider, sim: StripeSimulator) -> None:
    sim.auto_pay_after_ms = 50
    req = create_request()
    ref = PaymentRef(req.out_trade_no, provider.create(req).provider_ref)
    wait_until(lambda: provider.query(ref).state is PaymentState.PAID)

    sim.auto_pay_after_ms = None
    req2 = create_request()
    ref2 = PaymentRef(req2.out_trade_no, provider.create(req2).provider_ref)
    answer = requests.post(
        f"{sim.url}/_sim/pay", json={"out_trade_no": req2.out_trade_no}, timeout=2
    )
    assert answer.status_code == 200 and answer.json()["status"] == "succeeded"
    assert provider.query(ref2).state is PaymentState.PAID


# -- idempotency --------------------------------------------------------------------------------
def test_same_idempotency_key_replays_the_same_payment_intent(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    req = create_request()
    first, second = provider.create(req), provider.create(req)
    assert first == second
    assert len(sim.ledger()["payment_intents"]) == 1


def test_same_key_different_amount_is_an_idempotency_error(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    req = create_request(amount=Money(1000, "USD"))
    provider.create(req)
    changed = create_request(req.out_trade_no, Money(2000, "USD"), key=req.idempotency_key)
    with pytest.raises(ProviderRejected) as exc:
        provider.create(changed)
    assert exc.value.code == "idempotency_error"
    [pi] = sim.ledger()["payment_intents"]
    assert pi["amount"] == 1000


def test_injected_500_is_saved_and_replayed_for_the_same_key(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    req = create_request()
    sim.set_faults(error_rate=1.0)
    with pytest.raises(ProviderUnavailable):
        provider.create(req)
    sim.set_faults(error_rate=0.0)
    with pytest.raises(ProviderUnavailable) as replayed:  # the saved 500, no new execution
        provider.create(req)
    assert replayed.value.code == REPLAYED_FAILURE  # tells the caller to mint a new key
    assert sim.ledger()["payment_intents"] == []
    assert [s for m, p, s in sim.request_log if p == "/v1/payment_intents"] == [500, 500]
    assert req.idempotency_key in sim.ledger()["idempotency_keys"]

    fresh = create_request(req.out_trade_no, key=req.idempotency_key + "-2")
    assert provider.create(fresh).provider_ref is not None
    assert len(sim.ledger()["payment_intents"]) == 1


def test_concurrent_request_with_same_key_gets_409_and_one_intent(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    sim.execution_delay_ms = 300
    req = create_request()
    outcomes: list[object] = []

    def call() -> None:
        try:
            outcomes.append(provider.create(req))
        except ProviderUnavailable as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    errors = [o for o in outcomes if isinstance(o, ProviderUnavailable)]
    assert len(errors) == 1 and errors[0].code == "idempotency_key_in_use"
    assert len(sim.ledger()["payment_intents"]) == 1
    sim.execution_delay_ms = 0
    assert provider.create(req) in outcomes  # the retry replays the winner


# -- faults ---------------------------------------------------------------------------------------
def test_timeout_is_unavailable_and_the_retry_creates_one_intent(
    sim: StripeSimulator, keys: dict[str, str]
) -> None:
    provider = make_provider(sim, keys, read_timeout=0.2)
    sim.set_faults(timeout_rate=1.0, hang_seconds=0.5)
    req = create_request()
    with pytest.raises(ProviderUnavailable) as exc:
        provider.create(req)
    assert exc.value.code == "network"
    sim.set_faults(timeout_rate=0.0)
    created = provider.create(req)
    # The hung request still executes at the simulator afterwards and meets the saved key.
    wait_until(lambda: len([p for _, p, _ in sim.request_log if p == "/v1/payment_intents"]) == 2)
    [pi] = sim.ledger()["payment_intents"]
    assert pi["id"] == created.provider_ref


def test_connection_reset_is_unavailable(provider: StripeProvider, sim: StripeSimulator) -> None:
    sim.set_faults(reset_rate=1.0)
    with pytest.raises(ProviderUnavailable):
        provider.create(create_request())
    assert sim.ledger()["payment_intents"] == []


def test_5xx_on_query_is_unavailable(provider: StripeProvider, sim: StripeSimulator) -> None:
    req = create_request()
    ref = PaymentRef(req.out_trade_no, provider.create(req).provider_ref)
    sim.set_faults(error_rate=1.0)
    with pytest.raises(ProviderUnavailable) as exc:
        provider.query(ref)
    assert exc.value.code == "api_error"


def test_business_error_is_rejected(provider: StripeProvider, sim: StripeSimulator) -> None:
    sim.set_faults(business_error="card_declined")
    with pytest.raises(ProviderRejected) as exc:
        provider.create(create_request())
    assert exc.value.code == "card_declined"
    assert sim.ledger()["payment_intents"] == []


def test_wrong_secret_key_is_rejected(sim: StripeSimulator, keys: dict[str, str]) -> None:
    provider = make_provider(sim, keys, secret_key="sk_test_wrong")
    with pytest.raises(ProviderRejected) as exc:
        provider.create(create_request())
    assert exc.value.code == "authentication_error"
    assert sim.ledger()["payment_intents"] == []


def _response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = json.dumps(body).encode()
    resp.headers.update(headers or {})
    return resp


@pytest.mark.parametrize(
    ("status", "error", "headers", "retryable", "code"),
    [
        (429, {"type": "invalid_request_error", "code": "lock_timeout"}, {}, True, "lock_timeout"),
        (400, {"type": "invalid_request_error", "code": "rate_limit"}, {}, True, "rate_limit"),
        (409, {"type": "idempotency_error"}, {}, True, "idempotency_error"),
        (503, {"type": "api_error"}, {}, True, "api_error"),
        (500, {"type": "api_error"}, {"Stripe-Should-Retry": "false"}, False, "api_error"),
        (400, {"type": "invalid_request_error"}, {"Stripe-Should-Retry": "true"}, True, None),
        (402, {"type": "card_error", "code": "card_declined"}, {}, False, "card_declined"),
        (404, {"type": "invalid_request_error", "code": "resource_missing"}, {}, False, None),
        (400, {"type": "idempotency_error", "code": "idempotency_key_mismatch"}, {}, False,
         "idempotency_error"),
    ],
)  # fmt: skip
def test_error_classification(
    status: int, error: dict[str, str], headers: dict[str, str], retryable: bool, code: str | None
) -> None:
    err = classify_error(_response(status, {"error": error}, headers))
    assert isinstance(err, ProviderUnavailable if retryable else ProviderRejected)
    assert err.code == (code or error.get("code") or error["type"])


# -- close ----------------------------------------------------------------------------------------
def test_close_unpaid_cancels(provider: StripeProvider, sim: StripeSimulator) -> None:
    req = create_request()
    ref = PaymentRef(req.out_trade_no, provider.create(req).provider_ref)
    result = provider.close(ClosePayment(ref, "close-1"))
    assert result.closed and result.status.state is PaymentState.CLOSED
    assert result.status.raw_status == "canceled"
    [pi] = sim.ledger()["payment_intents"]
    assert pi["status"] == "canceled"
    again = provider.close(ClosePayment(ref, "close-2"))  # a new key: Stripe refuses, we re-read
    assert again.closed and again.status.state is PaymentState.CLOSED


def test_close_paid_reports_paid(provider: StripeProvider, sim: StripeSimulator) -> None:
    ref, _ = paid_payment(provider, sim, 1500)
    for _ in range(2):  # the second call replays the saved 400 for the same key
        result = provider.close(ClosePayment(ref, "close-1"))
        assert not result.closed
        assert (result.status.state, result.status.amount) == (
            PaymentState.PAID,
            Money(1500, "USD"),
        )
    [pi] = sim.ledger()["payment_intents"]
    assert pi["status"] == "succeeded"


def test_close_without_reference_after_a_stored_create_failure_is_closed_never_created(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    """The create failed with a 500 Stripe stored for its key: repeating it replays the failure,
    so no PaymentIntent can exist — the close reports the trade closed without creating one."""
    req = create_request()
    sim.set_faults(error_rate=1.0)
    with pytest.raises(ProviderUnavailable):
        provider.create(req)
    sim.set_faults(error_rate=0.0)
    result = provider.close(ClosePayment(PaymentRef(req.out_trade_no), "close-1", create=req))
    assert result.closed
    assert (result.status.state, result.status.raw_status) == (
        PaymentState.NOT_FOUND,
        "never_created",
    )
    assert sim.ledger()["payment_intents"] == []


def test_close_without_reference_recovers_the_intent_and_cancels_it(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    """The create's answer was lost (a reset: nothing stored), or it succeeded and the id was
    never recorded: the repeated create returns the intent, which is then cancelled."""
    lost = create_request()
    sim.set_faults(reset_rate=1.0)
    with pytest.raises(ProviderUnavailable):
        provider.create(lost)
    sim.set_faults(reset_rate=0.0)
    unrecorded = create_request()
    pi_id = provider.create(unrecorded).provider_ref
    for req in (lost, unrecorded):
        result = provider.close(ClosePayment(PaymentRef(req.out_trade_no), "close-1", create=req))
        assert result.closed and result.status.state is PaymentState.CLOSED
        assert result.status.provider_ref is not None
    by_trade = {pi["metadata"]["out_trade_no"]: pi for pi in sim.ledger()["payment_intents"]}
    assert by_trade[unrecorded.out_trade_no]["id"] == pi_id
    assert {pi["status"] for pi in by_trade.values()} == {"canceled"}
    assert len(by_trade) == 2 and sim.ledger()["charges"] == []


def test_close_without_reference_of_a_paid_intent_reports_paid(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    req = create_request(amount=Money(1500, "USD"))
    provider.create(req)
    sim.pay(req.out_trade_no)
    result = provider.close(ClosePayment(PaymentRef(req.out_trade_no), "close-1", create=req))
    assert not result.closed
    assert (result.status.state, result.status.amount) == (PaymentState.PAID, Money(1500, "USD"))
    assert result.status.provider_ref is not None


def test_cancel_key_replaying_a_stored_500_moves_to_the_next_key(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    req = create_request()
    ref = PaymentRef(req.out_trade_no, provider.create(req).provider_ref)
    sim.set_faults(error_rate=1.0)
    with pytest.raises(ProviderUnavailable) as first:  # a fresh 500: Stripe stores it
        provider.close(ClosePayment(ref, "close-1"))
    assert first.value.code == "api_error"
    sim.set_faults(error_rate=0.0)
    for _ in range(2):  # the key replays the 500; the next key cancels (then is replayed)
        result = provider.close(ClosePayment(ref, "close-1"))
        assert result.closed and result.status.state is PaymentState.CLOSED
    [pi] = sim.ledger()["payment_intents"]
    assert pi["status"] == "canceled"
    cancel_keys = [k for k in sim.ledger()["idempotency_keys"] if k.startswith("cancel:")]
    assert cancel_keys == [
        f"cancel:{ref.provider_ref}:close-1",
        f"cancel:{ref.provider_ref}:close-1:r1",
    ]


# -- refunds --------------------------------------------------------------------------------------
def test_partial_then_full_refund_each_once(provider: StripeProvider, sim: StripeSimulator) -> None:
    ref, _ = paid_payment(provider, sim, 1000)
    first = provider.refund(refund_request(ref, "R1", 300))
    assert (first.state, first.amount, first.refund_no) == (
        RefundState.SUCCEEDED,
        Money(300, "USD"),
        "R1",
    )
    assert provider.refund(refund_request(ref, "R1", 300)) == first  # same refund_no: same refund
    assert provider.query(ref).state is PaymentState.PAID

    rest = provider.refund(refund_request(ref, "R2", 700))
    assert (
        rest.state is RefundState.SUCCEEDED
        and rest.provider_refund_ref != first.provider_refund_ref
    )
    ledger = sim.ledger()
    assert sorted(r["amount"] for r in ledger["refunds"]) == [300, 700]
    assert {r["metadata"]["refund_no"] for r in ledger["refunds"]} == {"R1", "R2"}
    assert ledger["charges"][0]["amount_refunded"] == 1000 and ledger["charges"][0]["refunded"]
    assert provider.query(ref).state is PaymentState.REFUNDED

    with pytest.raises(ProviderRejected) as exc:
        provider.refund(refund_request(ref, "R3", 1))
    assert exc.value.code == "charge_already_refunded"
    assert len(sim.ledger()["refunds"]) == 2


def test_refund_key_replaying_a_stored_500_moves_on_once_no_refund_exists(
    provider: StripeProvider, sim: StripeSimulator
) -> None:
    ref, _ = paid_payment(provider, sim, 1000)
    sim.set_faults(error_rate=1.0)
    with pytest.raises(ProviderUnavailable):  # stored under the key "R1"
        provider.refund(refund_request(ref, "R1", 400))
    sim.set_faults(error_rate=0.0)
    first = provider.refund(refund_request(ref, "R1", 400))
    again = provider.refund(refund_request(ref, "R1", 400))
    assert first.state is RefundState.SUCCEEDED and again == first
    [refund] = sim.ledger()["refunds"]
    assert (refund["amount"], refund["metadata"]["refund_no"]) == (400, "R1")
    assert "R1" in sim.ledger()["idempotency_keys"] and "R1:r1" in sim.ledger()["idempotency_keys"]


def test_refund_key_replaying_a_stored_500_finds_the_refund_instead_of_making_another(
    provider: StripeProvider, sim: StripeSimulator, keys: dict[str, str]
) -> None:
    """Stripe stored a 500 for the key, yet a refund with this number exists (the request did
    its work before failing): it is the answer, and no second refund is made."""
    ref, _ = paid_payment(provider, sim, 1000)
    sim.set_faults(error_rate=1.0)
    with pytest.raises(ProviderUnavailable):
        provider.refund(refund_request(ref, "R1", 400))
    sim.set_faults(error_rate=0.0)
    made = requests.post(  # the refund the failed request made after all
        f"{sim.url}/v1/refunds",
        data={"payment_intent": ref.provider_ref, "amount": "400", "metadata[refund_no]": "R1"},
        headers={"Authorization": f"Bearer {keys['secret_key']}", "Idempotency-Key": "other"},
        timeout=2,
    )
    assert made.status_code == 200, made.text
    result = provider.refund(refund_request(ref, "R1", 400))
    assert result.provider_refund_ref == made.json()["id"]
    assert len(sim.ledger()["refunds"]) == 1
    assert not any(k.startswith("R1:") for k in sim.ledger()["idempotency_keys"])


def test_refund_over_remaining_is_rejected(provider: StripeProvider, sim: StripeSimulator) -> None:
    ref, _ = paid_payment(provider, sim, 1000)
    provider.refund(refund_request(ref, "R1", 600))
    with pytest.raises(ProviderRejected) as exc:
        provider.refund(refund_request(ref, "R2", 500))
    assert exc.value.code == "amount_too_large"
    assert [r["amount"] for r in sim.ledger()["refunds"]] == [600]


def test_query_refund_by_refund_no(provider: StripeProvider, sim: StripeSimulator) -> None:
    ref, _ = paid_payment(provider, sim, 1000)
    r1 = provider.refund(refund_request(ref, "R1", 100))
    provider.refund(refund_request(ref, "R2", 200))
    found = provider.query_refund(ref, "R1")
    assert found == r1 and found.amount == Money(100, "USD")
    with pytest.raises(ProviderRejected) as exc:
        provider.query_refund(ref, "R9")
    assert exc.value.code == "resource_missing"


def test_pending_refund_settles(provider: StripeProvider, sim: StripeSimulator) -> None:
    sim.refunds_start_pending = True
    ref, _ = paid_payment(provider, sim, 1000)
    pending = provider.refund(refund_request(ref, "R1", 400))
    assert pending.state is RefundState.PENDING
    assert pending.provider_refund_ref is not None
    sim.settle_refund(pending.provider_refund_ref, "failed")
    assert provider.query_refund(ref, "R1").state is RefundState.FAILED


# -- webhooks -------------------------------------------------------------------------------------
def test_payment_webhook_is_verified_and_parsed(
    provider: StripeProvider, sim: StripeSimulator, merchant: Merchant
) -> None:
    req = create_request(amount=Money(2500, "EUR"))
    created = provider.create(req)
    sim.pay(created.provider_ref or "")
    wait_until(lambda: bool(merchant.of_type("payment_intent.succeeded")))
    [note] = merchant.of_type("payment_intent.succeeded")
    assert note.kind is NotificationKind.PAYMENT and note.event_id.startswith("evt_")
    assert note.out_trade_no == req.out_trade_no and note.status is not None
    assert (note.status.state, note.status.amount) == (PaymentState.PAID, Money(2500, "EUR"))
    assert note.status.provider_ref == created.provider_ref and note.status.paid_at is not None
    created_event = merchant.of_type("payment_intent.created")
    assert created_event and created_event[0].kind is NotificationKind.OTHER
    assert merchant.refused == []


def test_failed_and_canceled_webhooks(
    provider: StripeProvider, sim: StripeSimulator, merchant: Merchant
) -> None:
    req = create_request()
    ref = PaymentRef(req.out_trade_no, provider.create(req).provider_ref)
    sim.fail_payment(req.out_trade_no)
    provider.close(ClosePayment(ref, "close-1"))
    wait_until(lambda: bool(merchant.of_type("payment_intent.canceled")))
    [failed] = merchant.of_type("payment_intent.payment_failed")
    assert failed.kind is NotificationKind.PAYMENT and failed.status is not None
    assert failed.status.state is PaymentState.PENDING
    [canceled] = merchant.of_type("payment_intent.canceled")
    assert canceled.status is not None and canceled.status.state is PaymentState.CLOSED


def test_refund_webhook_carries_refund_no(
    provider: StripeProvider, sim: StripeSimulator, merchant: Merchant
) -> None:
    ref, req = paid_payment(provider, sim, 1000)
    provider.refund(refund_request(ref, "R1", 400))
    provider.refund(refund_request(ref, "R2", 600))
    wait_until(lambda: len(merchant.of_type("charge.refunded")) == 2)
    by_no = {n.refund.refund_no: n for n in merchant.of_type("charge.refunded") if n.refund}
    assert by_no["R1"].refund is not None and by_no["R1"].refund.amount == Money(400, "USD")
    assert (
        by_no["R1"].kind is NotificationKind.REFUND and by_no["R1"].out_trade_no == req.out_trade_no
    )
    assert by_no["R1"].status is None  # partial
    assert by_no["R2"].status is not None and by_no["R2"].status.state is PaymentState.REFUNDED


def test_duplicate_and_out_of_order_deliveries(
    provider: StripeProvider, sim: StripeSimulator, merchant: Merchant
) -> None:
    sim.webhook_types = {"payment_intent.succeeded", "charge.refunded"}
    sim.webhook_copies = 2
    sim.hold_webhooks()
    ref, _ = paid_payment(provider, sim, 1000)
    provider.refund(refund_request(ref, "R1", 1000))
    assert sim.release_webhooks(order="reverse") == 2
    wait_until(lambda: len(merchant.accepted) == 4)
    types = [n.raw_type for n in merchant.accepted]
    assert types[:2] == ["charge.refunded", "charge.refunded"]  # newest first
    assert len({n.event_id for n in merchant.accepted}) == 2  # duplicates share the event id


def test_stale_signed_webhook_is_refused_and_retried(
    provider: StripeProvider, sim: StripeSimulator, merchant: Merchant
) -> None:
    sim.webhook_stale_by_s = 301
    sim.webhook_types = {"payment_intent.succeeded"}
    paid_payment(provider, sim)
    wait_until(lambda: len(sim.notifier.deliveries) == 3)  # first try + 2 retries, all refused
    assert merchant.accepted == [] and len(merchant.refused) == 3
    assert {status for _, status, _ in sim.notifier.deliveries} == {400}


@pytest.fixture
def signed_event(provider: StripeProvider, sim: StripeSimulator) -> tuple[bytes, int]:
    """A real ``payment_intent.succeeded`` body from the simulator and a current timestamp."""
    paid_payment(provider, sim)
    [event] = [e for e in sim.ledger()["events"] if e["type"] == "payment_intent.succeeded"]
    return json.dumps(event, separators=(",", ":")).encode(), int(time.time())


def test_signature_accepts_any_matching_v1(
    provider: StripeProvider, sim: StripeSimulator, signed_event: tuple[bytes, int]
) -> None:
    body, t = signed_event
    good = sim.sign(body, t).split("v1=")[1]
    header = f"t={t},v1={'0' * 64},v1={good},v0=abc"
    note = provider.parse_notification({"STRIPE-SIGNATURE": header}, body)
    assert note.kind is NotificationKind.PAYMENT


def stripe_sign(secret: str, body: bytes, t: int) -> str:
    """Stripe's scheme, written out here independently of adapter and simulator."""
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def _forgeries(secret: str, body: bytes, t: int) -> dict[str, tuple[dict[str, str], bytes]]:
    good = stripe_sign(secret, body, t)
    tampered = body.replace(b'"amount_received":1000', b'"amount_received":1')
    assert tampered != body
    return {
        "wrong secret": ({"Stripe-Signature": stripe_sign("whsec_other", body, t)}, body),
        "tampered body": ({"Stripe-Signature": good}, tampered),
        "301 s old": ({"Stripe-Signature": stripe_sign(secret, body, t - 301)}, body),
        "301 s ahead": ({"Stripe-Signature": stripe_sign(secret, body, t + 301)}, body),
        "missing header": ({}, body),
        "empty header": ({"Stripe-Signature": ""}, body),
        "no v1": ({"Stripe-Signature": good.replace("v1=", "v0=")}, body),
        "bad t": ({"Stripe-Signature": good.replace(f"t={t}", "t=abc")}, body),
        "garbage": ({"Stripe-Signature": "garbage"}, body),
    }


def test_forged_webhooks_are_refused(
    provider: StripeProvider, keys: dict[str, str], signed_event: tuple[bytes, int]
) -> None:
    body, t = signed_event
    for name, (headers, payload) in _forgeries(keys["webhook_secret"], body, t).items():
        with pytest.raises(SignatureInvalid):
            provider.parse_notification(headers, payload)
            pytest.fail(f"accepted forgery: {name}")
    # the untouched message still verifies: the refusals above were about the forgeries
    good = {"Stripe-Signature": stripe_sign(keys["webhook_secret"], body, t)}
    assert provider.parse_notification(good, body).event_id


@pytest.mark.parametrize("created", [-62135596801, 253402300800, 10**20, -(10**20)])
def test_a_signed_event_created_outside_datetime_range_parses_without_a_time(
    provider: StripeProvider,
    keys: dict[str, str],
    signed_event: tuple[bytes, int],
    created: int,
) -> None:
    # Found by the signed-nonsense fuzzer: created=-62135596801 (before year 1) was a 500.
    body, t = signed_event
    event = json.loads(body)
    event["created"] = created
    body = json.dumps(event).encode()
    headers = {"Stripe-Signature": stripe_sign(keys["webhook_secret"], body, t)}
    note = provider.parse_notification(headers, body)
    assert note.kind is NotificationKind.PAYMENT and note.status is not None
    assert note.status.state is PaymentState.PAID and note.status.paid_at is None


def test_notification_reply() -> None:
    cfg = StripeConfig(
        "http://127.0.0.1:9", secret_key="sk_test_SECRET", webhook_secret="whsec_SECRET"
    )
    provider = StripeProvider(cfg)
    ok, bad = provider.notification_reply(True), provider.notification_reply(False)
    assert (ok.status_code, json.loads(ok.body)) == (200, {"received": True})
    assert bad.status_code == 400 and ok.content_type == "application/json"
    assert "SECRET" not in repr(cfg)  # secrets stay out of logs
