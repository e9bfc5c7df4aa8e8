"""A refund made in WeChat Pay's merchant platform (not through the refund API), from the
simulator's control endpoint over real HTTP: a REFUND.SUCCESS notification with an
``out_refund_no`` WeChat Pay made up, the refund's amount and its ``refund_id``."""

from __future__ import annotations

import requests

from adapters.payments.base import NotificationKind, RefundState
from adapters.payments.wechatpay import WeChatPayProvider
from domain.money import Money
from simulators.wechatpay import WeChatPaySimulator
from tests.integration.adapters.wechatpay.support import Receiver, paid_order


def test_a_platform_refund_notification_names_a_refund_we_did_not_issue(
    provider: WeChatPayProvider, sim: WeChatPaySimulator, receiver: Receiver
) -> None:
    ref = paid_order(provider, sim, 1000, notify_url=receiver.url)
    receiver.wait_for(1)
    ask = {"out_trade_no": ref.out_trade_no, "amount": 300}
    answer = requests.post(f"{sim.url}/_sim/refunds/dashboard", json=ask, timeout=5)
    assert answer.status_code == 200
    made = answer.json()
    (_, (headers, body)) = receiver.wait_for(2)
    note = provider.parse_notification(headers, body)
    assert note.kind is NotificationKind.REFUND and note.raw_type == "REFUND.SUCCESS"
    assert note.out_trade_no == ref.out_trade_no and note.refund is not None
    assert note.refund.refund_no == made["out_refund_no"]
    assert note.refund.provider_refund_ref == made["refund_id"]
    assert (note.refund.state, note.refund.amount) == (RefundState.SUCCEEDED, Money(300, "CNY"))
    too_much = {"out_trade_no": ref.out_trade_no, "amount": 701}
    assert (
        requests.post(f"{sim.url}/_sim/refunds/dashboard", json=too_much, timeout=5).status_code
        == 409
    )
