"""The payment stage end to end: real workers, real API webhooks, simulators over real HTTP.

The simulators' ledgers are the judge of money: every assertion about charges and refunds reads
them, not our own tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from services.unit_of_work import unit_of_work
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
        # The timeline names the task attempt (worker, retry count) behind each transition ...
        awaiting = next(e for e in view["timeline"] if e["to"] == "AWAITING_PAYMENT")
        task = awaiting["detail"]["task"]
        # The orders task creates the payment in-line after the reservation. Under load that
        # create can time out: the order is handed to payments.create, whose retries must then
        # match the failed calls after the first, so a retry is named, never hidden.
        failed_creates = sum(1 for e in view["timeline"] if e["kind"] == "provider_call"
                             and e["detail"]["operation"] == "create"
                             and e["detail"]["outcome"] != "ok")  # fmt: skip
        if failed_creates == 0:
            assert task["name"] in ("orders.process", "orders.reserve_batch"), task
            assert task["retries"] == 0 and task["worker"].startswith("orders@")
        else:
            assert task["name"] == "payments.create" and task["retries"] == failed_creates - 1
            assert task["worker"].startswith("payments@")
        # ... and every provider call, with secrets and personal data redacted.
        create = next(e for e in view["timeline"] if e["kind"] == "provider_call"
                      and e["detail"]["operation"] == "create"
                      and e["detail"]["outcome"] == "ok")  # fmt: skip
        assert create["detail"]["outcome"] == "ok" and create["detail"]["ms"] >= 0
        assert create["detail"]["request"]["amount"] == {"amount": 1000, "currency": "CNY"}
        assert create["detail"]["request"]["idempotency_key"] == "***"
    stripe_view = p.get_order(ids["stripe"])
    stripe_create = next(e for e in stripe_view["timeline"] if e["kind"] == "provider_call"
                         and e["detail"]["operation"] == "create"
                         and e["detail"]["outcome"] == "ok")  # fmt: skip
    assert stripe_create["detail"]["response"]["instructions"] == {"client_secret": "***"}
    charges = p.stack.charges()
    assert {k: v for k, v in charges.items()} == {
        (prov, out_trade_no(oid)): 1 for prov, oid in ids.items()
    }
    assert stock_of("P") == (10, 3)
    assert_stock_consistent()


def timeline_kinds(view: dict, kind: str, to: str | None = None) -> int:
    return sum(1 for e in view["timeline"] if e["kind"] == kind and (to is None or e["to"] == to))


def test_eight_concurrent_duplicate_notifications_apply_once(start_pipeline, catalog, monkeypatch):
    catalog({"D": 10})
    p = start_pipeline()
    p.stack.alipay.configure(notify_copies=8)
    p.stack.wechatpay.set_options(notify_copies=8)
    p.stack.stripe.webhook_copies = 8
    # One event per payment, so the deliveries are exactly its eight copies.
    p.stack.stripe.webhook_types = {"payment_intent.succeeded"}
    sims = {"alipay": p.stack.alipay.notifier, "wechatpay": p.stack.wechatpay.notifier,
            "stripe": p.stack.stripe.notifier}  # fmt: skip
    alipay_replies: list[bytes] = []  # Alipay stops retrying only on the exact body "success"
    # Each notifier's verdict on every answer: an unacknowledged copy is queued for a retry
    # right then, an acknowledged one never comes back.
    acks: dict[str, list[bool]] = {prov: [] for prov in sims}

    def recording(prov: str, is_ack: Callable[[Any], bool]) -> Callable[[Any], bool]:
        def verdict(r: Any) -> bool:
            if prov == "alipay":
                alipay_replies.append(r.content)
            ok = is_ack(r)
            acks[prov].append(ok)
            return ok

        return verdict

    for prov, notifier in sims.items():
        monkeypatch.setattr(notifier, "_is_ack", recording(prov, notifier._is_ack))
    ids = {prov: p.post_order(order_message("D", 1, provider=prov)) for prov in PROVIDERS}
    for prov, oid in ids.items():
        wait_status(p, oid, "AWAITING_PAYMENT")
        p.stack.pay(prov, out_trade_no(oid))
    for oid in ids.values():
        view = wait_status(p, oid, "PAID")
        assert timeline_kinds(view, "transition", "PAID") == 1
        assert timeline_kinds(view, "payment", "PAID") == 1
    # Every copy answered and judged, so any retry is already queued (none if all were acked).
    for prov, notifier in sims.items():
        wait_until(lambda n=notifier, a=acks[prov]: len(a) >= 8 and len(n.deliveries) >= 8, 30,
                   show=lambda n=notifier: n.deliveries)  # fmt: skip
    for prov, notifier in sims.items():
        assert acks[prov] == [True] * 8, (prov, acks[prov], notifier.deliveries)
        assert notifier.pending() == 0, prov
        # Exactly the eight copies, each acknowledged on its first attempt (no retries).
        attempts = [attempt for _url, _status, attempt in notifier.deliveries]
        statuses = [status for _url, status, _attempt in notifier.deliveries]
        assert attempts == [1] * 8, (prov, notifier.deliveries)
        assert all(s is not None and 200 <= s < 300 for s in statuses), (prov, statuses)
    assert alipay_replies == [b"success"] * 8
    assert set(p.stack.charges().values()) == {1}


def test_polling_confirms_when_no_notification_arrives(start_pipeline, catalog):
    catalog({"Q": 5})
    p = start_pipeline()
    p.stack.stripe.webhook_url = None  # the provider never calls us back
    oid = p.post_order(order_message("Q", 1, provider="stripe"))
    wait_status(p, oid, "AWAITING_PAYMENT")
    p.stack.pay("stripe", out_trade_no(oid))
    view = wait_status(p, oid, "PAID", timeout_s=90)
    assert timeline_kinds(view, "notification") == 0
    assert any(e["kind"] == "payment" and (e["detail"] or {}).get("source") == "query"
               for e in view["timeline"])  # fmt: skip


def test_amount_mismatch_needs_attention(start_pipeline, catalog):
    catalog({"M": 5}, price=1000)
    p = start_pipeline()
    oid = p.post_order(order_message("M", 1, provider="alipay"))
    wait_status(p, oid, "AWAITING_PAYMENT")
    p.stack.alipay.pay(out_trade_no(oid), amount="0.01")
    view = wait_status(p, oid, "NEEDS_ATTENTION")
    assert view["reason"] == "amount_mismatch"
    assert view["payment"]["status"] == "PAID"  # money was taken; an operator decides


def test_payment_after_expiry_is_refunded_once_and_stock_released_once(
    start_pipeline, catalog, monkeypatch
):
    monkeypatch.setenv("PAYMENT_WINDOW_S", "3")
    catalog({"X": 5})
    p = start_pipeline()
    # The buyer's app still shows the QR and Alipay's clock runs behind ours: the close finds no
    # trade (never scanned), yet the buyer pays a moment later.
    p.stack.alipay.configure(qr_survives_close=True, honour_time_expire=False)
    oid = p.post_order(order_message("X", 2, provider="alipay"))
    wait_status(p, oid, "AWAITING_PAYMENT")
    view = wait_status(p, oid, "EXPIRED", timeout_s=60)
    assert view["reason"] == "payment_timeout"
    assert stock_of("X") == (5, 0)
    p.stack.alipay.pay(out_trade_no(oid))  # the late payment
    key = ("alipay", out_trade_no(oid))
    wait_until(lambda: p.stack.refunds().get(key) == 2000, 60)
    view = wait_status(p, oid, "EXPIRED")
    wait_until(lambda: p.get_order(oid)["payment"]["status"] == "REFUNDED", 30)
    wait_until(lambda: p.stack.alipay.notifier.pending() == 0, 30)
    assert p.stack.charges()[key] == 1
    # Refunded once, in full: one refund record at Alipay, not just the right sum.
    rows = [r for r in p.stack.alipay.ledger()["refunds"] if r["out_trade_no"] == key[1]]
    assert [r["amount"] for r in rows] == ["20.00"]
    assert [(r["amount"], r["status"]) for r in p.get_order(oid)["payment"]["refunds"]] == [
        (2000, "SUCCEEDED")]  # fmt: skip
    assert stock_of("X") == (5, 0)
    with unit_of_work() as s:  # released once: one 'release' row in the stock ledger
        released = s.execute(text("SELECT count(*) FROM stock_movements WHERE kind = 'release' "
                                  "AND order_id = :o"), {"o": oid}).scalar_one()  # fmt: skip
    assert released == 1
    assert_stock_consistent()


def test_cancel_before_payment_closes_trade_and_releases_stock(start_pipeline, catalog):
    catalog({"C": 5})
    p = start_pipeline()
    oid = p.post_order(order_message("C", 2, provider="wechatpay"))
    wait_status(p, oid, "AWAITING_PAYMENT")
    assert stock_of("C") == (5, 2)
    r = p.post(f"/v1/orders/{oid}/cancel", {"reason": "customer changed mind"})
    assert r.status_code == 202, r.text
    assert stock_of("C") == (5, 0)
    wait_until(lambda: p.get_order(oid)["payment"]["status"] == "CLOSED", 30)
    ledger = p.stack.wechatpay.ledger()["orders"][out_trade_no(oid)]
    assert ledger["trade_state"] == "CLOSED"
    again = p.post(f"/v1/orders/{oid}/cancel", {})
    assert again.status_code == 409 and again.json()["details"][0]["field"] == "status"
    assert_stock_consistent()


def test_cancel_after_payment_refunds_in_full(start_pipeline, catalog):
    catalog({"R": 5}, price=1500)
    p = start_pipeline()
    oid = p.post_order(order_message("R", 2, provider="stripe"))
    wait_status(p, oid, "AWAITING_PAYMENT")
    p.stack.pay("stripe", out_trade_no(oid))
    wait_status(p, oid, "PAID")
    assert (
        p.post(f"/v1/orders/{oid}/cancel", {"reason": "out of stock in store"}).status_code == 202
    )
    key = ("stripe", out_trade_no(oid))
    wait_until(lambda: p.stack.refunds().get(key) == 3000, 30)
    wait_until(lambda: p.get_order(oid)["payment"]["status"] == "REFUNDED", 30)
    assert stock_of("R") == (5, 0)


def test_partial_and_full_refunds_idempotent_by_number(start_pipeline, catalog):
    catalog({"F": 5}, price=1000)
    p = start_pipeline()
    oid = p.post_order(order_message("F", 3, provider="alipay"))
    wait_status(p, oid, "AWAITING_PAYMENT")
    p.stack.pay("alipay", out_trade_no(oid))
    wait_status(p, oid, "PAID")
    first = p.post(f"/v1/orders/{oid}/refunds", {"amount": 1000, "refund_no": "rf-1"})
    assert first.status_code == 202, first.text
    repeat = p.post(f"/v1/orders/{oid}/refunds", {"amount": 1000, "refund_no": "rf-1"})
    assert repeat.status_code == 202
    conflict = p.post(f"/v1/orders/{oid}/refunds", {"amount": 500, "refund_no": "rf-1"})
    assert conflict.status_code == 409
    too_much = p.post(f"/v1/orders/{oid}/refunds", {"amount": 5000, "refund_no": "rf-2"})
    assert too_much.status_code == 422 and too_much.json()["details"][0]["field"] == "amount"
    key = ("alipay", out_trade_no(oid))
    wait_until(lambda: p.stack.refunds().get(key) == 1000, 30)
    wait_until(lambda: p.get_order(oid)["payment"]["status"] == "PARTIALLY_REFUNDED", 30)
    rest = p.post(f"/v1/orders/{oid}/refunds", {"refund_no": "rf-2"})  # the remainder
    assert rest.status_code == 202
    wait_until(lambda: p.get_order(oid)["payment"]["status"] == "REFUNDED", 30)
    assert p.stack.refunds()[key] == 3000
    refunds = p.get_order(oid)["payment"]["refunds"]
    assert sorted((r["refund_no"], r["amount"], r["status"]) for r in refunds) == [
        ("rf-1", 1000, "SUCCEEDED"), ("rf-2", 2000, "SUCCEEDED")]  # fmt: skip


def test_a_pending_refund_is_queried_until_it_settles_not_sent_again(start_pipeline, catalog):
    """Stripe accepts the refund as pending and no refund webhook arrives: the poll asks for
    the refund (query_refund) until Stripe settles it. Re-sending it would only replay the
    stored "pending" answer for its idempotency key, so the refund would never settle here."""
    catalog({"R": 5}, price=1000)
    p = start_pipeline()
    stripe = p.stack.stripe
    stripe.refunds_start_pending = True
    stripe.webhook_types = {"payment_intent.succeeded"}  # no charge.refund.updated
    oid = p.post_order(order_message("R", 2, provider="stripe"))
    wait_status(p, oid, "AWAITING_PAYMENT")
    p.stack.pay("stripe", out_trade_no(oid))
    wait_status(p, oid, "PAID")
    assert p.post(f"/v1/orders/{oid}/refunds", {"refund_no": "pend-1"}).status_code == 202

    def refund_status() -> str:
        (r,) = p.get_order(oid)["payment"]["refunds"]
        return r["status"]

    wait_until(lambda: refund_status() == "PENDING", 30)
    (at_stripe,) = stripe.ledger()["refunds"]
    assert at_stripe["status"] == "pending"
    stripe.settle_refund(at_stripe["id"])
    wait_until(lambda: refund_status() == "SUCCEEDED", 60)
    assert p.get_order(oid)["payment"]["status"] == "REFUNDED"
    assert [r["amount"] for r in stripe.ledger()["refunds"]] == [2000]  # one refund, in full
    calls = [e["detail"]["operation"] for e in p.get_order(oid)["timeline"]
             if e["kind"] == "provider_call"]  # fmt: skip
    assert calls.count("refund") == 1 and "query_refund" in calls, calls


def test_cli_refund_and_cancel(start_pipeline, catalog):
    import os
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True,
                              text=True, timeout=120, env=dict(os.environ))  # fmt: skip

    catalog({"K": 5}, price=1000)
    p = start_pipeline()
    paid = p.post_order(order_message("K", 2, provider="wechatpay"))
    unpaid = p.post_order(order_message("K", 1, provider="wechatpay"))
    wait_status(p, paid, "AWAITING_PAYMENT")
    wait_status(p, unpaid, "AWAITING_PAYMENT")
    p.stack.pay("wechatpay", out_trade_no(paid))
    wait_status(p, paid, "PAID")
    too_much = cli("payments", "refund", paid, "--refund-no", "cli-0", "--amount", "99999")
    assert too_much.returncode == 1 and "amount: must be between 1 and" in too_much.stderr
    ok = cli("payments", "refund", paid, "--refund-no", "cli-1", "--amount", "500")
    assert ok.returncode == 0, ok.stderr
    key = ("wechatpay", out_trade_no(paid))
    wait_until(lambda: p.stack.refunds().get(key) == 500, 30)
    cancel = cli("orders", "cancel", unpaid, "--reason", "fraud check")
    assert cancel.returncode == 0, cancel.stderr
    assert p.get_order(unpaid)["status"] == "CANCELLED"
    assert cli("orders", "cancel", unpaid).returncode == 1
