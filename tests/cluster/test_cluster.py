"""Scenarios across hosts (issue 23), each judged by the reliability suite's invariant checker:
no accepted order lost, none charged twice, stock equal to its ledger, every order final or
legitimately waiting."""

from __future__ import annotations

import contextlib
import re
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.cluster.cluster import BROKER, Cluster, wait_for
from tests.conftest import order_message, wait_until
from tests.helpers import status_counts
from tests.reliability import invariants
from tests.reliability.conftest import size

pytestmark = pytest.mark.timeout(900)

SKUS = [f"SKU-{n}" for n in range(20)]
PROVIDERS = ("alipay", "wechatpay", "stripe")


def seed(units: int = 100_000) -> None:
    from domain.money import Money
    from services.catalog import receive_stock, upsert_product
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        for sku in SKUS:
            upsert_product(session, sku, f"Product {sku}", Money(1000, "CNY"))
            receive_stock(session, sku, "main", units, actor="cluster")


def message(n: int) -> dict[str, Any]:
    return order_message(SKUS[n % len(SKUS)], 1 + n % 3, external_id=uuid.uuid4().hex,
                         provider=PROVIDERS[n % 3])  # fmt: skip


def post_orders(cluster: Cluster, count: int, threads: int = 16) -> list[str]:
    """Post ``count`` orders from the control host; the ids the API accepted."""

    def one(n: int) -> str:
        r = cluster.post_order(message(n))
        assert r.status_code in (200, 202), r.text
        return str(r.json()["id"])

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def settled() -> bool:
    counts = status_counts()
    return bool(counts) and set(counts) <= {"COMPLETED"}


def test_a_normal_run_is_shared_by_both_worker_hosts(fresh: Cluster, figures) -> None:
    fig = figures()
    seed()
    fresh.start_app()
    accepted = post_orders(fresh, size(600, 3000))
    wait_until(settled, timeout_s=600, every_s=1, show=status_counts)
    verdict = invariants.check(accepted, stack=fresh)
    assert verdict["charges"] == len(accepted), verdict
    shares = {h: fresh.host_metric(h, "orderflow_order_stage_seconds_count") for h in ("w1", "w2")}
    assert all(v > 0 for v in shares.values()), shares
    total = sum(shares.values())
    # The API host exports the system's state series on its own address, behind its token.
    url, token = f"{fresh.api_url}/metrics", fresh.secrets_env["METRICS_TOKEN"]
    assert requests.get(url, timeout=10).status_code == 401
    scraped = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert scraped.status_code == 200 and "orderflow_orders" in scraped.text, scraped.text[:300]
    fig.injected("nothing")
    fig.recovered(verdict, host_share={h: round(v / total, 3) for h, v in shares.items()})


def statuses_in(*wanted: str) -> int:
    counts = status_counts()
    return sum(n for status, n in counts.items() if status in wanted)


def test_a_worker_host_cut_off_mid_task_is_replaced_and_its_late_writes_change_nothing(
    fresh: Cluster, figures
) -> None:
    """w2 leaves the network with tasks in hand for longer than the visibility timeout (20 s):
    Redis gives its messages to w1; when w2 comes back, what it still does finds every order
    moved on (each stage locks the order and checks its status) and changes nothing."""
    fig = figures()
    seed()
    fresh.start_app()
    accepted = post_orders(fresh, size(300, 1500))
    wait_until(lambda: statuses_in("PAID", "SHIPPED", "DELIVERED", "COMPLETED") >= 20,
               timeout_s=120, show=status_counts)  # fmt: skip
    w2 = fresh.host("w2")
    w2.cut()
    fig.injected("worker host w2 link down for 35 s (visibility timeout 20 s)",
                 in_flight=status_counts())  # fmt: skip
    time.sleep(35)  # the fault's duration: the partition itself, not a wait for a result
    w2.heal()
    wait_until(settled, timeout_s=600, every_s=1, show=status_counts)
    verdict = invariants.check(accepted, stack=fresh)
    assert verdict["charges"] == len(accepted), verdict
    assert all(p.alive() for p in w2.procs), "w2's processes must survive the partition"
    fig.recovered(verdict, w2_stage_moves=fresh.host_metric("w2", STAGE_MOVES))


STAGE_MOVES = "orderflow_order_stage_seconds_count"

#: Run in a worker host with the app's settings: open a transaction through the app's engine,
#: take a lock in it, say so, and wait until stopped (a process cut off mid-transaction).
_HOLD_A_LOCK = """
import signal
from sqlalchemy import text
from models.db import get_engine
with get_engine().connect() as conn, conn.begin():
    conn.execute(text("SELECT pg_advisory_xact_lock(4242)"))
    print("locked", flush=True)
    signal.pause()  # until the test stops this process (SIGTERM)
"""


def test_a_host_cut_off_mid_transaction_loses_its_locks(fresh: Cluster, figures) -> None:
    """A worker host cut off while its transaction holds row locks: PostgreSQL ends that
    session (its keepalives probe the silent client, models.db.network_timeouts) and the other
    hosts get the rows within the network timeout, instead of waiting for the operating system's
    two-hour keepalive (found by the worker cut on RabbitMQ: four orders locked for good)."""
    import psycopg2

    w2 = fresh.host("w2")
    # The defaults: the network timeout, and the soft time limit it must stay below.
    env = {**fresh.app_env(w2), "DB_NETWORK_TIMEOUT_S": "15", "TASK_SOFT_TIME_LIMIT_S": "30"}
    holder = w2.start("lock-holder", [sys.executable, "-c", _HOLD_A_LOCK], env)
    wait_for(lambda: b"locked" in holder.log_path.read_bytes(), holder, "the lock holder")
    fig = figures()
    w2.cut()
    fig.injected("worker host w2 cut off while its transaction holds a lock")
    started = time.monotonic()
    try:
        with (
            contextlib.closing(psycopg2.connect(fresh.database_url)) as conn,
            conn.cursor() as cur,
        ):
            cur.execute("SET lock_timeout = '60s'")
            cur.execute("SELECT pg_advisory_xact_lock(4242)")  # waits for the server to notice
        waited = time.monotonic() - started
    finally:
        w2.heal()
    assert waited < 30, f"the lock came free after {waited:.0f} s"
    fig.row.update(lock_freed_after_s=round(waited, 1))
    fig.recovered(invariants.check([]))


def test_the_api_host_cut_from_the_broker_keeps_accepting(fresh: Cluster, figures) -> None:
    """The broker (Redis, or RabbitMQ under CLUSTER_BROKER=rabbitmq) silent to the API host
    while PostgreSQL answers: every order is still accepted and stored; the sweeper publishes
    them once the API's publishes fail."""
    fig = figures()
    seed()
    fresh.start_app()
    data, api = fresh.host("data"), fresh.host("api")
    data.drop_from(fresh.broker_address, api)
    fig.injected(f"API host cut from the broker ({fresh.broker})")
    started = time.monotonic()
    try:
        accepted = post_orders(fresh, size(60, 300), threads=8)
    finally:
        data.undrop_from(fresh.broker_address, api)
    took = time.monotonic() - started
    wait_until(settled, timeout_s=600, every_s=1, show=status_counts)
    verdict = invariants.check(accepted, stack=fresh)
    fig.recovered(verdict, intake_during_cut_s=round(took, 1))


def test_the_api_host_cut_from_postgres_answers_503_and_stores_nothing(fresh: Cluster) -> None:
    seed()
    fresh.start_app(workers=(), beats=0)
    data, api = fresh.host("data"), fresh.host("api")
    data.drop_from(fresh.db_address, api)
    try:
        msg = message(7)
        started = time.monotonic()
        r = fresh.post_order(msg, timeout=120)
        took = time.monotonic() - started
    finally:
        data.undrop_from(fresh.db_address, api)
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) > 0
    assert r.json()["error"] == "unavailable", r.text
    assert took < 60, f"the 503 took {took:.0f} s"
    assert status_counts() == {}, "nothing may be stored"
    again = fresh.post_order(msg)  # healed: the client's retry is accepted
    assert again.status_code == 202, again.text


def beat_sends(cluster: Cluster, beat: str, job: str = "sweep-stalled-orders") -> int:
    log = cluster.host(beat).procs[0].log_path
    return len(re.findall(rf"Sending due task {job} ", log.read_text(errors="replace")))


def test_beat_on_two_hosts_sends_each_job_once_per_period(fresh: Cluster, figures) -> None:
    fig = figures()
    fresh.extra_env["BEAT_LEASE_S"] = "3"
    fresh.start_app(workers=("w1",), beats=2)
    wait_until(lambda: beat_sends(fresh, "beat1") + beat_sends(fresh, "beat2") >= 4)
    first = (beat_sends(fresh, "beat1"), beat_sends(fresh, "beat2"))
    window = 10.0
    time.sleep(window)  # the observation window: beats run on their own periods meanwhile
    sends = (beat_sends(fresh, "beat1") - first[0], beat_sends(fresh, "beat2") - first[1])
    period = 0.5  # SWEEP_INTERVAL_S
    assert 0 in sends, f"both beats sent: {sends}"
    assert sum(sends) <= window / period + 2, sends
    leader = "beat1" if sends[0] else "beat2"
    standby = "beat2" if leader == "beat1" else "beat1"
    fresh.host(leader).cut()  # the leader goes silent: the standby takes over after its lease
    fig.injected("two beats; then the leader's host cut off", leader=leader)
    before = beat_sends(fresh, standby)
    wait_until(lambda: beat_sends(fresh, standby) > before + 3, timeout_s=30)
    fig.row.update(sends_in_10s=sends, takeover_s=round(time.monotonic() - fig._t0, 1))
    fresh.host(leader).heal()
    fig.recovered(invariants.check([]))


def test_postgres_and_redis_restarted_mid_run(fresh: Cluster, figures) -> None:
    """PostgreSQL restarted (fast shutdown), then Redis restarted without persistence: every
    queued task is lost with it, and the sweeper re-drives each order from PostgreSQL."""
    fig = figures()
    seed()
    fresh.start_app()
    accepted = post_orders(fresh, size(300, 1500))
    data = fresh.host("data")
    postgres = next(p for p in data.procs if p.name == "data/postgres" and p.alive())
    fig.injected("PostgreSQL restarted, then Redis restarted empty", at=status_counts())
    postgres.stop(grace_s=30)
    fresh.start_postgres()
    wait_until(lambda: statuses_in("PAID", "SHIPPED", "DELIVERED", "COMPLETED") > 0)
    more = post_orders(fresh, size(100, 500))
    redis_proc = next(p for p in data.procs if p.name == "data/redis" and p.alive())
    redis_proc.stop()
    fresh.start_redis()
    wait_until(settled, timeout_s=600, every_s=1, show=status_counts)
    verdict = invariants.check(accepted + more, stack=fresh)
    assert verdict["charges"] == len(accepted) + len(more), verdict
    fig.recovered(verdict)


def test_a_worker_host_90_s_ahead_judges_nothing_by_its_clock(fresh: Cluster, figures) -> None:
    """w2's clock runs 90 s ahead and only w2 runs the beat jobs (sweeper, payment polls). The
    payment window is 60 s and buyers pay after 5 s: judged by w2's clock, every order would
    have expired at once; judged by the database's, none does."""
    fig = figures()
    seed()
    fresh.extra_env["PAYMENT_WINDOW_S"] = "60"
    fresh.auto_pay(5000)
    fresh.host("w2").clock_offset_s = 90
    try:
        fresh.start_api()
        fresh.start_workers("w2")
        fresh.start_beat("beat1")
        requests_post = post_orders(fresh, size(100, 500))
        fig.injected("worker host w2 90 s ahead (libfaketime), running every beat job")
        wait_until(settled_or_cancelled, timeout_s=600, every_s=1, show=status_counts)
    finally:
        fresh.host("w2").clock_offset_s = 0
    counts = status_counts()
    assert counts == {"COMPLETED": len(requests_post)}, counts
    fig.recovered(invariants.check(requests_post, stack=fresh))


def settled_or_cancelled() -> bool:
    counts = status_counts()
    return bool(counts) and set(counts) <= {"COMPLETED", "CANCELLED", "EXPIRED"}


# -- the data host's broker is RabbitMQ -------------------------------------------------------


@pytest.fixture
def rabbitmq(cluster: Cluster) -> str:
    cluster.ensure_rabbitmq()
    return cluster.amqp_url


@pytest.mark.skipif(BROKER == "rabbitmq", reason="the whole run is on RabbitMQ")
def test_a_normal_run_on_rabbitmq(fresh: Cluster, rabbitmq: str, figures) -> None:
    fig = figures()
    seed()
    fresh.extra_env["BROKER_URL"] = rabbitmq
    fresh.start_app()
    accepted = post_orders(fresh, size(300, 1500))
    wait_until(settled, timeout_s=600, every_s=1, show=status_counts)
    verdict = invariants.check(accepted, stack=fresh)
    shares = {h: fresh.host_metric(h, STAGE_MOVES) for h in ("w1", "w2")}
    assert all(v > 0 for v in shares.values()), shares
    fig.injected("nothing (RabbitMQ broker)")
    fig.recovered(verdict, host_share={h: round(v / sum(shares.values()), 3)
                                       for h, v in shares.items()})  # fmt: skip


def test_rabbitmq_in_a_memory_alarm_gets_503_not_a_hang(fresh: Cluster, rabbitmq: str, figures):
    """RabbitMQ's memory high watermark lowered mid-run: it blocks every publisher. Publishes
    time out on their confirm instead of waiting out the alarm, intake answers 503 with
    Retry-After (storing nothing), and everything accepted before and after is processed once
    the watermark is back."""
    fig = figures()
    seed()
    fresh.extra_env["BROKER_URL"] = rabbitmq
    fresh.start_app()
    accepted = post_orders(fresh, size(50, 200))
    fresh.rabbitmqctl("set_vm_memory_high_watermark", "absolute", "1")  # alarm at once
    fig.injected("RabbitMQ memory high watermark lowered to 1 byte")
    try:
        answers = post_timed(fresh, [message(1000 + n) for n in range(size(80, 300))])
    finally:
        fresh.rabbitmqctl("set_vm_memory_high_watermark", "0.4")
    refused = [msg for msg, r, _ in answers if r.status_code == 503]
    for _msg, r, _took in answers:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1, r.headers
        else:  # the probes: stored before their publish timed out, the sweeper sends them
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])
    slowest = max(took for _, _, took in answers)
    assert refused, "intake never refused while RabbitMQ blocked publishers"
    assert slowest < 60, f"a request waited {slowest:.0f} s"
    ids = {m["external_id"] for m in refused}
    from sqlalchemy import text

    from services.unit_of_work import unit_of_work

    with unit_of_work() as s:
        stored = s.execute(text("SELECT count(*) FROM orders WHERE external_id = ANY(:ids)"),
                           {"ids": list(ids)}).scalar()  # fmt: skip
    assert stored == 0, "a refused order was stored"
    for msg in refused:  # the clients retry after Retry-After: the alarm is over
        r = wait_until(lambda m=msg: ok_or_none(fresh.post_order(m)), timeout_s=120)
        accepted.append(r.json()["id"])
    wait_until(settled, timeout_s=600, every_s=1, show=status_counts)
    verdict = invariants.check(accepted, stack=fresh)
    fig.recovered(verdict, refused_503=len(refused), probes_202=len(answers) - len(refused),
                  slowest_answer_s=round(slowest, 1))  # fmt: skip


def post_timed(cluster: Cluster, messages: list[dict[str, Any]], threads: int = 8) -> list[Any]:
    """Post each message once from ``threads`` clients: (message, response, seconds) each."""

    def one(msg: dict[str, Any]) -> tuple[dict[str, Any], Any, float]:
        started = time.monotonic()
        r = cluster.post_order(msg, timeout=120)
        return msg, r, time.monotonic() - started

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, messages))


def ok_or_none(r: Any) -> Any:
    return r if r.status_code == 202 else None
