"""A crash between commit and publish, in the API and in a worker.

The API process dies right after committing an order, before publishing its
``orders.reserve_batch`` (the client sees its connection drop and sends the same order again:
already stored, so the answer is 200 and nothing is published). A worker child dies right after
committing a reservation, before creating the payment in-line (Celery redelivers the message,
which finds the order already RESERVED and creates nothing). Neither message exists anywhere: only
the sweeper, reading the stage deadlines in PostgreSQL, can carry those orders on. The same
for the API's group commit: the process dies after a batch of orders committed, before its one
publish, so none of that batch's messages exists.
"""

from __future__ import annotations

import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import text

from services.unit_of_work import unit_of_work
from tests.conftest import order_message, redis_client, wait_until
from tests.helpers import pipeline_state, status_counts
from tests.reliability.conftest import size
from tests.reliability.invariants import check

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]
PROVIDERS = ("alipay", "wechatpay", "stripe")


def _post_until_acknowledged(base: str, api_key: str, message: dict) -> str:
    """A client that resends the same order until it gets an answer (as upstreams do).

    A dropped connection and a read timeout (the request sat in the listen backlog while
    both API processes were down) are both resent: the order is idempotent on its id."""
    for _ in range(100):
        try:
            r = requests.post(f"{base}/v1/orders", json=message,
                              headers={"X-API-Key": api_key}, timeout=10)  # fmt: skip
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.2)
            continue
        if r.status_code in (200, 202):
            return str(r.json()["id"])
        if r.status_code >= 500:
            time.sleep(0.2)
            continue
        raise AssertionError(r.text)
    raise AssertionError("the API never answered")


def _redrives() -> int:
    with unit_of_work() as s:
        return int(s.execute(text("SELECT count(*) FROM order_events WHERE kind = 'redrive'"))
                   .scalar_one())  # fmt: skip


def _start(procs, port: int, stack, *, orders_app: str = "workers.app") -> None:
    """The crash app's API (2 processes) on ``port``, an orders worker (``orders_app``), a
    payments worker and beat; the simulator pays 200 ms after each create."""
    from workers.procs import wait_http, wait_worker_ready

    api = procs.start("api", [
        sys.executable, "-m", "uvicorn", "--factory", "tests.reliability.crash_points:api",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--log-level", "warning",
    ])  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/healthz", api)
    workers = [
        procs.worker("orders", "orders,maintenance", concurrency=2, app=orders_app),
        procs.worker("payments", "payments", concurrency=8, pool="threads"),
    ]
    for w in workers:
        wait_worker_ready(w)
    procs.beat()
    stack.auto_pay(200)


def _post_all(base: str, api_key: str, n: int, seed: int, clients: int) -> list[str]:
    rng = random.Random(seed)
    messages = [order_message("C", 1, provider=rng.choice(PROVIDERS)) for _ in range(n)]
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda m: _post_until_acknowledged(base, api_key, m), messages))


def test_crash_between_commit_and_publish(
    pipeline_env, procs, catalog, api_key, monkeypatch, figures
):
    # Each order crashes a process once (the API, then a worker child) and each crash costs a
    # process restart: 20 orders are 20 crashes of each kind in the short form.
    n = size(20, 100)
    port, stack = pipeline_env
    monkeypatch.setenv("CRASH_BEFORE_PUBLISH", "orders.reserve_batch,payments.create")
    monkeypatch.setenv("CRASH_LIMIT", str(n))
    monkeypatch.setenv("INTAKE_BATCH_MAX", "1")  # one order per commit: the crash is per order
    catalog({"C": 2 * n})
    _start(procs, port, stack, orders_app="tests.reliability.crash_points")
    fig = figures()
    fig.injected(f"os._exit after commit, before publish: API on {n} orders "
                 f"(orders.reserve_batch), worker on {n} (payments.create)")  # fmt: skip
    ids = _post_all(f"http://127.0.0.1:{port}", api_key, n, seed=17, clients=4)
    wait_until(lambda: status_counts() == {"PAID": n}, 300, 0.5, show=pipeline_state)
    verdict = check(ids, stack)
    crashes = {t: int(redis_client().get(f"crashpoint:{t}:count") or 0)
               for t in ("orders.reserve_batch", "payments.create")}  # fmt: skip
    # Each counter is the number of orders whose process died at that point. A crash also
    # takes down the requests in flight beside it, so the API's count can stay below n.
    assert min(crashes.values()) >= n // 2, crashes
    assert verdict["charges"] == n
    assert _redrives() >= sum(crashes.values())  # each lost message re-published by the sweeper
    fig.recovered(verdict, crashes=crashes, redrives=_redrives())


def test_crash_between_group_commit_and_publish(
    pipeline_env, procs, catalog, api_key, monkeypatch, figures
):
    """Sixteen clients keep both API processes' group commits batching; a flush that committed
    two or more new orders dies before publishing them (three times). The clients resend and
    get 200 (stored, nothing published): every order of the crashed batches reaches PAID
    through the sweeper, none lost, none charged or reserved twice."""
    n = size(64, 300)
    crashes = 3
    port, stack = pipeline_env
    monkeypatch.setenv("CRASH_GROUP_PUBLISH", "2")
    monkeypatch.setenv("CRASH_LIMIT", str(crashes))
    catalog({"C": 2 * n})
    _start(procs, port, stack)
    fig = figures()
    fig.injected(f"os._exit after a group commit of >= 2 orders, before its publish: "
                 f"API, {crashes} batches")  # fmt: skip
    ids = _post_all(f"http://127.0.0.1:{port}", api_key, n, seed=23, clients=16)
    wait_until(lambda: status_counts() == {"PAID": n}, 300, 0.5, show=pipeline_state)
    verdict = check(ids, stack)
    crashed = {o.decode() for o in redis_client().smembers("crashpoint:group:orders")}
    assert int(redis_client().get("crashpoint:group:count") or 0) >= crashes  # all happened
    assert len(crashed) >= 2 * crashes, crashed  # each crashed batch held two orders or more
    assert crashed <= set(ids)  # every order of a crashed batch was acknowledged on a resend
    with unit_of_work() as s:
        redriven = set(s.execute(text(
            "SELECT order_id FROM order_events WHERE kind = 'redrive' AND order_id = ANY(:ids)"
        ), {"ids": sorted(crashed)}).scalars())  # fmt: skip
    assert redriven == crashed  # each lost message re-published by the sweeper
    assert verdict["charges"] == n
    fig.recovered(verdict, crashed_orders=len(crashed), redrives=_redrives())
