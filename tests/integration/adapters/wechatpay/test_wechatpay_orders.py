"""WeChat Pay v3 adapter against the WeChat Pay simulator over real HTTP on 127.0.0.1: orders
(create, replay, query, close), refunds and the simulator's HTTP control plane.

Every key (merchant API key, platform key, APIv3 key) is generated at test time. Outcomes are
asserted on the adapter's results and on the simulator's ledger (orders, charges, refunds).
"""

from __future__ import annotations

import pytest
import requests

from adapters.payments.base import (
    ClosePayment,
    PaymentProvider,
    PaymentRef,
    PaymentState,
    ProviderRejected,
    RefundState,
)
from adapters.payments.wechatpay import WeChatPayProvider
from domain.money import Money
from simulators.wechatpay import WeChatPaySimulator
from tests.conftest import wait_until
from tests.integration.adapters.wechatpay.support import (
    create_request,
    new_trade_no,
    paid_order,
    refund_request,
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
