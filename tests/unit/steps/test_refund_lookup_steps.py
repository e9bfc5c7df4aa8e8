"""The refund look-up step's decisions (``services.payments.provider_refunds.lookup_refunds``,
rule 3 of its docstring): which call goes out, and when the owed ``refund_lookups`` row is
cleared or kept. Fake provider, fake gate, manual clock, no database (see ``support.py``); what
the database parts write, and the poll's re-drive, are tested on real PostgreSQL in
``tests/integration/test_provider_refunds.py``."""

from __future__ import annotations

from datetime import timedelta

import pytest

from adapters.payments.base import CreatePayment, PaymentRef, RefundResult
from domain.errors import ProviderUnavailable
from domain.money import Money
from services.payments import provider_refunds
from services.payments.common import ProviderCall
from services.payments.provider_refunds import (
    LOOKUP_FIRST_S,
    LOOKUP_MAX_S,
    LookupPlan,
    lookup_redrive_s,
)
from services.provider_calls import CircuitOpen
from tests.fakes import FakeGate, FakePaymentProvider, ManualClock
from tests.unit.steps.support import Store, ports

OID = "8f0c1e4a-0000-4000-8000-000000000002"


@pytest.fixture
def fake() -> FakePaymentProvider:
    """A paid trade ``T1`` with one refund made in the provider's dashboard."""
    fake = FakePaymentProvider()
    fake.create(CreatePayment(
        out_trade_no="T1", idempotency_key="pay-T1", amount=Money(6900, "CNY"),
        description="Order x", notify_url="http://shop.test/webhooks/fake",
        expires_at=ManualClock()() + timedelta(minutes=15),
    ))  # fmt: skip
    fake.pay("T1")
    fake.dashboard_refund("T1", 250)
    return fake


def _plan(refund_no: str = "", seen: int | None = 1) -> LookupPlan:
    call = ProviderCall(OID, "fake", PaymentRef("T1", "fake-000001"))
    return LookupPlan(call, 7, refund_no, seen)


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Store:
    store = Store(monkeypatch)
    store.replace(provider_refunds, "prepare_lookup", "finish_lookup", "clear_lookup")
    store.answers["prepare_lookup"] = _plan()
    store.answers["finish_lookup"] = True
    return store


def test_the_answer_is_applied_and_the_owed_row_cleared_in_one_step(fake, store):
    gate, clock = FakeGate(), ManualClock()
    outcome = provider_refunds.lookup_refunds("7:", lambda name: fake, ports(clock, gate))
    assert outcome.result == "looked_up_1" and outcome.followups == ()
    assert gate.calls == [("fake", "list_refunds", OID)]
    assert store.names() == ["prepare_lookup", "finish_lookup"]
    plan, results = store.args_of("finish_lookup")
    assert plan == _plan() and [r.amount for r in results] == [Money(250, "CNY")]
    assert store.calls[1][2] == {"now": clock(), "source": "list_refunds"}


def test_one_named_refund_is_queried_by_its_number(fake, store):
    store.answers["prepare_lookup"] = _plan("fake-dash-1")
    gate = FakeGate()
    outcome = provider_refunds.lookup_refunds("7:fake-dash-1", lambda n: fake, ports(gate=gate))
    assert outcome.result == "looked_up_1"
    assert gate.calls == [("fake", "query_refund", OID)]
    assert store.args_of("prepare_lookup") == (7, "fake-dash-1")
    [result] = store.args_of("finish_lookup")[1]
    assert isinstance(result, RefundResult) and result.provider_refund_ref == "fake-dash-1"


@pytest.mark.parametrize("fault", ["unavailable", "circuit_open"])
def test_a_failed_call_raises_for_the_task_and_keeps_the_row(fake, store, fault):
    """The task retries (and at last dead-letters); the row stays owed for the poll."""
    gate = FakeGate()
    if fault == "unavailable":
        fake.fail_next()
    else:
        gate.open.add("fake")
    with pytest.raises((ProviderUnavailable, CircuitOpen)):
        provider_refunds.lookup_refunds("7:", lambda name: fake, ports(gate=gate))
    assert store.names() == ["prepare_lookup"]  # nothing applied, nothing cleared


def test_a_payment_not_captured_yet_is_not_asked_about_and_stays_owed(fake, store):
    store.answers["prepare_lookup"] = "not_captured"
    gate = FakeGate()
    assert provider_refunds.lookup_refunds("7:", lambda n: fake, ports(gate=gate)).result == (
        "not_captured"
    )
    assert gate.calls == [] and store.names() == ["prepare_lookup"]


class _CannotList:
    """A provider that can query one refund but not list them (Alipay, WeChat Pay)."""

    def __init__(self, fake: FakePaymentProvider) -> None:
        self.query_refund = fake.query_refund


def test_a_provider_that_cannot_list_refunds_drops_the_lookup(fake, store):
    gate, adapter = FakeGate(), _CannotList(fake)
    providers = lambda n: adapter  # noqa: E731 - not a PaymentProvider: only query_refund
    outcome = provider_refunds.lookup_refunds("7:", providers, ports(gate=gate))
    assert outcome.result == "unsupported" and gate.calls == []
    assert store.names() == ["prepare_lookup", "clear_lookup"]


def test_redrives_back_off_from_a_minute_to_an_hour():
    waits = [lookup_redrive_s(n) for n in range(8)]
    assert waits == [60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0]
    assert (LOOKUP_FIRST_S, LOOKUP_MAX_S) == (60.0, 3600.0)
