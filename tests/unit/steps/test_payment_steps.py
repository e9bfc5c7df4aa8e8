"""The payment steps' decisions (``services.payments.create/query/close/refund``): which call
goes out, through the gate, and what each provider answer leads to. Fake provider, fake gate,
manual clock, no database (see ``support.py``)."""

from __future__ import annotations

import importlib
from datetime import timedelta

import pytest

from adapters.payments.base import (
    REPLAYED_FAILURE,
    SETTLED_ON_CREATE,
    ClosePayment,
    CreatePayment,
    PaymentRef,
    PaymentState,
    RefundRequest,
    RefundState,
)
from domain.errors import ProviderRejected, ProviderUnavailable
from domain.money import Money
from services import payments
from services.followup import Followup
from services.payments.common import PaymentConfig, ProviderCall
from services.payments.create import TooLate
from services.task_names import PAYMENTS_EXPIRE, PAYMENTS_QUERY, SHIPPING_BOOK
from tests.fakes import FakeGate, FakePaymentProvider, ManualClock
from tests.unit.steps.support import Store, ports

# The package exports functions named like two of its modules (create, close): import by path.
create_mod = importlib.import_module("services.payments.create")
close_mod = importlib.import_module("services.payments.close")
confirm_mod = importlib.import_module("services.payments.confirm")
refunds_mod = importlib.import_module("services.payments.refunds")

OID = "8f0c1e4a-0000-4000-8000-000000000001"
CONFIG = PaymentConfig(notify_base_url="http://shop.test", create_redrive_s=30, first_query_s=5)


def _create_request(clock: ManualClock, amount: int = 6900) -> CreatePayment:
    return CreatePayment(
        out_trade_no="T1", idempotency_key="pay-T1", amount=Money(amount, "CNY"),
        description="Order x", notify_url="http://shop.test/webhooks/fake",
        expires_at=clock() + timedelta(minutes=15),
    )  # fmt: skip


@pytest.fixture
def fake() -> FakePaymentProvider:
    return FakePaymentProvider()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, clock: ManualClock) -> Store:
    store = Store(monkeypatch)
    store.replace(create_mod, "prepare_create", "finish_create", "fail_create",
                  "settled_on_create", "rotate_create_key")  # fmt: skip
    store.answers["prepare_create"] = ProviderCall(OID, "fake", _create_request(clock))
    store.answers["settled_on_create"] = Followup(PAYMENTS_QUERY, 7)
    return store


def _create(fake: FakePaymentProvider, clock: ManualClock, gate: FakeGate | None = None):
    return payments.create(OID, lambda name: fake, ports(clock, gate), CONFIG)


def test_create_records_what_the_provider_created(fake, clock, store):
    gate = FakeGate()
    outcome = _create(fake, clock, gate)
    assert outcome.result == "created" and outcome.followups == ()
    assert gate.calls == [("fake", "create", OID)]
    assert store.names() == ["prepare_create", "finish_create"]
    created = store.args_of("finish_create")[1]
    assert created.provider_ref == fake.trades["T1"].provider_ref
    assert store.calls[1][2] == {"now": clock(), "first_query_s": 5}


def test_a_create_too_late_to_send_calls_no_provider_and_publishes_what_it_was_told(
    fake, clock, store
):
    store.answers["prepare_create"] = TooLate([Followup(PAYMENTS_EXPIRE, OID)])
    outcome = _create(fake, clock)
    assert outcome.result == "too_late"
    assert outcome.followups == (Followup(PAYMENTS_EXPIRE, OID),)
    assert fake.trades == {} and store.names() == ["prepare_create"]


def test_create_with_nothing_to_do_calls_no_provider(fake, clock, store):
    store.answers["prepare_create"] = None
    assert _create(fake, clock).result == "noop"
    assert fake.trades == {} and store.names() == ["prepare_create"]


def test_create_behind_an_open_circuit_waits_for_the_sweeper(fake, clock, store):
    gate = FakeGate()
    gate.open.add("fake")
    assert _create(fake, clock, gate).result == "circuit_open"
    assert fake.trades == {} and store.names() == ["prepare_create"]


@pytest.mark.parametrize("code", sorted(SETTLED_ON_CREATE))
def test_create_that_finds_the_trade_settled_asks_for_its_status(fake, clock, store, code):
    fake.reject_next(code)
    outcome = _create(fake, clock)
    assert outcome.result == "settled_at_provider"
    assert outcome.followups == (Followup(PAYMENTS_QUERY, 7),)
    assert store.names() == ["prepare_create", "settled_on_create"]
    assert store.args_of("settled_on_create")[1].code == code


@pytest.mark.parametrize("code", ["CONTEXT_INCONSISTENT", "INVALID_REQUEST", "ACQ.SYSTEM_ERROR"])
def test_create_refused_puts_the_order_in_front_of_an_operator(fake, clock, store, code):
    fake.reject_next(code)
    assert _create(fake, clock).result == "rejected"
    assert store.names() == ["prepare_create", "fail_create"]
    assert store.args_of("fail_create")[1].code == code


def test_a_replayed_failure_mints_a_new_key_and_retries(fake, clock, store):
    fake.fail_next(code=REPLAYED_FAILURE)
    with pytest.raises(ProviderUnavailable):
        _create(fake, clock)
    assert store.names() == ["prepare_create", "rotate_create_key"]


def test_a_transient_failure_is_raised_for_the_task_to_retry_and_changes_nothing(
    fake, clock, store
):
    fake.fail_next()
    with pytest.raises(ProviderUnavailable):
        _create(fake, clock)
    assert store.names() == ["prepare_create"]


def test_a_lost_create_answer_is_replayed_into_the_same_trade(fake, clock, store):
    fake.fail_next(after=True)  # the provider created it; the answer never arrived
    with pytest.raises(ProviderUnavailable):
        _create(fake, clock)
    assert _create(fake, clock).result == "created"  # the retry, same key
    assert list(fake.trades) == ["T1"]


# -- query ---------------------------------------------------------------------------------


@pytest.fixture
def query_store(monkeypatch: pytest.MonkeyPatch) -> Store:
    store = Store(monkeypatch)
    store.replace(confirm_mod, "prepare_query", "finish_query")
    store.answers["prepare_query"] = ProviderCall(OID, "fake", PaymentRef("T1"))
    store.answers["finish_query"] = [Followup(SHIPPING_BOOK, OID)]
    return store


def test_query_applies_the_providers_answer_and_returns_its_followups(fake, clock, query_store):
    fake.create(_create_request(clock))
    fake.pay("T1")
    outcome = payments.query(7, lambda n: fake, ports(clock))
    assert outcome.result == PaymentState.PAID
    assert outcome.followups == (Followup(SHIPPING_BOOK, OID),)
    assert query_store.args_of("finish_query")[1].state is PaymentState.PAID


def test_query_behind_an_open_circuit_waits_for_the_next_tick(fake, clock, query_store):
    gate = FakeGate()
    gate.open.add("fake")
    assert payments.query(7, lambda n: fake, ports(clock, gate)).result == "circuit_open"
    assert query_store.names() == ["prepare_query"]


# -- close (expiry and cancel) ---------------------------------------------------------------


@pytest.fixture
def close_store(monkeypatch: pytest.MonkeyPatch) -> Store:
    store = Store(monkeypatch)
    store.replace(close_mod, "prepare_close", "finish_close")
    store.answers["prepare_close"] = ProviderCall(
        OID, "fake", ClosePayment(PaymentRef("T1"), "close-T1")
    )
    store.answers["finish_close"] = []
    return store


def test_close_of_an_unpaid_trade_closes_it(fake, clock, close_store):
    fake.create(_create_request(clock))
    assert payments.close(OID, lambda n: fake, ports(clock), CONFIG).result == "closed"
    assert fake.trades["T1"].state is PaymentState.CLOSED
    assert close_store.args_of("finish_close")[2].closed


def test_close_that_finds_the_trade_paid_hands_the_payment_on(fake, clock, close_store):
    fake.create(_create_request(clock))
    fake.pay("T1")
    assert payments.close(OID, lambda n: fake, ports(clock), CONFIG).result == "paid"
    assert close_store.args_of("finish_close")[2].status.state is PaymentState.PAID


def test_close_of_a_trade_never_created_counts_as_closed(fake, clock, close_store):
    assert payments.close(OID, lambda n: fake, ports(clock), CONFIG).result == "closed"


# -- refunds ---------------------------------------------------------------------------------


def _refund_call(query_only: bool) -> ProviderCall:
    request = RefundRequest(PaymentRef("T1"), "R1", Money(6900, "CNY"), Money(6900, "CNY"), "x")
    return ProviderCall(OID, "fake", request, query_only=query_only)


@pytest.fixture
def refund_store(monkeypatch: pytest.MonkeyPatch) -> Store:
    store = Store(monkeypatch)
    store.replace(refunds_mod, "prepare_refund", "finish_refund")
    return store


def test_a_requested_refund_is_sent_once_per_refund_number(fake, clock, refund_store):
    fake.create(_create_request(clock))
    fake.pay("T1")
    refund_store.answers["prepare_refund"] = _refund_call(query_only=False)
    gate = FakeGate()
    for _ in range(2):  # a redelivered task sends the same refund number
        assert payments.refund(9, lambda n: fake, ports(clock, gate)).result == "SUCCEEDED"
    assert list(fake.refunds) == ["R1"] and fake.trades["T1"].refunded == 6900
    assert [op for _, op, _ in gate.calls] == ["refund", "refund"]


def test_a_pending_refund_is_only_asked_about(clock, refund_store):
    fake = FakePaymentProvider(refunds_start_pending=True)
    fake.create(_create_request(clock))
    fake.pay("T1")
    fake.refund(_refund_call(False).request)
    refund_store.answers["prepare_refund"] = _refund_call(query_only=True)
    gate = FakeGate()
    assert payments.refund(9, lambda n: fake, ports(clock, gate)).result == RefundState.PENDING
    assert [op for _, op, _ in gate.calls] == ["query_refund"]
    fake.settle_refund("R1")
    assert payments.refund(9, lambda n: fake, ports(clock, gate)).result == "SUCCEEDED"


def test_a_refused_refund_is_raised_not_recorded(fake, clock, refund_store):
    fake.create(_create_request(clock))  # never paid
    refund_store.answers["prepare_refund"] = _refund_call(query_only=False)
    with pytest.raises(ProviderRejected) as caught:
        payments.refund(9, lambda n: fake, ports(clock))
    assert caught.value.code == "TRADE_NOT_PAID"
    assert refund_store.names() == ["prepare_refund"]
