"""A poison message: a task that kills its worker process every time it runs. It is delivered
at most three times, then dead-lettered, while the other orders go through payment normally."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import func, select

from models import DeadLetter
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.helpers import pipeline_state, status_counts
from tests.reliability.conftest import size
from tests.reliability.invariants import check

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]
PROVIDERS = ("alipay", "wechatpay", "stripe")


def _dead_letters(task: str) -> int:
    with unit_of_work() as s:
        return int(s.scalar(select(func.count()).where(DeadLetter.task_name == task)) or 0)


def test_task_that_always_crashes_its_worker(
    pipeline_env, procs, catalog, api_key, tmp_path, figures
):
    from tests.e2e.conftest import Pipeline
    from workers.procs import wait_worker_ready
    from workers.publish import enqueue

    n = size(40, 200)
    port, stack = pipeline_env
    catalog({"P": n})
    procs.api(port)
    workers = [
        procs.worker("crashy", "orders,maintenance", concurrency=2, app="tests.e2e.crash_app"),
        procs.worker("payments", "payments", concurrency=8, pool="threads"),
    ]
    for w in workers:
        wait_worker_ready(w)
    procs.beat()
    stack.auto_pay(200)
    p = Pipeline(f"http://127.0.0.1:{port}", api_key, stack, procs)
    marker = tmp_path / "deliveries.txt"
    fig = figures()
    enqueue("orders.crash_always", str(marker))
    fig.injected("a task whose every run kills its worker process (os._exit)")
    rng = random.Random(23)
    ids = [p.post_order(order_message("P", 1, provider=rng.choice(PROVIDERS))) for _ in range(n)]
    wait_until(lambda: status_counts() == {"PAID": n}, 240, 0.5, show=pipeline_state)
    wait_until(lambda: _dead_letters("orders.crash_always") == 1, 120, 0.5)
    deliveries = marker.read_text().split()
    assert len(deliveries) == 3  # ran three times, each time killing its process; then parked
    verdict = check(ids, stack)
    assert verdict["charges"] == n
    fig.recovered(verdict, poison_deliveries=len(deliveries))
