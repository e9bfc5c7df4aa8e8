"""The shipping and tracking stages end to end: warehouse booking, Kuaidi100 subscription,
pushes and polling, through to COMPLETED. Real workers; simulators over real HTTP."""

from __future__ import annotations

import pytest

from services.task_names import SHIPPING_BOOK, SHIPPING_SUBSCRIBE, TRACKING_POLL
from tests.conftest import order_message, wait_until
from tests.helpers import assert_stock_consistent, celery_inspect, stock_of

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
    # Booked and subscribed in the one shipping.book task: no shipping.subscribe message ran.
    totals = _task_totals(p)
    assert totals.get(SHIPPING_BOOK, 0) >= 1 and SHIPPING_SUBSCRIBE not in totals, totals


def _task_totals(p) -> dict[str, int]:
    """Tasks the shipping worker has received, by name (``celery inspect stats``)."""
    shipping = [w for w in p.procs.procs if w.name == "shipping"]
    stats = wait_until(lambda: celery_inspect(shipping, "stats"), 30)
    totals: dict[str, int] = {}
    for node in stats.values():
        for name, count in node.get("total", {}).items():
            totals[name] = totals.get(name, 0) + count
    return totals


def test_a_failed_subscription_is_handed_to_the_subscribe_task(start_pipeline, catalog):
    catalog({"H": 10})
    p = start_pipeline(shipping=True)
    p.stack.kuaidi100.set_faults(error_rate=1.0)  # every Kuaidi100 call answers "busy"
    oid = paid_order(p, "H", 1)
    wait_until(lambda: any(e["kind"] == "task_retry"
                           for e in p.get_order(oid)["timeline"]), 60)  # fmt: skip
    assert p.get_order(oid)["status"] == "SHIPPED"  # the booking stands
    p.stack.kuaidi100.set_faults(error_rate=0.0)
    wait_until(lambda: p.get_order(oid)["shipment"]["subscribed"], 60)
    assert _task_totals(p).get(SHIPPING_SUBSCRIBE, 0) >= 1
    assert len(p.stack.warehouse.ledger()["bookings"]) == 1  # the booking was not retried


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
    assert p.get_order(oid)["status"] in ("SHIPPED", "IN_TRANSIT", "DELIVERED",
                                          "RECEIPT_CONFIRMED", "COMPLETED")  # fmt: skip
    assert stock_of("M") == (3, 0)
    assert p.stack.warehouse.ledger()["bookings"] == {}  # manual mode books nothing


def tracking_entries(view: dict, source: str) -> list[dict]:
    return [e for e in view["timeline"]
            if e["kind"] == "tracking" and (e["detail"] or {}).get("source") == source]  # fmt: skip


def transitions(view: dict) -> list[str]:
    return [e["to"] for e in view["timeline"] if e["kind"] == "transition"]


def test_full_journey_to_completed_by_push(start_pipeline, catalog):
    catalog({"J": 10})
    p = start_pipeline(shipping=True)
    p.stack.kuaidi100.quota = 0  # every poll is refused (601): only pushes can move the order
    oid = paid_order(p, "J", 1, provider="wechatpay")
    wait_until(lambda: p.get_order(oid)["status"] == "COMPLETED", 90)
    view = p.get_order(oid)
    assert transitions(view) == ["RECEIVED", "RESERVED", "AWAITING_PAYMENT", "PAID", "SHIPPED",
                                 "IN_TRANSIT", "DELIVERED", "RECEIPT_CONFIRMED",
                                 "COMPLETED"]  # fmt: skip
    assert tracking_entries(view, "push") and not [
        e for e in tracking_entries(view, "poll") if (e["detail"] or {}).get("new_events")
    ]
    assert view["shipment"]["status"] == "DELIVERED"
    codes = [e["raw_code"] for e in view["shipment"]["events"]]
    assert codes[-1] == "301" and len(codes) == len(
        set((e["at"], e["raw_code"], e["description"]) for e in view["shipment"]["events"])
    )


def test_full_journey_to_completed_by_polling_alone(start_pipeline, catalog):
    catalog({"L": 10})
    p = start_pipeline(shipping=True)
    p.stack.kuaidi100.set_push_options(delay_s=3600)  # pushes never arrive in time
    oid = paid_order(p, "L", 1, provider="stripe")
    wait_until(lambda: p.get_order(oid)["status"] == "COMPLETED", 90)
    view = p.get_order(oid)
    assert tracking_entries(view, "poll") and not tracking_entries(view, "push")
    ledger = p.stack.kuaidi100.ledger()
    assert ledger["throttle_violations"] == 0  # never queried inside the minimum interval


RANK = {"PENDING": 0, "INFO_RECEIVED": 1, "IN_TRANSIT": 2, "OUT_FOR_DELIVERY": 3,
        "AVAILABLE_FOR_PICKUP": 3, "ATTEMPT_FAIL": 3, "DELIVERED": 4}  # fmt: skip


def test_duplicate_and_out_of_order_pushes_never_go_backwards(start_pipeline, catalog):
    """Every push is sent twice at once, and each previous snapshot again after the newer one.
    Once the simulator has delivered (and had acknowledged) every copy: each event is stored
    once, the shipment's status only moved up, and the stale snapshots that reached a later
    status were recorded as ignored."""
    catalog({"O": 10})
    p = start_pipeline(shipping=True)
    sim = p.stack.kuaidi100
    sim.quota = 0
    sim.set_push_options(duplicate=True, out_of_order=True)
    oid = paid_order(p, "O", 1, provider="alipay")
    wait_until(lambda: p.get_order(oid)["status"] == "COMPLETED", 90)
    waybill = p.get_order(oid)["shipment"]["waybill"]

    def all_delivered() -> bool:
        """The shutdown push went out and every copy scheduled so far was delivered and acked:
        ``sent`` counts a copy when it is scheduled, the stale re-send of the last snapshot
        (delivered after the shutdown push) included, and the delivery log has an attempt for
        each."""
        ledger = sim.ledger()
        rec = ledger["pushes"].get(waybill)
        return (bool(rec) and rec["log"][-1]["status"] == "shutdown"
                and rec["acked"] >= rec["sent"]
                and len(ledger["deliveries"]) >= rec["sent"])  # fmt: skip

    wait_until(all_delivered, 30)
    rec = sim.ledger()["pushes"][waybill]
    assert all(entry["copies"] == 2 for entry in rec["log"])  # every push duplicated ...
    assert rec["sent"] == 2 * len(rec["log"]) + len(rec["log"]) - 1  # ... plus stale re-sends
    assert rec["acked"] == rec["answered"] == rec["sent"]  # each copy delivered and acked once

    view = p.get_order(oid)
    assert transitions(view).count("IN_TRANSIT") <= 1
    assert transitions(view).count("DELIVERED") == 1
    events = view["shipment"]["events"]
    assert len(events) == len({(e["at"], e["raw_code"], e["description"]) for e in events})
    pushes = tracking_entries(view, "push")
    assert len(pushes) >= len(rec["log"])  # each push, and copy, left an entry or none ...
    moves = [e["to"] for e in pushes if e["to"] and not (e["detail"] or {}).get("ignored")]
    ranks = [RANK[s] for s in moves]
    assert ranks == sorted(ranks) and moves[-1] == "DELIVERED"  # ... never backwards
    ignored = [e["detail"] for e in pushes if (e["detail"] or {}).get("ignored")]
    # A stale snapshot re-sent after the shutdown push finds tracking ended (it adds no event).
    allowed = ("stale", "not_forward", "tracking_ended")
    assert ignored and all(d["ignored"] in allowed for d in ignored)
    assert all(RANK[d["reported"]] < RANK["DELIVERED"] for d in ignored[-1:])
    assert view["shipment"]["status"] == "DELIVERED"


def test_cli_registers_a_waybill(start_pipeline, catalog, monkeypatch):
    """``orderflow shipments register`` ships a PAID order (manual mode), is idempotent for the
    same waybill and refuses a bad carrier or a second waybill with a non-zero exit."""
    import os
    import subprocess

    from settings import PROJECT_ROOT

    monkeypatch.setenv("SHIPPING_MODE", "manual")
    catalog({"C": 5})
    p = start_pipeline(shipping=True)
    oid = paid_order(p, "C", 1, provider="stripe")
    wait_until(lambda: p.get_order(oid)["status"] == "PAID", 60)
    p.stack.kuaidi100.register_waybill("zhongtong", "ZT5550000001")

    def register(carrier: str, waybill: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PROJECT_ROOT / ".venv/bin/orderflow"), "shipments", "register", oid,
             "--carrier", carrier, "--waybill", waybill],
            cwd=PROJECT_ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    bad = register("ZT!", "ZT5550000001")
    assert bad.returncode != 0 and p.get_order(oid)["status"] == "PAID", bad.stdout + bad.stderr
    ok = register("zhongtong", "ZT5550000001")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ZT5550000001" in ok.stdout
    again = register("zhongtong", "ZT5550000001")
    assert again.returncode == 0, again.stdout + again.stderr  # idempotent
    other = register("zhongtong", "ZT5550000002")
    assert other.returncode != 0  # one parcel per order
    view = p.get_order(oid)
    assert view["status"] in ("SHIPPED", "IN_TRANSIT", "DELIVERED", "RECEIPT_CONFIRMED",
                              "COMPLETED")  # fmt: skip
    assert (view["shipment"]["carrier"], view["shipment"]["waybill"]) == (
        "zhongtong", "ZT5550000001",
    )  # fmt: skip
    assert stock_of("C") == (4, 0)
    # The subscription task the CLI published reached Kuaidi100.
    wait_until(lambda: "ZT5550000001" in p.stack.kuaidi100.ledger()["subscriptions"], 30)


def test_forged_push_is_rejected_and_changes_nothing(start_pipeline, catalog):
    import json as _json

    import requests

    catalog({"Y": 10})
    p = start_pipeline(shipping=True)
    oid = paid_order(p, "Y", 1)
    wait_until(lambda: p.get_order(oid)["shipment"] is not None
               and p.get_order(oid)["shipment"]["waybill"], 60)  # fmt: skip
    waybill = p.get_order(oid)["shipment"]["waybill"]
    sim = p.stack.kuaidi100
    pushed = sim.ledger()["pushes"].get(waybill, {}).get("sent", 0)
    sim.set_push_options(delay_s=3600)  # no genuine push ...
    sim.quota = 0  # ... and no successful poll from here on
    # What was already under way still lands: the polls running now (a poll that starts from
    # here is refused) and the pushes sent before (each acked once the API applied it).
    shipping = [w for w in p.procs.procs if w.name == "shipping"]
    running = wait_until(lambda: celery_inspect(shipping, "active"), 30)
    polls = {t["id"] for tasks in running.values() for t in tasks if t["name"] == TRACKING_POLL}

    def under_way_done() -> bool:
        now = celery_inspect(shipping, "active")
        acked = sim.ledger()["pushes"].get(waybill, {}).get("acked", 0)
        return (now is not None and acked >= pushed
                and not polls & {t["id"] for tasks in now.values() for t in tasks})  # fmt: skip

    wait_until(under_way_done, 30)
    before = p.get_order(oid)
    param = _json.dumps({"status": "shutdown", "message": "", "lastResult": {
        "message": "ok", "nu": waybill, "ischeck": "1", "com": "yuantong", "status": "200",
        "state": "3", "data": [{"time": "2026-11-25 10:00:00", "ftime": "2026-11-25 10:00:00",
                                "context": "forged delivery", "status": "签收",
                                "statusCode": "301"}]}})  # fmt: skip
    for sign in ("0" * 32, None):
        form = {"param": param} | ({"sign": sign} if sign else {})
        r = requests.post(f"{p.base_url}/webhooks/kuaidi100", data=form, timeout=10)
        assert r.status_code == 400, r.text
    after = p.get_order(oid)
    assert after["shipment"]["events"] == before["shipment"]["events"]
    assert "DELIVERED" not in transitions(after)


@pytest.mark.broker
def test_metrics_after_a_run_expose_the_pipeline(start_pipeline, catalog):
    """After orders ran end to end, /metrics shows them: states read from the database and
    counters/histograms recorded inside the worker processes."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    catalog({"X": 10})
    p = start_pipeline(shipping=True)
    ids = [paid_order(p, "X", 1, provider=prov) for prov in ("alipay", "wechatpay", "stripe")]
    for oid in ids:
        wait_until(lambda o=oid: p.get_order(o)["status"] == "COMPLETED", 90)
    text = requests.get(f"{p.base_url}/metrics", timeout=10).text
    samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def value(name: str, **labels: str) -> float:
        matching = (s for s in samples if s.name == name)
        return sum(
            s.value for s in matching if all(s.labels.get(k) == v for k, v in labels.items())
        )

    def present(name: str, **labels: str) -> bool:
        return any(
            s.name == name and all(s.labels.get(k) == v for k, v in labels.items()) for s in samples
        )

    # Every series the operations issue names is in the scrape: a sum of nothing would be 0,
    # so presence is checked first, then the value.
    for name, labels in [
        ("orderflow_orders", {"status": "COMPLETED"}),
        ("orderflow_order_stage_seconds_count", {"to_status": "PAID"}),
        *[("orderflow_queue_depth", {"queue": q}) for q in
          ("orders", "payments", "shipping", "tracking", "maintenance", "callbacks")],
        *[("orderflow_circuit_open", {"provider": pr}) for pr in
          ("alipay", "wechatpay", "stripe", "kuaidi100", "warehouse")],
        ("orderflow_shipments_stale", {}),
        ("orderflow_dead_letters_open", {}),
        ("orderflow_provider_call_seconds_count", {"provider": "stripe", "operation": "create"}),
    ]:  # fmt: skip
        assert present(name, **labels), (name, labels)
    assert value("orderflow_orders", status="COMPLETED") == 3
    assert value("orderflow_order_stage_seconds_count", to_status="PAID") >= 3
    assert value("orderflow_order_stage_seconds_count", to_status="COMPLETED") >= 3
    for provider in ("alipay", "wechatpay", "stripe", "warehouse", "kuaidi100"):
        assert value("orderflow_provider_calls_total", provider=provider, outcome="ok") >= 1
        assert value("orderflow_provider_call_seconds_count", provider=provider) >= 1
        assert value("orderflow_circuit_open", provider=provider) == 0
    assert value("orderflow_shipments_stale") == 0  # every parcel was tracked just now
    assert value("orderflow_dead_letters_open") == 0
    assert not [s for s in samples if s.name == "orderflow_scrape_error" and s.value]
