"""producers.http.intake_session against a real API process: a refused order (429 with
Retry-After) is sent again after the time the server names, and accepted once the backlog that
caused the refusal is gone. Nothing is stored while it is refused."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from models import Order
from producers.http import intake_session
from services.reservation import reserve_order
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.helpers import status_counts


def _refused(base: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "orderflow_intake_refused_total":
                return sample.value
    return 0.0


def _received_ids() -> set[str]:
    with unit_of_work() as s:
        return set(s.scalars(select(Order.id).where(Order.status == "RECEIVED")))


def test_a_refused_order_is_sent_again_after_retry_after(procs, catalog, api_key, monkeypatch):
    from workers.procs import free_port

    monkeypatch.setenv("INTAKE_MAX_BACKLOG", "1")  # one unreserved order fills intake
    monkeypatch.setenv("INTAKE_RETRY_AFTER_S", "1")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)  # the API's own counters
    catalog({"SKU-1": 10})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs.api(port)
    plain = requests.Session()
    plain.headers["X-API-Key"] = api_key
    first = plain.post(f"{base}/v1/orders", json=order_message(), timeout=10)
    assert first.status_code == 202, first.text  # no worker runs: it waits in RECEIVED
    # The API reads its backlog at most once a second: probes may be accepted until it has.
    wait_until(
        lambda: plain.post(f"{base}/v1/orders", json=order_message(), timeout=10).status_code == 429
    )
    waiting = _received_ids()
    refused_before = _refused(base)

    late = order_message()
    answers: list[requests.Response] = []
    sender = threading.Thread(
        target=lambda: answers.append(
            intake_session(api_key).post(f"{base}/v1/orders", json=late, timeout=10)
        )
    )
    sender.start()
    wait_until(lambda: _refused(base) >= refused_before + 2)  # refused, and waited, twice
    assert _received_ids() == waiting  # nothing of the late order stored meanwhile
    with unit_of_work() as s:  # the backlog goes
        for order_id in waiting:
            reserve_order(s, order_id, now=datetime.now(UTC), payment_window_s=600)
    sender.join(timeout=60)

    assert answers and answers[0].status_code == 202, answers
    statuses = [h.status for h in answers[0].raw.retries.history]
    assert statuses and set(statuses) == {429}, statuses
    assert status_counts() == {"RESERVED": len(waiting), "RECEIVED": 1}
    assert _received_ids() == {answers[0].json()["id"]}
