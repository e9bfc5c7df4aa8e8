"""A refund made in Alipay's merchant console (not through ``alipay.trade.refund``), from the
simulator's control endpoint over real HTTP: its ``trade_status_sync`` notification names the
refund by Alipay's own ``out_biz_no`` with only the trade's running ``refund_fee``, and
``alipay.trade.fastpay.refund.query`` by that number gives its amount."""

from __future__ import annotations

import requests

from adapters.payments.alipay import AlipayProvider
from adapters.payments.base import NotificationKind, PaymentRef, PaymentState, RefundState
from simulators.alipay import AlipaySimulator
from tests.conftest import wait_until
from tests.integration.adapters.alipay.support import Receiver, cny, create_request


def test_a_console_refund_is_notified_by_its_number_and_queried_for_its_amount(
    provider: AlipayProvider, sim: AlipaySimulator, receiver: Receiver
) -> None:
    provider.create(create_request("C-1", "30.00", notify_url=receiver.url))
    sim.pay("C-1")
    answer = requests.post(
        f"{sim.url}/_sim/dashboard_refund",
        json={"out_trade_no": "C-1", "amount": "12.50"},
        timeout=5,
    )
    assert answer.status_code == 200
    number = answer.json()["out_request_no"]
    wait_until(lambda: len(receiver.parsed) == 2)
    note = receiver.parsed[1]
    assert note.kind is NotificationKind.PAYMENT and note.refund is not None
    assert note.status is not None and note.status.state is PaymentState.PAID  # partly refunded
    assert (note.refund.refund_no, note.refund.amount) == (number, None)  # a running total only
    assert note.refund.raw_status == "refund_fee=12.50"
    queried = provider.query_refund(PaymentRef("C-1"), number)
    assert (queried.state, queried.amount) == (RefundState.SUCCEEDED, cny("12.50"))
    too_much = {"out_trade_no": "C-1", "amount": "17.51"}
    assert (
        requests.post(f"{sim.url}/_sim/dashboard_refund", json=too_much, timeout=5).status_code
        == 409
    )
