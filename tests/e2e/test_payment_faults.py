"""Payments under crashes, faults and forgeries. The simulators' ledgers judge the money."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest
import requests

from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.helpers import assert_stock_consistent, pipeline_state, status_counts

pytestmark = pytest.mark.e2e
PROVIDERS = ("alipay", "wechatpay", "stripe")


def post_orders(p, n: int, sku: str) -> list[str]:
    rng = random.Random(n)
    return [p.post_order(order_message(sku, 1, provider=rng.choice(PROVIDERS))) for _ in range(n)]


def assert_charged_exactly_once(p, order_ids: list[str]) -> None:
    charges = p.stack.charges()
    by_trade = {trade: n for (_prov, trade), n in charges.items()}
    assert sorted(by_trade) == sorted(o.replace("-", "") for o in order_ids)
    assert set(by_trade.values()) == {1}, {k: v for k, v in by_trade.items() if v != 1}


def _in_payment() -> int:
    counts = status_counts()
    return counts.get("AWAITING_PAYMENT", 0) + counts.get("PAID", 0)


def test_sigkill_payments_worker_mid_payment(start_pipeline, catalog, monkeypatch):
    """200 orders in the payment stage; the payments worker is SIGKILLed twice and restarted.
    No order is lost and none is charged twice."""
    from workers.procs import wait_worker_ready

    catalog({"S": 500})
    p = start_pipeline(payments_concurrency=8)
    p.stack.set_faults(latency_ms=150)  # keep calls in flight when the kill lands
    p.stack.auto_pay(300)
    ids = post_orders(p, 200, "S")
    for round_no in range(2):
        target = 40 * (round_no + 1)
        wait_until(lambda t=target: _in_payment() > t, 120, 0.1)
        victim = next(pr for pr in reversed(p.procs.procs) if pr.name.startswith("payments"))
        os.kill(victim.pid, signal.SIGKILL)
        victim.popen.wait(timeout=10)
        time.sleep(0.5)
        wait_worker_ready(p.procs.worker(f"payments{round_no + 2}", "payments", concurrency=8,
                                         pool="threads"))  # fmt: skip
    wait_until(lambda: status_counts() == {"PAID": 200}, 240, 0.5)
    assert_charged_exactly_once(p, ids)
    assert_stock_consistent()


def test_thirty_percent_provider_failures_still_paid_exactly_once(
    start_pipeline, catalog, monkeypatch
):
    monkeypatch.setenv("PROVIDER_READ_TIMEOUT_S", "1")
    monkeypatch.setenv("TASK_MAX_RETRIES", "8")
    catalog({"F": 200})
    p = start_pipeline(payments_concurrency=8)
    p.stack.set_faults(error_rate=0.1, timeout_rate=0.1, reset_rate=0.1, hang_seconds=1.5, seed=7)
    p.stack.auto_pay(200)
    ids = post_orders(p, 60, "F")
    wait_until(lambda: status_counts() == {"PAID": 60}, 240, 0.5, show=pipeline_state)
    assert_charged_exactly_once(p, ids)
    failures = sum(
        1 for sim in (p.stack.alipay.server, p.stack.wechatpay.server, p.stack.stripe)
        for _m, path, status in sim.request_log
        if not path.startswith("/_sim") and (status == 0 or status >= 500)
    )  # fmt: skip
    assert failures > 0  # the faults really fired


def _forgeries(p, oid: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """(provider, body, headers) notifications an attacker could send for this order."""
    trade = oid.replace("-", "")
    ali = {
        "notify_id": "forged-1", "notify_type": "trade_status_sync", "app_id": "2021000000000001",
        "out_trade_no": trade, "trade_status": "TRADE_SUCCESS", "total_amount": "10.00",
        "sign_type": "RSA2", "sign": "Zm9yZ2Vk",
    }  # fmt: skip
    event = {"id": "evt_forged", "type": "payment_intent.succeeded",
             "data": {"object": {"id": "pi_x", "amount": 1000, "amount_received": 1000,
                                 "currency": "cny", "status": "succeeded",
                                 "metadata": {"out_trade_no": trade}}}}  # fmt: skip
    stripe_body = json.dumps(event).encode()
    wechat = {"id": "EV-forged", "event_type": "TRANSACTION.SUCCESS",
              "resource": {"algorithm": "AEAD_AES_256_GCM", "ciphertext": "AAAA",
                           "nonce": "abcdefghijkl", "associated_data": "transaction"}}  # fmt: skip
    stale = int(time.time()) - 301
    return [
        ("alipay", "&".join(f"{k}={v}" for k, v in ali.items()).encode(),
         {"Content-Type": "application/x-www-form-urlencoded"}),
        ("wechatpay", json.dumps(wechat).encode(),
         {"Content-Type": "application/json", "Wechatpay-Timestamp": str(int(time.time())),
          "Wechatpay-Nonce": "n", "Wechatpay-Signature": "Zm9yZ2Vk",
          "Wechatpay-Serial": p.stack.wechatpay.platform_serial}),
        ("stripe", stripe_body,
         {"Content-Type": "application/json", "Stripe-Signature": f"t={int(time.time())},v1=00"}),
        ("stripe", stripe_body,  # correctly signed, but 301 s old
         {"Content-Type": "application/json",
          "Stripe-Signature": f"t={stale},v1={p.stack.stripe.sign(stripe_body, stale)}"}),
    ]  # fmt: skip


def test_forged_notifications_are_refused_and_change_nothing(start_pipeline, catalog):
    catalog({"G": 5})
    p = start_pipeline()
    oid = p.post_order(order_message("G", 1, provider="alipay"))
    wait_until(lambda: p.get_order(oid)["status"] == "AWAITING_PAYMENT", 60)
    before = p.get_order(oid)
    for provider, body, headers in _forgeries(p, oid):
        r = requests.post(f"{p.base_url}/webhooks/{provider}", data=body, headers=headers,
                          timeout=10)  # fmt: skip
        assert 400 <= r.status_code < 500, (provider, r.status_code, r.text)
    after = p.get_order(oid)
    assert after["status"] == "AWAITING_PAYMENT"
    assert after["payment"] == before["payment"]
    assert after["timeline"] == before["timeline"]
    with unit_of_work() as s:
        from sqlalchemy import text

        assert s.execute(text("SELECT count(*) FROM processed_notifications")).scalar_one() == 0
    assert p.stack.charges() == {}


def test_fresh_correctly_signed_stripe_event_is_accepted(start_pipeline, catalog):
    """The control for the forgery test: the same body, signed now, is accepted."""
    catalog({"H": 5})
    p = start_pipeline()
    body = json.dumps({"id": "evt_ok", "type": "payment_intent.created",
                       "data": {"object": {"id": "pi_y", "metadata": {}}}}).encode()  # fmt: skip
    now = int(time.time())
    r = requests.post(
        f"{p.base_url}/webhooks/stripe", data=body, timeout=10,
        headers={"Content-Type": "application/json",
                 "Stripe-Signature": f"t={now},v1={p.stack.stripe.sign(body, now)}"},
    )  # fmt: skip
    assert r.status_code == 200, r.text


def test_provider_down_opens_circuit_orders_wait_then_pay(start_pipeline, catalog, monkeypatch):
    monkeypatch.setenv("CIRCUIT_MIN_CALLS", "3")
    monkeypatch.setenv("CIRCUIT_COOLDOWN_S", "3")
    catalog({"W": 20})
    p = start_pipeline()
    p.stack.wechatpay.server.set_faults(error_rate=1.0)
    ids = [p.post_order(order_message("W", 1, provider="wechatpay")) for _ in range(5)]

    def circuit_opened() -> bool:
        return any(
            (e["detail"] or {}).get("circuit") == "opened"
            for oid in ids for e in p.get_order(oid)["timeline"]
        )  # fmt: skip

    wait_until(circuit_opened, 60)
    time.sleep(2)
    assert status_counts() == {"RESERVED": 5}  # waiting, not failed
    p.stack.wechatpay.server.set_faults(error_rate=0.0)
    p.stack.auto_pay(100)
    wait_until(lambda: status_counts() == {"PAID": 5}, 120, 0.5)
    assert_charged_exactly_once(p, ids)


def test_reconcile_fixes_paid_at_provider_and_reports_what_it_cannot(
    start_pipeline, catalog, monkeypatch
):
    import subprocess
    import sys

    monkeypatch.setenv("PAYMENT_QUERY_FIRST_S", "3600")  # no polling: only reconcile can tell
    catalog({"Z": 5})
    p = start_pipeline()
    p.stack.stripe.webhook_url = None  # and no notification
    paid_there = p.post_order(order_message("Z", 1, provider="stripe"))
    phantom = p.post_order(order_message("Z", 1, provider="stripe"))
    for oid in (paid_there, phantom):
        wait_until(lambda o=oid: p.get_order(o)["status"] == "AWAITING_PAYMENT", 60)
    p.stack.pay("stripe", paid_there.replace("-", ""))
    with unit_of_work() as s:  # a row that claims money the provider never took
        from sqlalchemy import text

        s.execute(text("UPDATE payments SET status = 'PAID' WHERE order_id = :o"), {"o": phantom})
    run = subprocess.run([sys.executable, "-m", "cli.main", "payments", "reconcile"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "250"})  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert "checked 2, fixed 1, unresolved 1" in run.stdout
    assert "we recorded PAID, provider says PENDING" in run.stdout
    assert p.get_order(paid_there)["status"] == "PAID"


@pytest.mark.parametrize("provider", ["alipay", "wechatpay"])
def test_create_replayed_after_the_buyer_paid_settles_by_query(
    start_pipeline, catalog, monkeypatch, provider
):
    """The first create reached the provider but its result never committed here (PostgreSQL
    went away); the buyer paid; the retried create finds the trade settled (Alipay
    ACQ.TRADE_HAS_SUCCESS, WeChat ORDERPAID). The order must end PAID, not NEEDS_ATTENTION.
    Found by the PostgreSQL-restart reliability scenario. (Stripe replays the PaymentIntent
    itself for the same key: the order goes to AWAITING_PAYMENT and the first poll sees it paid.)"""
    from tasks.dispatch import enqueue

    monkeypatch.setenv("PAYMENT_QUERY_FIRST_S", "3600")  # no polling ...
    monkeypatch.setenv("CREATE_REDRIVE_S", "3600")  # ... and no sweeper: only our create
    catalog({"Q": 5})
    p = start_pipeline()
    p.stack.alipay.configure(notify_delay=3600)  # ... and no notification
    p.stack.wechatpay.set_options(notify_delay_s=3600)
    p.stack.stripe.webhook_url = None
    oid = p.post_order(order_message("Q", 1, provider=provider))
    wait_until(lambda: p.get_order(oid)["status"] == "AWAITING_PAYMENT", 60)
    p.stack.pay(provider, oid.replace("-", ""))
    with unit_of_work() as s:  # as if the create's result had never been recorded
        from sqlalchemy import text

        s.execute(text("UPDATE payments SET status = 'CREATING', next_query_at = NULL "
                       "WHERE order_id = :o"), {"o": oid})  # fmt: skip
        s.execute(text("UPDATE orders SET status = 'RESERVED' WHERE id = :o"), {"o": oid})
    enqueue("payments.create", oid)
    wait_until(lambda: p.get_order(oid)["status"] != "RESERVED", 60)
    assert p.get_order(oid)["status"] == "PAID", p.get_order(oid)["timeline"][-3:]
    assert_charged_exactly_once(p, [oid])
