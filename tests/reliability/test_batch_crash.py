"""A worker SIGKILLed in the middle of a batch of reservations.

``orders.reserve_batch`` reserves up to 50 orders in one transaction, a savepoint each. The
orders worker's pool child kills itself (SIGKILL, planted by ``tests.reliability.crash_points``)
after 20 of the first batch's savepoints were released: nothing was committed, the message was
not acknowledged. Celery redelivers it (acks late, reject on worker lost) and the batch runs
again from the start: each order ends reserved exactly once, its payment created in the same
task, and every invariant holds. No beat runs, so nothing but the redelivery can finish it.
"""

from __future__ import annotations

import random

import pytest
from sqlalchemy import text

from producers.intake import accept_message
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, redis_client, wait_until
from tests.helpers import pipeline_state, reservations_per_order, status_counts
from tests.reliability.conftest import size
from tests.reliability.invariants import check

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]
PROVIDERS = ("alipay", "wechatpay", "stripe")


def _reserved_by() -> dict[str, int]:
    """Which task moved the orders to RESERVED (from the timeline's task context)."""
    with unit_of_work() as s:
        rows = s.execute(text(
            "SELECT detail->'task'->>'name', count(*) FROM order_events "
            "WHERE kind = 'transition' AND to_status = 'RESERVED' GROUP BY 1"
        )).all()  # fmt: skip
    return {str(name): n for name, n in rows}


def test_sigkill_mid_batch_redelivers_and_reserves_each_order_once(
    pipeline_env, procs, catalog, monkeypatch, figures
):
    from workers.procs import wait_worker_ready
    from workers.publish import enqueue_reservations

    n = size(50, 200)
    port, stack = pipeline_env
    monkeypatch.setenv("CRASH_IN_BATCH_AFTER", "20")
    monkeypatch.setenv("INTAKE_REDRIVE_S", "3600")  # only the redelivery may finish the batch
    catalog({"K1": n, "K2": n})
    rng = random.Random(29)
    ids = [accept_message(order_message([("K1", 1), ("K2", 1)], provider=rng.choice(PROVIDERS)),
                          channel="test").order_id for _ in range(n)]  # fmt: skip
    workers = [
        procs.worker("orders", "orders", concurrency=2, app="tests.reliability.crash_points"),
        procs.worker("payments", "payments", concurrency=8, pool="threads"),
    ]
    for w in workers:
        wait_worker_ready(w)
    procs.api(port)  # the providers' notifications land here
    stack.auto_pay(200)
    fig = figures()
    fig.injected(f"SIGKILL of the orders pool child inside a batch of {min(n, 50)}, after 20 "
                 "savepoints")  # fmt: skip
    assert enqueue_reservations(ids) == n
    wait_until(lambda: status_counts() == {"PAID": n}, 240, 0.5, show=pipeline_state)
    verdict = check(ids, stack)
    assert redis_client().get("crashpoint:batch") is not None  # the crash happened
    assert int(redis_client().get("crashpoint:batch:calls") or 0) >= n + 21  # and a re-run
    assert reservations_per_order() == dict.fromkeys(ids, 2)  # two lines, reserved once
    assert _reserved_by() == {"orders.reserve_batch": n}
    assert verdict["charges"] == n
    fig.recovered(verdict)
