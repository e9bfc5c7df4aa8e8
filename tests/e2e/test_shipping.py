"""The shipping and tracking stages end to end: warehouse booking, Kuaidi100 subscription,
pushes and polling, through to COMPLETED. Real workers; simulators over real HTTP."""

from __future__ import annotations

import pytest

from tests.conftest import order_message, wait_until
from tests.helpers import assert_stock_consistent, stock_of

pytestmark = pytest.mark.e2e


def paid_order(p, sku: str, qty: int = 1, provider: str = "alipay") -> str:
    oid = p.post_order(order_message(sku, qty, provider=provider))
    wait_until(lambda: p.get_order(oid)["status"] == "AWAITING_PAYMENT", 60)
    p.stack.pay(provider, oid.replace("-", ""))
    return oid


def test_paid_order_is_booked_shipped_and_subscribed(start_pipeline, catalog):
    catalog({"B": 10})
    p = start_pipeline(shipping=True)
    oid = paid_order(p, "B", 3)
    wait_until(lambda: p.get_order(oid)["status"] in ("SHIPPED", "IN_TRANSIT"), 60)
    view = p.get_order(oid)
    shipment = view["shipment"]
    assert shipment["carrier"] == "yuantong" and shipment["waybill"]
    assert stock_of("B") == (7, 0)  # the units left the warehouse, through the ledger
    assert_stock_consistent()
    bookings = p.stack.warehouse.ledger()["bookings"]
    assert len(bookings) == 1  # one parcel, whatever the retries
    wait_until(lambda: shipment["waybill"] in p.stack.kuaidi100.ledger()["subscriptions"], 30)
    wait_until(lambda: p.get_order(oid)["shipment"]["subscribed"], 30)


def test_manual_waybill_registration(start_pipeline, catalog, monkeypatch):
    monkeypatch.setenv("SHIPPING_MODE", "manual")
    catalog({"M": 5})
    p = start_pipeline(shipping=True)
    oid = paid_order(p, "M", 2, provider="stripe")
    wait_until(lambda: p.get_order(oid)["status"] == "PAID", 60)
    bad = p.post(f"/v1/orders/{oid}/shipments", {"carrier": "YT!", "waybill": "YT12345678"})
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "carrier"
    p.stack.kuaidi100.register_waybill("zhongtong", "ZT1234567890")
    ok = p.post(f"/v1/orders/{oid}/shipments", {"carrier": "zhongtong", "waybill": "ZT1234567890"})
    assert ok.status_code == 201, ok.text
    again = p.post(
        f"/v1/orders/{oid}/shipments", {"carrier": "zhongtong", "waybill": "ZT1234567890"}
    )
    assert again.status_code == 201  # idempotent
    other = p.post(
        f"/v1/orders/{oid}/shipments", {"carrier": "zhongtong", "waybill": "ZT999999999"}
    )
    assert other.status_code == 409
    assert p.get_order(oid)["status"] in ("SHIPPED", "IN_TRANSIT", "DELIVERED", "COMPLETED")
    assert stock_of("M") == (3, 0)
    assert p.stack.warehouse.ledger()["bookings"] == {}  # manual mode books nothing
