"""A crash between commit and publish, in the API and in a worker.

The API process dies right after committing an order, before publishing ``orders.process``
(the client sees its connection drop and sends the same order again: already stored, so the
answer is 200 and nothing is published). A worker child dies right after committing a
reservation, before publishing ``payments.create`` (Celery redelivers ``orders.process``, which
finds the order already RESERVED and publishes nothing). Neither message exists anywhere: only
the sweeper, reading the stage deadlines in PostgreSQL, can carry those orders on.
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


def test_crash_between_commit_and_publish(
    pipeline_env, procs, catalog, api_key, monkeypatch, figures
):
    from workers.procs import wait_http, wait_worker_ready

    n = size(40, 100)
    port, stack = pipeline_env
    monkeypatch.setenv("CRASH_BEFORE_PUBLISH", "orders.process,payments.create")
    monkeypatch.setenv("CRASH_LIMIT", str(n))
    catalog({"C": 2 * n})
    api = procs.start("api", [
        sys.executable, "-m", "uvicorn", "--factory", "tests.reliability.crash_points:api",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--log-level", "warning",
    ])  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/healthz", api)
    workers = [
        procs.worker("orders", "orders,maintenance", concurrency=2,
                     app="tests.reliability.crash_points"),
        procs.worker("payments", "payments", concurrency=8, pool="threads"),
    ]  # fmt: skip
    for w in workers:
        wait_worker_ready(w)
    procs.beat()
    stack.auto_pay(200)
    fig = figures()
    fig.injected(f"os._exit after commit, before publish: API on {n} orders "
                 f"(orders.process), worker on {n} (payments.create)")  # fmt: skip
    rng = random.Random(17)
    base = f"http://127.0.0.1:{port}"
    messages = [order_message("C", 1, provider=rng.choice(PROVIDERS)) for _ in range(n)]
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda m: _post_until_acknowledged(base, api_key, m), messages))
    wait_until(lambda: status_counts() == {"PAID": n}, 300, 0.5, show=pipeline_state)
    verdict = check(ids, stack)
    crashes = {t: int(redis_client().get(f"crashpoint:{t}:count") or 0)
               for t in ("orders.process", "payments.create")}  # fmt: skip
    # Each counter is the number of orders whose process died at that point. A crash also
    # takes down the requests in flight beside it, so the API's count can stay below n.
    assert min(crashes.values()) >= n // 2, crashes
    assert verdict["charges"] == n
    assert _redrives() >= sum(crashes.values())  # each lost message re-published by the sweeper
    fig.recovered(verdict, crashes=crashes, redrives=_redrives())
