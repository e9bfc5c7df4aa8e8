"""Work that several processes race for: expiries claimed by two sweepers under two beats, and
the same provider notification delivered eight times at once."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import text

from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.helpers import pipeline_state, status_counts, stock_of
from tests.reliability.conftest import size
from tests.reliability.invariants import check

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]
PROVIDERS = ("alipay", "wechatpay", "stripe")
_EXPIRIES_PER_ORDER = """
    SELECT order_id, count(*) FROM order_events
    WHERE kind = 'transition' AND to_status = 'EXPIRED' GROUP BY order_id
"""


def test_reservations_expiring_with_two_sweepers_and_two_beats(
    pipeline_env, procs, catalog, api_key, monkeypatch, figures
):
    """Two beat processes both schedule the sweep, two worker processes both run it: each
    expiry must still happen once (SKIP LOCKED claims), stock released once."""
    from workers.procs import wait_http, wait_worker_ready

    n = size(100, 100)
    port, stack = pipeline_env
    monkeypatch.setenv("PAYMENT_WINDOW_S", "15")
    monkeypatch.setenv("BEAT_LEASE_S", "0")  # no leader: both beats send, the sweeps race
    catalog({"X": n})
    procs.api(port)
    workers = [procs.worker(f"sweeper{i}", "orders,maintenance", concurrency=2) for i in (1, 2)]
    workers.append(procs.worker("payments", "payments", concurrency=8, pool="threads"))
    for w in workers:
        wait_worker_ready(w)
    procs.beat("beat1")
    procs.beat("beat2")
    wait_http(f"http://127.0.0.1:{port}/healthz")
    import requests

    rng = random.Random(19)
    ids = []
    for _ in range(n):
        r = requests.post(f"http://127.0.0.1:{port}/v1/orders", timeout=30,
                          json=order_message("X", 1, provider=rng.choice(PROVIDERS)),
                          headers={"X-API-Key": api_key})  # fmt: skip
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    wait_until(lambda: status_counts().get("AWAITING_PAYMENT", 0) == n, 120, 0.2,
               show=pipeline_state)  # fmt: skip
    assert stock_of("X") == (n, n)
    fig = figures()
    fig.injected("payment window of 15 s ends for every order under two beats, two sweepers")
    wait_until(lambda: status_counts() == {"EXPIRED": n}, 180, 0.5, show=pipeline_state)
    verdict = check(ids, stack)
    with unit_of_work() as s:
        expiries = dict(s.execute(text(_EXPIRIES_PER_ORDER)).all())
    assert len(expiries) == n and set(expiries.values()) == {1}
    assert stock_of("X") == (n, 0)  # every unit back, once
    assert verdict["charges"] == 0
    fig.recovered(verdict)


def _transitions(view: dict, to: str) -> int:
    return sum(1 for e in view["timeline"] if e["kind"] == "transition" and e["to"] == to)


def _signed_delivery_push(stack, waybill: str) -> dict[str, str]:
    """A genuine Kuaidi100 push (signed with this run's test salt) saying: delivered."""
    import hashlib
    import json

    param = json.dumps({"status": "shutdown", "message": "", "lastResult": {
        "message": "ok", "nu": waybill, "ischeck": "1", "com": "yuantong", "status": "200",
        "state": "3", "data": [{"time": "2026-11-25 10:00:00", "ftime": "2026-11-25 10:00:00",
                                "context": "delivered: signed for by the recipient",
                                "status": "签收", "statusCode": "301"}]}},
        ensure_ascii=False, separators=(",", ":"))  # fmt: skip
    salt = stack.env["KUAIDI100_CALLBACK_SALT"]
    sign = hashlib.md5((param + salt).encode()).hexdigest().upper()  # MD5: the protocol
    return {"param": param, "sign": sign}


def test_each_notification_delivered_eight_times_concurrently(start_pipeline, catalog, figures):
    """Every payment provider sends each notification 8 times at once; then 8 copies of one
    Kuaidi100 delivery push arrive at once. Each is applied exactly once."""
    from concurrent.futures import ThreadPoolExecutor

    import requests

    per_provider = size(4, 20)
    n = per_provider * len(PROVIDERS)
    catalog({"D": n})
    p = start_pipeline(shipping=True)
    p.stack.alipay.configure(notify_copies=8)
    p.stack.wechatpay.set_options(notify_copies=8)
    p.stack.stripe.webhook_copies = 8
    p.stack.kuaidi100.set_push_options(delay_s=3600)  # only our copies tell of the delivery
    p.stack.kuaidi100.quota = 0  # and polling finds nothing
    ids = [p.post_order(order_message("D", 1, provider=prov))
           for prov in PROVIDERS for _ in range(per_provider)]  # fmt: skip
    wait_until(lambda: status_counts().get("AWAITING_PAYMENT", 0) == n, 120, 0.2,
               show=pipeline_state)  # fmt: skip
    fig = figures()
    fig.injected("each payment notification sent 8x concurrently; 8 concurrent copies of a "
                 "signed Kuaidi100 delivery push per order")  # fmt: skip
    for oid in ids:
        p.stack.pay(p.get_order(oid)["payment_provider"], oid.replace("-", ""))

    def shipped() -> bool:
        return all((p.get_order(o).get("shipment") or {}).get("waybill") for o in ids)

    wait_until(shipped, 180, 0.5, show=pipeline_state)
    with ThreadPoolExecutor(8) as pool:
        for oid in ids:
            form = _signed_delivery_push(p.stack, p.get_order(oid)["shipment"]["waybill"])
            codes = list(
                pool.map(
                    lambda _i, f=form: (
                        requests.post(
                            f"{p.base_url}/webhooks/kuaidi100", data=f, timeout=30
                        ).status_code
                    ),
                    range(8),
                )
            )
            assert set(codes) == {200}, codes
    wait_until(lambda: status_counts() == {"COMPLETED": n}, 180, 0.5, show=pipeline_state)
    for oid in ids:
        view = p.get_order(oid)
        assert _transitions(view, "PAID") == 1 and _transitions(view, "DELIVERED") == 1
        assert sum(1 for e in view["timeline"] if e["kind"] == "payment"
                   and e["to"] == "PAID") == 1  # fmt: skip
    for notifier in (p.stack.alipay.notifier, p.stack.wechatpay.notifier,
                     p.stack.stripe.notifier):  # fmt: skip
        wait_until(lambda nt=notifier: nt.pending() == 0, 30)
        assert len(notifier.deliveries) >= 8 * per_provider
    verdict = check(ids, p.stack)
    assert verdict["charges"] == n
    fig.recovered(verdict)
