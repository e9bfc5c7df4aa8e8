"""Payment deadlines and cancels at the edges: a create that never got through, a trade found
paid by the close, a payment that arrives after a cancel. The simulators' ledgers judge money:
refunds are counted as rows there, not summed."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import text

from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.helpers import assert_stock_consistent, pipeline_state, stock_of

pytestmark = pytest.mark.e2e


def trade(order_id: str) -> str:
    return order_id.replace("-", "")


def releases(order_id: str) -> int:
    """Stock 'release' ledger rows of the order (one SKU per order here: 1 means once)."""
    with unit_of_work() as s:
        return int(
            s.execute(
                text("SELECT count(*) FROM stock_movements WHERE kind = 'release' "
                     "AND order_id = :o"), {"o": order_id},
            ).scalar_one()
        )  # fmt: skip


def refund_rows(p, provider: str, out_trade_no: str) -> list[dict]:
    """The provider's own refund records for the trade (one per refund it carried out)."""
    ledger = p.stack.simulator(provider).ledger()
    if provider == "stripe":
        pis = {pi["id"] for pi in ledger["payment_intents"]
               if pi["metadata"].get("out_trade_no") == out_trade_no}  # fmt: skip
        return [r for r in ledger["refunds"] if r["payment_intent"] in pis]
    return [r for r in ledger["refunds"] if r["out_trade_no"] == out_trade_no]


def failed_stripe_creates(p, order_id: str) -> int:
    return sum(1 for e in p.get_order(order_id)["timeline"]
               if e["kind"] == "provider_call" and e["detail"]["operation"] == "create"
               and e["detail"]["outcome"] != "ok")  # fmt: skip


def open_close_dead_letters(order_id: str) -> int:
    """Dead-lettered closes (expire/cancel) of the order. A create that used up its retries
    while the provider was down is a legitimate dead letter; a close must never be one."""
    with unit_of_work() as s:
        return int(
            s.execute(
                text("SELECT count(*) FROM dead_letters WHERE order_id = :o AND status = 'OPEN' "
                     "AND task_name IN ('payments.expire', 'payments.close')"), {"o": order_id},
            ).scalar_one()
        )  # fmt: skip


def test_stripe_create_failing_past_the_deadline_expires_without_a_charge(
    start_pipeline, catalog, monkeypatch
):
    """Stripe answers every call with a 500 (stored per idempotency key) from the order's first
    create until after it expired: no PaymentIntent id is ever stored. At the deadline the close
    repeats the create with the same key, Stripe replays the stored failure, so no intent can
    exist: the order expires and its stock is released once. (It used to dead-letter with
    missing_reference and keep the stock reserved forever.)"""
    monkeypatch.setenv("PAYMENT_WINDOW_S", "5")
    catalog({"E": 5})
    p = start_pipeline()
    p.stack.stripe.set_faults(error_rate=1.0)
    oid = p.post_order(order_message("E", 2, provider="stripe"))
    wait_until(lambda: failed_stripe_creates(p, oid) >= 1, 60)
    assert stock_of("E") == (5, 2)
    view = p.get_order(oid)
    assert view["status"] == "RESERVED" and view["payment"]["status"] == "CREATING"
    wait_until(lambda: p.get_order(oid)["status"] == "EXPIRED", 90, 0.5, show=pipeline_state)
    view = p.get_order(oid)
    expired_at = next(e["at"] for e in view["timeline"] if e["to"] == "EXPIRED")
    with unit_of_work() as s:
        deadline = s.execute(text("SELECT payment_deadline FROM orders WHERE id = :o"),
                             {"o": oid}).scalar_one()  # fmt: skip
    assert datetime.fromisoformat(expired_at) >= deadline
    assert view["reason"] == "payment_timeout" and view["payment"]["status"] == "CLOSED"
    assert stock_of("E") == (5, 0) and releases(oid) == 1
    ledger = p.stack.stripe.ledger()
    assert ledger["payment_intents"] == [] and ledger["charges"] == []
    assert open_close_dead_letters(oid) == 0
    assert_stock_consistent()


def test_cancel_while_stripe_create_keeps_failing_closes_the_payment(start_pipeline, catalog):
    """Cancelled while the payment is still CREATING (no PaymentIntent id): the close recovers
    the answer for the create key — a stored failure — and closes the payment."""
    catalog({"K": 5})
    p = start_pipeline()
    p.stack.stripe.set_faults(error_rate=1.0)
    oid = p.post_order(order_message("K", 1, provider="stripe"))
    wait_until(lambda: failed_stripe_creates(p, oid) >= 1, 60)
    assert p.get_order(oid)["payment"]["status"] == "CREATING"
    r = p.post(f"/v1/orders/{oid}/cancel", {"reason": "changed my mind"})
    assert r.status_code == 202, r.text
    wait_until(lambda: p.get_order(oid)["payment"]["status"] == "CLOSED", 60, 0.5,
               show=pipeline_state)  # fmt: skip
    assert p.get_order(oid)["status"] == "CANCELLED"
    assert stock_of("K") == (5, 0) and releases(oid) == 1
    ledger = p.stack.stripe.ledger()
    assert ledger["payment_intents"] == [] and ledger["charges"] == []
    assert open_close_dead_letters(oid) == 0
    assert_stock_consistent()


def test_expiry_finds_the_trade_paid_and_treats_it_as_paid(start_pipeline, catalog, monkeypatch):
    """The buyer paid, but neither the notification nor a poll told us before the deadline: the
    close at the deadline finds the trade paid — the order is PAID, keeps its stock, no refund."""
    monkeypatch.setenv("PAYMENT_WINDOW_S", "6")
    monkeypatch.setenv("PAYMENT_QUERY_FIRST_S", "3600")  # no polling
    catalog({"P": 5})
    p = start_pipeline()
    p.stack.alipay.configure(notify_delay=3600)  # and no notification in time
    oid = p.post_order(order_message("P", 2, provider="alipay"))
    wait_until(lambda: p.get_order(oid)["status"] == "AWAITING_PAYMENT", 60)
    p.stack.pay("alipay", trade(oid))
    wait_until(lambda: p.get_order(oid)["status"] != "AWAITING_PAYMENT", 90, 0.5)
    view = p.get_order(oid)
    assert view["status"] == "PAID", view["timeline"][-3:]
    assert view["payment"]["status"] == "PAID" and view["payment"]["refunds"] == []
    by_close = [e for e in view["timeline"] if e["kind"] == "payment" and e["to"] == "PAID"
                and (e["detail"] or {}).get("source") == "close"]  # fmt: skip
    assert len(by_close) == 1
    assert p.stack.charges()[("alipay", trade(oid))] == 1
    assert refund_rows(p, "alipay", trade(oid)) == []
    assert stock_of("P") == (5, 2) and releases(oid) == 0
    assert_stock_consistent()


@pytest.mark.parametrize(("paid", "minor"), [(None, 2000), ("0.01", 1)], ids=["asked", "wrong"])
def test_payment_after_cancel_is_refunded_exactly_once(start_pipeline, catalog, paid, minor):
    """The buyer pays a trade the cancel already closed (the app still showed the QR code); the
    notification arrives three times. The payment is refunded once: one refund at Alipay, of
    what was paid. A wrong amount (0.01 of 20.00 CNY) goes back as paid too, and the payment is
    flagged for a person (before, it was only written on the timeline and kept)."""
    catalog({"L": 5}, price=1000)
    p = start_pipeline()
    p.stack.alipay.configure(qr_survives_close=True, honour_time_expire=False, notify_copies=3)
    oid = p.post_order(order_message("L", 2, provider="alipay"))
    wait_until(lambda: p.get_order(oid)["status"] == "AWAITING_PAYMENT", 60)
    assert p.post(f"/v1/orders/{oid}/cancel", {"reason": "too slow"}).status_code == 202
    wait_until(lambda: p.get_order(oid)["payment"]["status"] == "CLOSED", 60)
    p.stack.alipay.pay(trade(oid), amount=paid)  # the late payment
    wait_until(lambda: p.get_order(oid)["payment"]["status"] == "REFUNDED", 60, 0.5)
    wait_until(lambda: p.stack.alipay.notifier.pending() == 0, 30)
    [refund] = refund_rows(p, "alipay", trade(oid))
    assert refund["amount"] == f"{minor // 100}.{minor % 100:02d}"
    assert p.stack.charges()[("alipay", trade(oid))] == 1
    view = p.get_order(oid)
    assert view["status"] == "CANCELLED"
    payment = view["payment"]
    assert [(r["amount"], r["status"]) for r in payment["refunds"]] == [(minor, "SUCCEEDED")]
    assert (payment["captured_amount"], payment["refundable"]) == (minor, 0)
    wrong = "0.01 CNY paid after the order was cancelled (it asked 20.00 CNY); refunded in full"
    assert payment["attention"] == (wrong if paid else None)
    assert stock_of("L") == (5, 0) and releases(oid) == 1
    assert_stock_consistent()
