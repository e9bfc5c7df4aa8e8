"""A WeChat Pay merchant in platform-certificate mode end to end (real workers, the real API
webhook, the simulator over real HTTP), with a certificate rotation in the middle of the run:
payments before it, while both certificates are valid, after signing switched to the new one,
and after the old one is retired. None is refused, none is lost, none is charged twice.

The settings come from ``WECHATPAY_KEY_MODE=platform_certificate`` as an operator would set
them: no platform key is handed over, every process downloads the certificates itself.
"""

from __future__ import annotations

import pytest

from tests.conftest import order_message
from tests.e2e.test_payments import out_trade_no, wait_status

pytestmark = pytest.mark.e2e


@pytest.fixture
def wechatpay_key_mode() -> str:
    return "platform_certificate"


def test_certificate_rotation_in_the_middle_of_a_run(start_pipeline, catalog, monkeypatch):
    # Each process downloads again after a second and may download for an unknown serial at
    # once, so the rotation's steps can follow each other within seconds (WeChat takes days).
    monkeypatch.setenv("WECHATPAY_CERTIFICATE_REFRESH_S", "1")
    monkeypatch.setenv("WECHATPAY_CERTIFICATE_MIN_REFRESH_GAP_S", "0")
    catalog({"W": 20})
    p = start_pipeline()
    wx = p.stack.wechatpay
    assert "WECHATPAY_PLATFORM_KEYS" not in p.stack.env  # nothing handed over
    old = wx.platform_serial
    paid: list[str] = []

    def pay_orders(n: int) -> None:
        ids = [p.post_order(order_message("W", 1, provider="wechatpay")) for _ in range(n)]
        for oid in ids:
            wait_status(p, oid, "AWAITING_PAYMENT")
            p.stack.pay("wechatpay", out_trade_no(oid))
        for oid in ids:
            wait_status(p, oid, "PAID")
        paid.extend(ids)

    pay_orders(2)  # before
    new = wx.publish_certificate()
    pay_orders(2)  # both valid, the old one signing
    wx.switch_signing(new)
    pay_orders(2)  # both valid, the new one signing
    wx.retire_certificate(old)
    pay_orders(2)  # after

    assert p.stack.charges() == {("wechatpay", out_trade_no(oid)): 1 for oid in paid}
    statuses = [status for _url, status, _attempt in wx.notifier.deliveries]
    assert len(statuses) >= len(paid) and set(statuses) <= {200, 204}  # none refused
    signed_by = {n["headers"]["Wechatpay-Serial"] for n in wx.notifications}
    assert signed_by == {old, new}  # the run really crossed the rotation
    assert wx.certificate_downloads >= 2 and wx.request_serials[new] > 0
