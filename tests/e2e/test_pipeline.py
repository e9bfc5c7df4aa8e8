"""End to end: API / producer -> broker -> real Celery worker processes -> PostgreSQL.

No eager mode anywhere: workers are separate processes started by pid (``procs`` fixture), and
every assertion reads the database.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from sqlalchemy import func, select

from models import DeadLetter, Order, Reservation
from services.unit_of_work import unit_of_work
from tests.broker import broker_is_redis, broker_url
from tests.conftest import order_message, redis_client, wait_until
from tests.helpers import (
    assert_stock_consistent,
    pipeline_state,
    reservations_per_order,
    status_counts,
    stock_of,
    workers_idle,
)
from workers.broker import purge_task_queues, queue_depths

pytestmark = pytest.mark.e2e


def start_api(procs):
    from workers.procs import free_port

    port = free_port()
    procs.api(port)
    return f"http://127.0.0.1:{port}"


def start_worker(procs, name="w1", queues="orders,maintenance", concurrency=2, env=None):
    """A worker with the test's environment plus ``env`` (settings for that process only)."""
    from workers.procs import wait_worker_ready

    proc = procs.worker(name, queues, concurrency=concurrency, env=env)
    wait_worker_ready(proc)
    return proc


def post_many(base, api_key, messages, threads=32):
    session = requests.Session()

    def send(msg):
        r = session.post(f"{base}/v1/orders", json=msg, headers={"X-API-Key": api_key}, timeout=60)
        assert r.status_code in (200, 202), r.text
        return r.json()["id"]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(send, messages))


def settled(expected: int) -> bool:
    c = status_counts()
    return sum(c.values()) == expected and c.get("RECEIVED", 0) == 0


def test_hot_sku_200_orders_stock_50(procs, catalog, api_key):
    catalog({"HOT": 50})
    base = start_api(procs)
    start_worker(procs, concurrency=2)
    start_worker(procs, name="w2", queues="orders", concurrency=4)  # 6 processes race for HOT
    post_many(base, api_key, [order_message("HOT", 1) for _ in range(200)], threads=50)
    wait_until(lambda: settled(200), 120)
    assert status_counts() == {"RESERVED": 50, "REJECTED": 150}
    assert stock_of("HOT") == (50, 50)
    with unit_of_work() as s:
        reasons = set(s.scalars(select(Order.reason).where(Order.status == "REJECTED")))
    assert reasons == {"out_of_stock"}
    assert_stock_consistent()


def active_holds() -> list[tuple[str, str, str, int]]:
    """Every ACTIVE reservation as (order id, sku, warehouse, quantity), in the order they were
    made (id order: a reservation is inserted while its stock rows are locked)."""
    with unit_of_work() as s:
        rows = s.execute(
            select(Reservation.order_id, Reservation.sku, Reservation.warehouse,
                   Reservation.quantity)
            .where(Reservation.status == "ACTIVE").order_by(Reservation.id)
        )  # fmt: skip
        return [(r[0], r[1], r[2], r[3]) for r in rows]


def test_hot_sku_over_three_warehouses_one_and_two_line_orders_race(procs, catalog, api_key):
    """HOT spread over three warehouses (20 + 20 + 10 = 50) under the priority strategy, COLD
    (8) only in the last one. 150 orders of HOT x1 race 50 of HOT x1 + COLD x1 through six
    worker processes: north runs out while south and east still have HOT, and COLD may run
    out while HOT is left. Exactly 50 are reserved (one-line orders alone want 150 HOT), each
    warehouse's HOT held in full, never beyond its stock and in priority order; 150 rejected
    out of stock, holding nothing."""
    hot = {"north": 20, "south": 20, "east": 10}
    for warehouse, units in hot.items():
        catalog({"HOT": units}, warehouse=warehouse)
    catalog({"COLD": 8}, warehouse="east")
    env = {"ALLOCATION_STRATEGY": "priority", "WAREHOUSES": "north:1,south:2,east:3"}
    base = start_api(procs)
    start_worker(procs, concurrency=2, env=env)
    start_worker(procs, name="w2", queues="orders", concurrency=4, env=env)
    two_line = [order_message([("HOT", 1), ("COLD", 1)]) for _ in range(50)]
    messages = [order_message("HOT", 1) for _ in range(150)] + two_line
    random.Random(21).shuffle(messages)
    ids = post_many(base, api_key, messages, threads=50)  # in the order of messages
    wait_until(lambda: settled(200), 120, show=pipeline_state)
    assert status_counts() == {"RESERVED": 50, "REJECTED": 150}
    for warehouse, units in hot.items():  # every warehouse served, none oversold
        assert stock_of("HOT", warehouse) == (units, units), warehouse
    with unit_of_work() as s:
        reserved = set(s.scalars(select(Order.id).where(Order.status == "RESERVED")))
        reasons = set(s.scalars(select(Order.reason).where(Order.status == "REJECTED")))
    assert reasons == {"out_of_stock"}
    holds = active_holds()
    assert {oid for oid, *_ in holds} == reserved  # a rejected order holds nothing
    # Each HOT unit came from the first warehouse by priority that still had one free.
    by_priority = ["north"] * 20 + ["south"] * 20 + ["east"] * 10
    assert [w for _oid, sku, w, _q in holds if sku == "HOT"] == by_priority
    two_line_ids = {i for i, m in zip(ids, messages, strict=True) if m in two_line}
    wanted = {oid: [("HOT", 1)] + [("COLD", 1)] * (oid in two_line_ids) for oid in reserved}
    got: dict[str, list[tuple[str, int]]] = {}
    for oid, sku, warehouse, quantity in holds:
        assert sku == "HOT" or warehouse == "east"  # COLD is nowhere else
        got.setdefault(oid, []).append((sku, quantity))
    assert {oid: sorted(lines, reverse=True) for oid, lines in got.items()} == wanted
    cold_reserved = len(reserved & two_line_ids)
    assert stock_of("COLD", "east") == (8, cold_reserved)
    assert_stock_consistent()


def test_eight_concurrent_producers_random_multi_sku(procs, catalog):
    from producers.client import OrderProducer

    skus = [f"M{i}" for i in range(8)]
    catalog(dict.fromkeys(skus, 60))
    start_worker(procs, concurrency=2)
    start_worker(procs, name="w2", queues="orders", concurrency=2)
    errors: list[BaseException] = []

    def produce(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with OrderProducer() as producer:
                for _ in range(40):
                    lines = [(s, rng.randint(1, 3)) for s in rng.sample(skus, rng.randint(1, 4))]
                    producer.send(order_message(lines, source=f"producer-{seed}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    wait_until(lambda: settled(320), 180)
    with unit_of_work() as s:
        assert s.scalar(select(func.count()).select_from(DeadLetter)) == 0  # no deadlock escaped
    counts = status_counts()
    assert counts["RESERVED"] + counts.get("REJECTED", 0) == 320
    assert_stock_consistent()


def test_producer_duplicates_make_one_order(procs, catalog):
    from producers.client import OrderProducer

    catalog({"A": 10})
    worker = start_worker(procs)
    msg = order_message("A", 1, external_id="same-one")
    with OrderProducer() as producer:
        for _ in range(20):
            producer.send(msg)
    wait_until(lambda: settled(1), 60)
    # Every duplicate taken off the queue and finished: none can still make a second order.
    wait_until(lambda: workers_idle([worker], ["orders"]), 60)
    assert status_counts() == {"RESERVED": 1}
    assert stock_of("A") == (10, 1)


def test_producer_same_message_from_eight_threads_makes_one_order(procs, catalog):
    """Eight upstream threads (one producer each) send the same order at once: the workers'
    idempotent insert makes one order, reserved once."""
    from producers.client import OrderProducer

    catalog({"A": 10})
    workers = [start_worker(procs, concurrency=2),
               start_worker(procs, name="w2", queues="orders", concurrency=2)]  # fmt: skip
    msg = order_message("A", 1, external_id="same-from-eight")
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            with OrderProducer() as producer:
                barrier.wait(30)
                for _ in range(5):
                    producer.send(msg)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    wait_until(lambda: queue_depths(broker_url(), ["orders"]) == {"orders": 0}, 60)
    wait_until(lambda: settled(1), 60)
    # Every duplicate taken off the queue and finished: none can still reserve a second time.
    wait_until(lambda: workers_idle(workers, ["orders"]), 60)
    assert status_counts() == {"RESERVED": 1}
    assert reservations_per_order() and max(reservations_per_order().values()) == 1
    assert stock_of("A") == (10, 1)
    with unit_of_work() as s:
        assert s.scalar(select(func.count()).select_from(DeadLetter)) == 0


def test_producer_refuses_a_bad_message_before_publishing(db):
    """OrderProducer.send validates first: a bad message raises with field errors and nothing
    reaches the broker."""
    from pydantic import ValidationError

    from producers.client import OrderProducer
    from producers.schema import field_errors

    bad = order_message("A", 0, currency="ZZZ")
    del bad["shipping_address"]
    with OrderProducer() as producer, pytest.raises(ValidationError) as refused:
        producer.send(bad)
    fields = {e["field"]: e["reason"] for e in field_errors(refused.value)}
    assert {"lines.0.quantity", "currency", "shipping_address"} <= set(fields), fields
    assert all(reason.strip() for reason in fields.values())
    assert queue_depths(broker_url(), ["orders"]) == {"orders": 0}


@pytest.mark.broker
def test_invalid_broker_message_becomes_dead_letter(procs, catalog):
    """A message that bypassed producer validation is not dropped: it is a dead letter."""
    from workers.publish import enqueue

    catalog({"A": 10})
    start_worker(procs)
    bad = order_message("A", 0)
    enqueue("orders.intake", bad)
    good = order_message("A", 1)
    enqueue("orders.intake", good)
    wait_until(lambda: settled(1), 60)
    with unit_of_work() as s:
        wait_until(lambda: s.scalar(select(func.count()).select_from(DeadLetter)) == 1, 30)
    with unit_of_work() as s:
        dl = s.scalars(select(DeadLetter)).one()
    assert dl.task_name == "orders.intake" and "lines.0.quantity" in dl.error_message
    assert dl.args[0]["external_id"] == bad["external_id"]


def test_redis_flushed_after_500_accepted_all_recovered(procs, catalog, api_key):
    """Orders accepted while no worker runs, then the broker loses everything: the sweeper
    re-drives every stored order from its stage deadline. (On Redis the whole db is flushed; on
    RabbitMQ, whose quorum queues survive a crash, the queues are purged, as an operator's
    purge or a delivery-limit drop would lose them.)"""
    catalog({"R1": 300, "R2": 300})
    base = start_api(procs)
    ids = post_many(base, api_key, [order_message(random.choice(["R1", "R2"]), 1)
                                   for _ in range(500)])  # fmt: skip
    assert len(set(ids)) == 500
    # The published messages (group commit: each carries a batch of ids, orders.reserve_batch) ...
    published = queue_depths(broker_url(), ["orders"])["orders"]
    assert 0 < published <= 500
    if broker_is_redis():
        client = redis_client()
        client.flushdb()  # ... are gone
        client.close()
    else:
        assert purge_task_queues(broker_url()) == published  # ... are gone
    start_worker(procs)
    procs.beat()
    wait_until(lambda: settled(500), 180)
    counts = status_counts()
    assert counts.get("RESERVED", 0) + counts.get("REJECTED", 0) == 500
    assert max(reservations_per_order().values()) == 1
    assert_stock_consistent()


@pytest.mark.broker
def test_sigkill_worker_mid_batch_loses_nothing(procs, catalog, api_key):
    catalog({"K1": 400, "K2": 400})
    base = start_api(procs)
    worker = start_worker(procs, concurrency=2)
    procs.beat()
    ids = post_many(base, api_key, [order_message([("K1", 1), ("K2", 1)]) for _ in range(300)])
    # Kill the pool children while they work through the batch, twice.
    killed: set[int] = set()
    for _ in range(2):
        wait_until(lambda: status_counts().get("RECEIVED", 0) < 300, 60, 0.05)
        for child in psutil.Process(worker.pid).children():
            os.kill(child.pid, signal.SIGKILL)
            killed.add(child.pid)
        left = status_counts().get("RECEIVED", 0)

        def working_again(left: int = left) -> bool:
            """The pool is replaced (two children none of which was killed) and they work
            through the batch (fewer RECEIVED orders than right after the kill)."""
            fresh = [c for c in psutil.Process(worker.pid).children() if c.pid not in killed]
            return len(fresh) >= 2 and (status_counts().get("RECEIVED", 0) < left or left == 0)

        wait_until(working_again, 60, 0.05)
    assert len(killed) >= 2
    wait_until(lambda: settled(300), 180)
    per_order = reservations_per_order()
    assert set(per_order) <= set(ids)
    # K1 and K2 ledger rows for each reserved order, never more.
    assert all(n == 2 for n in per_order.values())
    assert status_counts() == {"RESERVED": 300}
    assert stock_of("K1") == (400, 300)
    assert_stock_consistent()


def test_unpaid_reservations_expire_via_beat(procs, catalog, api_key, monkeypatch):
    monkeypatch.setenv("PAYMENT_WINDOW_S", "1")
    catalog({"E": 10})
    base = start_api(procs)
    start_worker(procs)
    procs.beat()
    post_many(base, api_key, [order_message("E", 2) for _ in range(3)])
    wait_until(lambda: status_counts() == {"EXPIRED": 3}, 60)
    assert stock_of("E") == (10, 0)
    assert_stock_consistent()


def test_cli_jsonl_intake_reports_bad_lines(procs, catalog, tmp_path):
    catalog({"J": 10})
    start_worker(procs)
    good = [order_message("J", 1) for _ in range(3)]
    lines = [json.dumps(good[0]), "{oops", json.dumps(good[1]),
             json.dumps(order_message("J", -1)), "", json.dumps(good[2])]  # fmt: skip
    path = tmp_path / "orders.jsonl"
    path.write_text("\n".join(lines) + "\n")
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "intake", str(path)],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert "line 2:" in run.stdout and "not valid JSON" in run.stdout
    assert "line 4:" in run.stdout and "lines.0.quantity" in run.stdout
    assert "accepted 3" in run.stdout
    assert "Traceback" not in run.stdout + run.stderr
    wait_until(lambda: status_counts() == {"RESERVED": 3}, 60)
    again = subprocess.run(
        [sys.executable, "-m", "cli.main", "intake", str(path)],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )  # fmt: skip
    assert "accepted 0, already present 3, rejected 2" in again.stdout
    # The same (source, external_id) with another body: reported on its line, nothing changed.
    changed = {**good[0], "lines": [{"sku": "J", "quantity": 2}]}
    path.write_text(json.dumps(changed) + "\n")
    conflict = subprocess.run(
        [sys.executable, "-m", "cli.main", "intake", str(path)],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )  # fmt: skip
    assert conflict.returncode == 1, conflict.stdout + conflict.stderr
    assert "line 1:" in conflict.stdout and "external_id" in conflict.stdout, conflict.stdout
    assert "accepted 0" in conflict.stdout
    assert status_counts() == {"RESERVED": 3} and stock_of("J") == (10, 3)


@pytest.mark.broker
def test_task_that_always_kills_its_worker_is_dead_lettered_after_three_deliveries(
    procs, catalog, api_key, tmp_path
):
    from workers.procs import wait_worker_ready

    catalog({"N": 50})
    base = start_api(procs)
    worker = procs.worker("crashy", "orders,maintenance", concurrency=2, app="tests.e2e.crash_app")
    wait_worker_ready(worker)
    procs.beat()
    marker = tmp_path / "deliveries.txt"
    from workers.publish import enqueue

    enqueue("orders.crash_always", str(marker))
    ids = post_many(base, api_key, [order_message("N", 1) for _ in range(30)])
    wait_until(lambda: settled(30), 120)  # other orders flow normally meanwhile

    def dead_lettered() -> bool:
        with unit_of_work() as s:
            return s.scalar(select(func.count()).where(DeadLetter.task_name ==
                                                       "orders.crash_always")) == 1  # fmt: skip

    wait_until(dead_lettered, 120, 0.5)
    deliveries = marker.read_text().split()
    assert len(deliveries) == 3  # the body ran three times, each time killing its process
    with unit_of_work() as s:
        dl = s.scalars(select(DeadLetter)).one()
    assert dl.error_class.endswith("PoisonMessage") and "never finished" in dl.error_message
    assert len(ids) == 30 and status_counts() == {"RESERVED": 30}
