"""A crash between a return refund's commit and the provider call.

The API process that approves a refund-only return (by policy, in the request) dies right
after the commit that stored the refund with its number, before ``payments.refund`` reaches the
broker: no message exists anywhere. The client sees its connection drop and asks again with the
same ``return_no``, which answers the stored return and publishes nothing. Only the payment poll
job, re-driving REQUESTED refunds from PostgreSQL, can carry the refund on: the provider must
refund the line's share exactly once.
"""

from __future__ import annotations

import time

import pytest
import requests
from sqlalchemy import select

from models import Refund
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, redis_client, wait_until
from tests.reliability.invariants import check
from tests.reliability.test_commit_publish_gap import _post_until_acknowledged, _start

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]


def _refunds(order_id: str) -> list[tuple[str, int, str]]:
    with unit_of_work() as s:
        rows = s.execute(select(Refund.refund_no, Refund.amount, Refund.status)
                         .where(Refund.order_id == order_id)).all()  # fmt: skip
        return [(no, amount, status) for no, amount, status in rows]


def _ask_until_answered(base: str, api_key: str, order_id: str, body: dict) -> tuple[int, dict]:
    """Resend the same request (same ``return_no``) until the API answers it."""
    crashed = 0
    for _ in range(100):
        try:
            r = requests.post(f"{base}/v1/orders/{order_id}/returns", json=body,
                              headers={"X-API-Key": api_key}, timeout=10)  # fmt: skip
        except (requests.ConnectionError, requests.Timeout):
            crashed += 1
            time.sleep(0.2)
            continue
        if r.status_code >= 500:
            time.sleep(0.2)
            continue
        assert r.status_code in (200, 201), r.text
        return crashed, dict(r.json())
    raise AssertionError("the API never answered")


def test_crash_between_a_return_refund_commit_and_its_publish(
    pipeline_env, procs, catalog, api_key, monkeypatch
):
    port, stack = pipeline_env
    monkeypatch.setenv("CRASH_BEFORE_PUBLISH", "payments.refund")
    monkeypatch.setenv("CRASH_LIMIT", "1")
    monkeypatch.setenv("RETURN_AUTO_APPROVE_MAX", "100000")
    catalog({"C": 10}, price=500)
    _start(procs, port, stack)  # the crash app's API; no shipping worker: the order stays PAID
    base = f"http://127.0.0.1:{port}"
    oid = _post_until_acknowledged(base, api_key, order_message("C", 3, provider="alipay"))
    wait_until(lambda: _order_status(base, api_key, oid) == "PAID", 60)
    body = {"kind": "REFUND_ONLY", "lines": [{"sku": "C", "quantity": 1}],
            "reason": "changed mind", "return_no": "crash-1"}  # fmt: skip
    crashed, ret = _ask_until_answered(base, api_key, oid, body)
    assert crashed >= 1 and int(redis_client().get("crashpoint:payments.refund:count") or 0) == 1
    assert (ret["status"], ret["refund_amount"]) == ("REFUNDED", 500)
    refund_no = f"return-{ret['id']}"
    trade = ("alipay", oid.replace("-", ""))
    # The poll job re-drives the REQUESTED refund REFUND_REDRIVE_S (30 s) after it was stored.
    wait_until(lambda: stack.refunds().get(trade) == 500, 120, 0.5, show=lambda: _refunds(oid))
    wait_until(lambda: _refunds(oid) == [(refund_no, 500, "SUCCEEDED")], 60,
               show=lambda: _refunds(oid))  # fmt: skip
    assert stack.refunds() == {trade: 500}  # once, whatever the crash and the retries
    check([oid], stack)


def _order_status(base: str, api_key: str, order_id: str) -> str:
    r = requests.get(f"{base}/v1/orders/{order_id}", headers={"X-API-Key": api_key}, timeout=10)
    return str(r.json().get("status")) if r.status_code == 200 else ""
