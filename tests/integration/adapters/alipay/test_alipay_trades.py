"""The Alipay adapter against the Alipay simulator, over real HTTP on 127.0.0.1: trades
(precreate, query, replay), close, refunds and the simulator's HTTP control plane.

All RSA keys are generated here at test time; the simulator generates its own Alipay key pair.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests

from adapters.payments.alipay import AlipayProvider
from adapters.payments.base import (
    ClosePayment,
    CreatePayment,
    PaymentProvider,
    PaymentRef,
    PaymentState,
    ProviderRejected,
    RefundState,
)
from domain.errors import ValidationError
from domain.money import Money
from simulators.alipay import AlipaySimulator, SimulatorError
from tests.conftest import wait_until
from tests.integration.adapters.alipay.support import cny, create_request, paid_trade, refund

BEIJING_OFFSET = timedelta(hours=8)


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
    calls_before = len(sim.request_log)
    with pytest.raises(ValidationError):
        provider.create(request)
    assert sim.ledger()["trades"] == {}
    assert len(sim.request_log) == calls_before


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
    assert first.provider_refund_ref is None  # Alipay names no refund: its trade_no is the trade's
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
    assert found.refund_no == "RF-1" and found.provider_refund_ref is None
    missing = provider.query_refund(PaymentRef("R-3"), "RF-unknown")
    assert (missing.state, missing.raw_status) == (RefundState.FAILED, "NOT_FOUND")


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
