"""Late work never pages anyone: a real backlog on the payments queue, worked off after the
orders' payment deadlines passed.

The orders are reserved by the real orders worker while no payments worker runs. That orders
worker holds no WeChat Pay credentials (a deployment may keep them on the payments workers
only), so instead of creating the payments in-line it publishes their ``payments.create``
tasks, which wait on the broker until every payment deadline is over; the sweeper is slowed
down so that it cannot expire them first. Then a payments worker starts and works the
backlog off. WeChat Pay refuses a ``time_expire`` in the past (``PARAM_ERROR``): sent anyway,
each order would end in NEEDS_ATTENTION and page an operator. None may; each expires, with its
stock released once and no call to the provider.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from sqlalchemy import text

from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.helpers import assert_stock_consistent, stock_of

ORDERS = 30


def _statuses(ids: list[str]) -> dict[str, int]:
    with unit_of_work() as s:
        rows = s.execute(
            text("SELECT status, count(*) FROM orders WHERE id = ANY(:ids) GROUP BY status"),
            {"ids": ids},
        ).all()
    return {status: n for status, n in rows}


def _deadlines_passed(ids: list[str]) -> bool:
    with unit_of_work() as s:
        last = s.execute(
            text("SELECT max(payment_deadline) FROM orders WHERE id = ANY(:ids)"), {"ids": ids}
        ).scalar_one()
    return last is not None and last < datetime.now(UTC)


def test_a_payment_backlog_past_its_deadlines_expires_and_pages_no_one(
    start_pipeline, catalog, monkeypatch
):
    from workers.procs import wait_worker_ready

    monkeypatch.setenv("PAYMENT_WINDOW_S", "3")
    monkeypatch.setenv("SWEEP_INTERVAL_S", "3600")  # the sweeper must not get there first
    catalog({"B": ORDERS * 2})
    wechat = {k: v for k, v in os.environ.items() if k.startswith("WECHATPAY_")}
    assert wechat  # the simulators' settings, exported by pipeline_env
    for key in wechat:  # the API and the orders worker start without them
        monkeypatch.delenv(key)
    p = start_pipeline(payments=False)
    for key, value in wechat.items():  # the payments worker has them
        monkeypatch.setenv(key, value)
    ids = [p.post_order(order_message("B", 1, provider="wechatpay")) for _ in range(ORDERS)]
    wait_until(lambda: _statuses(ids) == {"RESERVED": ORDERS}, timeout_s=60)
    wait_until(lambda: _deadlines_passed(ids), timeout_s=30)
    assert stock_of("B") == (ORDERS * 2, ORDERS)

    wait_worker_ready(p.procs.worker("payments", "payments", concurrency=8, pool="threads"))
    wait_until(lambda: _statuses(ids) == {"EXPIRED": ORDERS}, timeout_s=90,
               show=lambda: _statuses(ids))  # fmt: skip
    with unit_of_work() as s:
        reasons = (
            s.execute(text("SELECT DISTINCT reason FROM orders WHERE id = ANY(:ids)"), {"ids": ids})
            .scalars()
            .all()
        )
        releases = s.execute(
            text("SELECT order_id, count(*) FROM stock_movements WHERE kind = 'release' "
                 "AND order_id = ANY(:ids) GROUP BY order_id"), {"ids": ids},
        ).all()  # fmt: skip
    assert reasons == ["payment_timeout"]
    assert sorted(n for _, n in releases) == [1] * ORDERS  # each order's stock once
    assert p.stack.wechatpay.ledger()["orders"] == {}  # not one create reached the provider
    assert stock_of("B") == (ORDERS * 2, 0)
    assert_stock_consistent()
