"""The payment stage end to end: real workers, real API webhooks, simulators over real HTTP.

The simulators' ledgers are the judge of money: every assertion about charges and refunds reads
them, not our own tables.
"""

from __future__ import annotations

import pytest

from tests.conftest import order_message, wait_until
from tests.helpers import assert_stock_consistent, stock_of

pytestmark = pytest.mark.e2e

PROVIDERS = ("alipay", "wechatpay", "stripe")


def out_trade_no(order_id: str) -> str:
    return order_id.replace("-", "")


def wait_status(p, order_id: str, status: str, timeout_s: float = 60) -> dict:
    seen: dict = {}

    def check() -> bool:
        seen.update(p.get_order(order_id))
        return seen["status"] == status

    try:
        wait_until(check, timeout_s)
    except AssertionError:
        raise AssertionError(f"order {order_id} is {seen.get('status')}, not {status}") from None
    return seen


def test_happy_path_through_each_provider(start_pipeline, catalog):
    catalog({"P": 10})
    p = start_pipeline()
    ids = {prov: p.post_order(order_message("P", 1, provider=prov)) for prov in PROVIDERS}
    expected_instruction = {"alipay": "qr_code", "wechatpay": "code_url", "stripe": "client_secret"}
    for prov, oid in ids.items():
        view = wait_status(p, oid, "AWAITING_PAYMENT")
        assert view["payment"]["provider"] == prov
        assert expected_instruction[prov] in view["payment"]["instructions"]
        p.stack.pay(prov, out_trade_no(oid))
    for oid in ids.values():
        view = wait_status(p, oid, "PAID")
        assert view["payment"]["status"] == "PAID"
        assert any(e["kind"] == "notification" for e in view["timeline"])
    charges = p.stack.charges()
    assert {k: v for k, v in charges.items()} == {
        (prov, out_trade_no(oid)): 1 for prov, oid in ids.items()
    }
    assert stock_of("P") == (10, 3)
    assert_stock_consistent()
