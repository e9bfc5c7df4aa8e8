"""Smoke: API -> Redis -> real worker -> PostgreSQL."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import order_message, wait_until
from tests.helpers import status_counts, stock_of

pytestmark = [pytest.mark.e2e, pytest.mark.broker]


def test_order_reaches_reserved(procs, catalog, api_key):
    from workers.procs import free_port, wait_worker_ready

    catalog({"SKU-1": 5})
    port = free_port()
    procs.api(port)
    wait_worker_ready(procs.worker("w1", "orders,maintenance"))
    r = requests.post(
        f"http://127.0.0.1:{port}/v1/orders",
        json=order_message("SKU-1", 2),
        headers={"X-API-Key": api_key},
        timeout=10,
    )
    assert r.status_code == 202, r.text
    wait_until(lambda: status_counts().get("RESERVED") == 1, 30)
    assert stock_of("SKU-1") == (5, 2)
    body = requests.get(
        f"http://127.0.0.1:{port}/v1/orders/{r.json()['id']}",
        headers={"X-API-Key": api_key},
        timeout=10,
    ).json()
    assert body["status"] == "RESERVED"
    assert body["total_amount"] == 2000
    assert [e["to"] for e in body["timeline"]] == ["RECEIVED", "RESERVED"]
