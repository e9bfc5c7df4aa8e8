"""After-sale end to end on real workers, beat and the providers' simulators over HTTP: a buyer
confirms receipt, returns one line of three, its parcel is tracked back to the warehouse, which
restocks it, and exactly that line's share is refunded at Alipay, WeChat Pay and Stripe, once;
an exchange's replacement is booked and tracked to the door."""

from __future__ import annotations

import requests
from sqlalchemy import select

from models import Refund
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.helpers import assert_stock_consistent, stock_of

PROVIDERS = ("alipay", "wechatpay", "stripe")


def refunds(oid: str) -> list[tuple[str, int, str]]:
    with unit_of_work() as s:
        rows = s.execute(select(Refund.refund_no, Refund.amount, Refund.status)
                         .where(Refund.order_id == oid)).all()  # fmt: skip
        return [(no, amount, status) for no, amount, status in rows]


def _return(p, return_id: int) -> dict:
    r = requests.get(f"{p.base_url}/v1/returns/{return_id}", headers={"X-API-Key": p.api_key},
                     timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_one_line_of_three_returned_and_refunded_at_each_provider(
    start_pipeline, catalog, monkeypatch
):
    monkeypatch.setenv("AUTO_RECEIVE_S", "3600")  # the buyer confirms; the window stays open
    monkeypatch.setenv("AFTERSALE_WINDOW_S", "3600")
    catalog({"A": 10}, price=1000)
    catalog({"B": 10}, price=3000)
    catalog({"C": 10}, price=500)
    p = start_pipeline(shipping=True)
    lines = [("A", 2), ("B", 1), ("C", 3)]
    orders = {prov: p.post_order(order_message(lines, provider=prov)) for prov in PROVIDERS}
    for prov, oid in orders.items():
        wait_until(lambda o=oid: p.get_order(o)["status"] == "AWAITING_PAYMENT", 60)
        p.stack.pay(prov, oid.replace("-", ""))
    for oid in orders.values():
        wait_until(lambda o=oid: p.get_order(o)["status"] == "DELIVERED", 90)
    on_hand = stock_of("B")[0]

    for oid in orders.values():
        assert p.post(f"/v1/orders/{oid}/receipt", {}).json()["status"] == "RECEIPT_CONFIRMED"
        asked = p.post(f"/v1/orders/{oid}/returns", {
            "kind": "RETURN_AND_REFUND", "lines": [{"sku": "B", "quantity": 1}],
            "reason": "wrong colour",
        })  # fmt: skip
        assert asked.status_code == 201, asked.text
        rid = asked.json()["id"]
        assert p.post(f"/v1/returns/{rid}/approve", {}).json()["status"] == "AWAITING_PARCEL"
        parcel = {"carrier": "yuantong", "waybill": f"YTR{rid:08d}"}
        p.stack.kuaidi100.register_waybill("yuantong", parcel["waybill"])  # the buyer sends it
        assert p.post(f"/v1/returns/{rid}/parcel", parcel).status_code == 200
        # Tracked back (pushes and polls, a 34 h trace in 3.4 s): arrival receives the return.
        wait_until(lambda r=rid: _return(p, r)["status"] == "RECEIVED", 60,
                   show=lambda r=rid: _return(p, r))  # fmt: skip
        got = p.post(f"/v1/returns/{rid}/receive", {"lines": [{"sku": "B", "restock": 1}]})
        assert got.json()["status"] == "REFUNDED" and got.json()["refund_amount"] == 3000

    for prov, oid in orders.items():
        trade = (prov, oid.replace("-", ""))
        wait_until(lambda t=trade: p.stack.refunds().get(t) == 3000, 60,
                   show=lambda: p.stack.refunds())  # fmt: skip
        wait_until(lambda o=oid: [r[2] for r in refunds(o)] == ["SUCCEEDED"], 60,
                   show=lambda o=oid: refunds(o))  # fmt: skip
        assert p.get_order(oid)["status"] == "RECEIPT_CONFIRMED"  # the window is still open
    assert p.stack.refunds() == {(prov, oid.replace("-", "")): 3000 for prov, oid in orders.items()}
    assert stock_of("B")[0] == on_hand + 3  # each returned unit back on hand
    assert_stock_consistent()


def test_an_exchange_ships_a_replacement_that_is_tracked_to_the_door(
    start_pipeline, catalog, monkeypatch
):
    monkeypatch.setenv("AUTO_RECEIVE_S", "3600")
    monkeypatch.setenv("AFTERSALE_WINDOW_S", "3600")
    catalog({"C": 10}, price=500)
    p = start_pipeline(shipping=True)
    oid = p.post_order(order_message("C", 2, provider="alipay"))
    wait_until(lambda: p.get_order(oid)["status"] == "AWAITING_PAYMENT", 60)
    p.stack.pay("alipay", oid.replace("-", ""))
    wait_until(lambda: p.get_order(oid)["status"] == "DELIVERED", 90)
    asked = p.post(f"/v1/orders/{oid}/returns", {
        "kind": "EXCHANGE", "lines": [{"sku": "C", "quantity": 1}], "reason": "wrong size",
    })  # fmt: skip
    rid = asked.json()["id"]
    assert p.post(f"/v1/returns/{rid}/approve", {}).json()["status"] == "AWAITING_PARCEL"
    got = p.post(f"/v1/returns/{rid}/receive", {"lines": [{"sku": "C", "restock": 1}]})
    assert got.json()["status"] == "RESHIPPED", got.text

    def replacement() -> dict | None:
        parcels = p.get_order(oid)["parcels"]
        return parcels[1] if len(parcels) == 2 else None

    wait_until(lambda: (replacement() or {}).get("status") == "DELIVERED", 90,
               show=lambda: p.get_order(oid)["parcels"])  # fmt: skip
    parcel = replacement()
    assert parcel is not None and parcel["waybill"]
    assert [(x["sku"], x["quantity"]) for x in parcel["lines"]] == [("C", 1)]
    assert len(p.stack.warehouse.ledger()["bookings"]) == 2  # the order's parcel, the replacement
    assert p.get_order(oid)["status"] == "DELIVERED"  # the order itself does not move
    assert stock_of("C") == (10 - 2 + 1 - 1, 0)
    assert refunds(oid) == [] and p.stack.refunds() == {}
    assert_stock_consistent()


def test_a_refund_only_before_shipping_is_refunded_at_the_provider_and_its_units_freed(
    start_pipeline, catalog, monkeypatch
):
    monkeypatch.setenv("RETURN_AUTO_APPROVE_MAX", "100000")  # the policy approves it at once
    catalog({"A": 10}, price=1000)
    catalog({"C": 10}, price=500)
    p = start_pipeline(shipping=False)  # nothing books: the order waits in PAID
    oid = p.post_order(order_message([("A", 2), ("C", 3)], provider="wechatpay"))
    wait_until(lambda: p.get_order(oid)["status"] == "AWAITING_PAYMENT", 60)
    p.stack.pay("wechatpay", oid.replace("-", ""))
    wait_until(lambda: p.get_order(oid)["status"] == "PAID", 60)
    held = stock_of("C")[1]
    asked = p.post(f"/v1/orders/{oid}/returns", {
        "kind": "REFUND_ONLY", "lines": [{"sku": "C", "quantity": 2}], "reason": "changed mind",
    })  # fmt: skip
    assert asked.status_code == 201, asked.text
    assert (asked.json()["status"], asked.json()["refund_amount"]) == ("REFUNDED", 1000)
    trade = ("wechatpay", oid.replace("-", ""))
    wait_until(lambda: p.stack.refunds().get(trade) == 1000, 60, show=lambda: p.stack.refunds())
    wait_until(lambda: [r[2] for r in refunds(oid)] == ["SUCCEEDED"], 60,
               show=lambda: refunds(oid))  # fmt: skip
    assert stock_of("C")[1] == held - 2  # the two units are no longer held for the order
    assert p.get_order(oid)["status"] == "PAID"  # the rest still ships
    assert_stock_consistent()
