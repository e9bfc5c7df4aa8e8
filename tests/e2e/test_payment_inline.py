"""Where a reserved order's payment is created: by the reserving task itself (the default,
covered by tests/e2e/test_payments.py), or, with ``PAYMENT_CREATE_INLINE=false``, by the
payments workers only: the orders worker then publishes ``payments.create`` and calls no
provider."""

from __future__ import annotations

import pytest

from tests.broker import broker_url
from tests.conftest import order_message, wait_until
from tests.helpers import status_counts, workers_idle
from workers.broker import queue_depths

pytestmark = [pytest.mark.e2e, pytest.mark.broker]


def test_with_inline_creation_off_the_payments_workers_create(start_pipeline, catalog, monkeypatch):
    monkeypatch.setenv("PAYMENT_CREATE_INLINE", "false")
    catalog({"P": 10})
    p = start_pipeline(payments=False)
    ids = [p.post_order(order_message("P", 1, provider="alipay")) for _ in range(3)]
    wait_until(lambda: status_counts() == {"RESERVED": 3})
    orders_worker = [proc for proc in p.procs.procs if proc.name == "orders"]
    wait_until(lambda: workers_idle(orders_worker, ["orders"]))
    assert queue_depths(broker_url(), ["payments"]) == {"payments": 3}  # waiting for them
    assert p.stack.alipay.ledger()["trades"] == {}  # the orders worker called no provider

    from workers.procs import wait_worker_ready

    wait_worker_ready(p.procs.worker("payments", "payments", concurrency=4, pool="threads"))
    wait_until(lambda: status_counts() == {"AWAITING_PAYMENT": 3}, show=status_counts)
    assert set(p.stack.alipay.ledger()["trades"]) == {p.get_order(i)["payment"]["out_trade_no"]
                                                      for i in ids}  # fmt: skip
