"""A flood of forged provider notifications against the running pipeline.

While 16 attacker threads (a process of their own, :mod:`tests.security.flood`) post forged
notifications for every provider (Alipay, WeChat Pay, Stripe, Kuaidi100: bad or missing
signatures, bodies tampered after signing, stale timestamps, unknown certificate serials, a wrong
webhook secret or salt), genuine payments for 20 orders are notified by the simulators. Every
forgery must get a 4xx and change nothing: no ``processed_notifications`` row, no order, payment
or timeline change (the targets include orders never paid and orders already paid), no charge or
refund at the providers. Every genuine notification must be applied.

"Does not slow the valid ones": the time from the buyer paying at the simulator to the order's
PAID transition (its timestamp in ``order_events``) is measured for 20 orders paid in quiet and
20 paid during the flood, in the same test, and printed; the flood's median must stay under
5 x the quiet median + 0.5 s. This holds because a forgery is refused before any database or
Redis work: ``api/payments.py`` and ``api/shipping.py`` verify the signature (RSA2,
WECHATPAY2-SHA256-RSA2048 + AES-GCM, Stripe-Signature, Kuaidi100 MD5 salt) before anything else,
so a forgery costs a signature check on the event loop and nothing else.
:func:`test_forgeries_are_refused_without_database_or_redis` proves that ordering directly: an
API whose database and Redis are unreachable still refuses every forgery with 4xx, while a
genuine notification to it fails (it does need the database).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from sqlalchemy import text

from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.helpers import status_counts
from workers.procs import ProcessGroup, free_port

pytestmark = pytest.mark.e2e

PROVIDERS = ("alipay", "wechatpay", "stripe")
THREADS = 16
PER_THREAD = 1000 if os.environ.get("RELIABILITY_FULL") == "1" else 250
QUIET, FLOODED, CONTROL = 20, 20, 4


def trade_of(order_id: str) -> str:
    return order_id.replace("-", "")


# --- forgeries ----------------------------------------------------------------------------------


def _form(params: dict[str, str]) -> bytes:
    return urlencode(params).encode()


def _tamper(data: bytes, old: bytes, new: bytes) -> bytes:
    """``data`` changed after it was signed (the change must really happen)."""
    assert old in data, (old, data[:200])
    return data.replace(old, new)


def _alipay(stack: Any, trade: str, n: int) -> list[tuple[bytes, dict[str, str]]]:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    params = {
        "notify_id": f"forged-ali-{n}", "notify_type": "trade_status_sync",
        "notify_time": "2024-01-01 10:00:00", "app_id": stack.alipay.app_id,
        "out_trade_no": trade, "trade_no": f"2024{n:020d}", "trade_status": "TRADE_SUCCESS",
        "total_amount": "10.00", "receipt_amount": "10.00", "gmt_payment": "2024-01-01 10:00:00",
    }  # fmt: skip
    signed = stack.alipay.sign_notification(params)
    refund = {
        **params,
        "notify_id": f"forged-ali-r{n}",
        "trade_status": "TRADE_CLOSED",
        "refund_fee": "10.00",
        "out_biz_no": f"r{n}",
        "gmt_refund": "2024-01-01 11:00:00",
    }
    return [
        (_tamper(signed, b"total_amount=10.00", b"total_amount=0.01"), form),
        (_form({**params, "sign_type": "RSA2", "sign": base64.b64encode(b"x" * 256).decode()}),
         form),
        (_form(params), form),  # unsigned
        (_tamper(stack.alipay.sign_notification(refund), b"refund_fee=10.00", b"refund_fee=9.9"),
         form),
        (_form({**refund, "app_id": "2021000000000999", "sign_type": "RSA2", "sign": "Zm9yZ2Vk"}),
         form),
    ]  # fmt: skip


def _wechat(stack: Any, trade: str, n: int) -> list[tuple[bytes, dict[str, str]]]:
    wx = stack.wechatpay
    paid = {"mchid": wx.mchid, "appid": wx.appid, "out_trade_no": trade,
            "transaction_id": f"42000{n:020d}", "trade_state": "SUCCESS",
            "success_time": "2024-01-01T10:00:00+08:00",
            "amount": {"total": 1000, "payer_total": 1000, "currency": "CNY"}}  # fmt: skip
    refund = {"mchid": wx.mchid, "out_trade_no": trade, "out_refund_no": f"r{n}",
              "refund_id": f"50000{n:020d}", "refund_status": "SUCCESS",
              "amount": {"total": 1000, "refund": 1000, "payer_refund": 1000}}  # fmt: skip
    out = [
        wx.build_notification("TRANSACTION.SUCCESS", paid, event_id=f"EV-forged-{n}-a",
                              corrupt_signature=True),
        wx.build_notification("TRANSACTION.SUCCESS", paid, event_id=f"EV-forged-{n}-b",
                              serial="1234567890ABCDEF"),
        wx.build_notification("TRANSACTION.SUCCESS", paid, event_id=f"EV-forged-{n}-c",
                              timestamp=int(time.time()) - 3600),  # replayed an hour later
        wx.build_notification("REFUND.SUCCESS", refund, event_id=f"EV-forged-{n}-d",
                              corrupt_signature=True),
    ]  # fmt: skip
    headers, body = wx.build_notification("TRANSACTION.SUCCESS", paid, event_id=f"EV-forged-{n}-e")
    out.append((headers, _tamper(body, b"TRANSACTION.SUCCESS", b"TRANSACTION.CLOSED")))
    return [(body, {**headers, "Content-Type": "application/json"}) for headers, body in out]


def _stripe(stack: Any, trade: str, n: int) -> list[tuple[bytes, dict[str, str]]]:
    obj = {"id": f"pi_forged_{n}", "object": "payment_intent", "amount": 1000,
           "amount_received": 1000, "currency": "cny", "status": "succeeded",
           "metadata": {"out_trade_no": trade}}  # fmt: skip
    event = {"id": f"evt_forged_{n}", "object": "event", "type": "payment_intent.succeeded",
             "created": int(time.time()), "data": {"object": obj}}  # fmt: skip
    body = json.dumps(event).encode()
    refund = json.dumps({**event, "id": f"evt_forged_r{n}", "type": "charge.refunded",
                         "data": {"object": {**obj, "id": f"ch_forged_{n}", "refunded": True,
                                             "amount_refunded": 1000}}}).encode()  # fmt: skip
    now = int(time.time())
    wrong = hmac.new(b"whsec_wrong", f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    json_ct = {"Content-Type": "application/json"}
    return [
        (body, {**json_ct, "Stripe-Signature": f"t={now},v1={'0' * 64}"}),
        (body, {**json_ct, "Stripe-Signature": stack.stripe.sign(body, now - 3600)}),  # replay
        (body, {**json_ct, "Stripe-Signature": f"t={now},v1={wrong}"}),
        (body, json_ct),
        (refund, {**json_ct, "Stripe-Signature": stack.stripe.sign(body)}),  # another body's
    ]


def _kuaidi100(salt: str, n: int) -> list[tuple[bytes, dict[str, str]]]:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    param = json.dumps({"status": "polling", "message": "", "lastResult": {
        "com": "yuantong", "nu": f"YT{n:010d}", "state": "3", "ischeck": "1",
        "data": [{"time": "2024-01-01 10:00:00", "ftime": "2024-01-01 10:00:00",
                  "context": "已签收", "status": "签收"}]}})  # fmt: skip
    good = hashlib.md5((param + salt).encode()).hexdigest().upper()  # the protocol's MD5
    wrong = hashlib.md5((param + "wrong-salt").encode()).hexdigest().upper()
    return [
        (_form({"param": param, "sign": wrong}), form),
        (_form({"param": param}), form),
        (_form({"param": _tamper(param.encode(), b'"3"', b'"4"').decode(), "sign": good}), form),
    ]


def forgeries(stack: Any, salt: str, order_ids: list[str]) -> list[dict[str, Any]]:
    """Forged notifications against every order, interleaved across the four providers."""
    per_provider: dict[str, list[tuple[bytes, dict[str, str]]]] = {
        "alipay": [], "wechatpay": [], "stripe": [], "kuaidi100": []}  # fmt: skip
    for n, oid in enumerate(order_ids):
        per_provider["alipay"] += _alipay(stack, trade_of(oid), n)
        per_provider["wechatpay"] += _wechat(stack, trade_of(oid), n)
        per_provider["stripe"] += _stripe(stack, trade_of(oid), n)
        per_provider["kuaidi100"] += _kuaidi100(salt, n)
    out = []
    for i in range(max(len(v) for v in per_provider.values())):
        for provider, items in per_provider.items():
            body, headers = items[i % len(items)]
            out.append(
                {
                    "provider": provider,
                    "path": f"/webhooks/{provider}",
                    "body_b64": base64.b64encode(body).decode(),
                    "headers": headers,
                }
            )
    return out


# --- state --------------------------------------------------------------------------------------


def paid_at(order_ids: list[str]) -> dict[str, float]:
    """Epoch seconds of each order's PAID transition (the timestamp of the applying transaction)."""
    with unit_of_work() as s:
        rows = s.execute(
            text("SELECT order_id, extract(epoch FROM created_at) FROM order_events "
                 "WHERE kind = 'transition' AND to_status = 'PAID' AND order_id = ANY(:ids)"),
            {"ids": order_ids},
        ).all()  # fmt: skip
    return {r[0]: float(r[1]) for r in rows}


def lasting_state(p: Any, order_id: str) -> dict[str, Any]:
    """Status, payment and timeline, without the provider calls the status poller adds."""
    view = p.get_order(order_id)
    view["timeline"] = [e for e in view["timeline"] if e["kind"] != "provider_call"]
    return {k: view[k] for k in ("status", "payment", "timeline")}


def pay(p: Any, providers: dict[str, str], order_ids: list[str]) -> dict[str, float]:
    """The buyers pay one after another (100 ms apart); returns when each payment was made."""
    made = {}
    for oid in order_ids:
        made[oid] = time.time()
        p.stack.pay(providers[oid], trade_of(oid))
        time.sleep(0.1)
    return made


def latencies(made: dict[str, float], order_ids: list[str]) -> list[float]:
    wait_until(lambda: len(paid_at(order_ids)) == len(order_ids), 120, 0.2, show=status_counts)
    done = paid_at(order_ids)
    return [done[o] - made[o] for o in order_ids]


def start_flood(procs: Any, tmp_path: Path, base_url: str, spec: list[dict[str, Any]]) -> Any:
    """Start the attacker; returns once every one of its threads has finished a request."""
    spec_path, result = tmp_path / "flood-spec.json", tmp_path / "flood-result.json"
    stop, ready = tmp_path / "flood-stop", tmp_path / "flood-ready"
    spec_path.write_text(json.dumps({
        "base_url": base_url, "threads": THREADS, "min_per_thread": PER_THREAD,
        "max_seconds": 240, "stop_file": str(stop), "ready_file": str(ready),
        "requests": spec}))  # fmt: skip
    proc = procs.start("flood", [sys.executable, "-m", "tests.security.flood", str(spec_path),
                                 str(result)])  # fmt: skip
    wait_until(lambda: ready.exists() or not proc.alive(), 60, 0.05, show=proc.log_tail)
    return proc, stop, result


# --- tests --------------------------------------------------------------------------------------


def test_forged_flood_is_refused_changes_nothing_and_does_not_slow_valid_payments(
    start_pipeline, catalog, procs, tmp_path, capsys
):
    catalog({"F": 100})
    p = start_pipeline(payments_concurrency=8)
    n = QUIET + FLOODED + CONTROL
    providers = {}
    for i in range(n):
        provider = PROVIDERS[i % len(PROVIDERS)]
        providers[p.post_order(order_message("F", 1, provider=provider))] = provider
    ids = list(providers)
    quiet, flooded, control = ids[:QUIET], ids[QUIET : QUIET + FLOODED], ids[QUIET + FLOODED :]
    wait_until(lambda: status_counts() == {"AWAITING_PAYMENT": n}, 120, 0.3, show=status_counts)

    # Quiet: nobody attacks.
    quiet_s = latencies(pay(p, providers, quiet), quiet)

    before_control = {o: lasting_state(p, o) for o in control}
    before_quiet = {o: lasting_state(p, o) for o in quiet}
    salt = p.stack.env["KUAIDI100_CALLBACK_SALT"]
    spec = forgeries(p.stack, salt, ids)
    # The flood is at full speed (every attacker thread at work) before the first buyer pays.
    flood, stop, result_path = start_flood(procs, tmp_path, p.base_url, spec)
    assert flood.alive(), flood.log_tail()

    flooded_s = latencies(pay(p, providers, flooded), flooded)
    paid_done = time.time()
    stop.touch()
    wait_until(result_path.exists, 240, 0.5)
    result = json.loads(result_path.read_text())

    q50, f50 = statistics.median(quiet_s), statistics.median(flooded_s)
    q95, f95 = (sorted(v)[int(0.95 * len(v))] for v in (quiet_s, flooded_s))
    rate = result["sent"] / (result["finished_at"] - result["started_at"])
    with capsys.disabled():
        print(f"\nforged-notification flood: {result['sent']} forged requests from {THREADS} "
              f"threads in {result['finished_at'] - result['started_at']:.1f} s ({rate:.0f}/s), "
              f"their latency p50 {result['latency_ms']['p50']:.1f} ms, "
              f"p95 {result['latency_ms']['p95']:.1f} ms; statuses {result['statuses']}\n"
              f"pay -> PAID quiet:   p50 {q50 * 1000:.0f} ms, p95 {q95 * 1000:.0f} ms, "
              f"max {max(quiet_s) * 1000:.0f} ms (n={len(quiet_s)})\n"
              f"pay -> PAID flooded: p50 {f50 * 1000:.0f} ms, p95 {f95 * 1000:.0f} ms, "
              f"max {max(flooded_s) * 1000:.0f} ms (n={len(flooded_s)})")  # fmt: skip

    # The flood ran, at volume, over the whole flooded phase, and every forgery got a 4xx.
    assert result["errors"] == [], result["errors"]
    assert result["sent"] >= THREADS * PER_THREAD
    assert result["started_at"] < min(o for o in paid_at(flooded).values())
    assert result["finished_at"] > paid_done
    bad = {k: v for k, v in result["statuses"].items() if not 400 <= int(k.split()[1]) < 500}
    assert bad == {}, bad
    assert {k.split()[0] for k in result["statuses"]} == {*PROVIDERS, "kuaidi100"}

    # ... and changed nothing.
    with unit_of_work() as s:
        rows = s.execute(text("SELECT provider, event_id FROM processed_notifications"))
        processed = rows.all()
        tracking = s.execute(text("SELECT count(*) FROM tracking_events")).scalar_one()
    assert not [r for r in processed if "forged" in r.event_id.lower()], processed
    assert len(processed) >= QUIET + FLOODED  # the genuine ones are there
    assert tracking == 0
    assert {o: lasting_state(p, o) for o in control} == before_control
    assert {o: lasting_state(p, o) for o in quiet} == before_quiet

    # Every genuine payment was applied, once; no charge for the orders never paid, no refund.
    assert status_counts() == {"PAID": QUIET + FLOODED, "AWAITING_PAYMENT": CONTROL}
    for oid in quiet + flooded:
        view = p.get_order(oid)
        assert view["payment"]["status"] == "PAID"
        assert sum(1 for e in view["timeline"] if e["kind"] == "transition"
                   and e["to"] == "PAID") == 1  # fmt: skip
    charges = p.stack.charges()
    assert sorted(t for (_prov, t) in charges) == sorted(trade_of(o) for o in quiet + flooded)
    assert set(charges.values()) == {1}
    assert p.stack.refunds() == {}

    # Not slowed: the forgeries cost the API a signature check each, never a database query.
    assert f50 < 5 * q50 + 0.5, (q50, f50)


def test_forgeries_are_refused_without_database_or_redis(pipeline_env, tmp_path):
    """An API whose PostgreSQL and Redis are unreachable still answers every forgery with a 4xx
    (so none of them got as far as a query), while a genuine notification to the same API fails
    for want of the database: the control that shows the database really is behind the check."""
    _port, stack = pipeline_env
    dead = {
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/nowhere",
        "REDIS_URL": "redis://127.0.0.1:9/0",
        "BROKER_URL": "redis://127.0.0.1:9/0",
    }
    group = ProcessGroup(log_dir=tmp_path / "logs", env=dead)
    api_port = free_port()
    try:
        group.api(api_port)
        base = f"http://127.0.0.1:{api_port}"
        trade = uuid.uuid4().hex
        spec = forgeries(stack, stack.env["KUAIDI100_CALLBACK_SALT"], [trade])
        seen = set()
        for item in spec:
            r = requests.post(base + item["path"], data=base64.b64decode(item["body_b64"]),
                              headers=item["headers"], timeout=30)  # fmt: skip
            assert 400 <= r.status_code < 500, (item["provider"], r.status_code, r.text[:200])
            seen.add(item["provider"])
        assert seen == {*PROVIDERS, "kuaidi100"}
        event = {"id": f"evt_{trade}", "object": "event", "type": "payment_intent.succeeded",
                 "created": int(time.time()), "data": {"object": {
                     "id": "pi_1", "object": "payment_intent", "amount": 1000,
                     "amount_received": 1000, "currency": "cny", "status": "succeeded",
                     "metadata": {"out_trade_no": trade}}}}  # fmt: skip
        body = json.dumps(event).encode()
        genuine = requests.post(
            f"{base}/webhooks/stripe",
            data=body,
            timeout=30,
            headers={
                "Content-Type": "application/json",
                "Stripe-Signature": stack.stripe.sign(body),
            },
        )
        assert genuine.status_code >= 500, genuine.text[:200]
    finally:
        group.stop_all()
