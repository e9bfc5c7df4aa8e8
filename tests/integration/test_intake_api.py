"""POST /v1/orders against real PostgreSQL: bad input gets a clear error and stores nothing;
repeats are idempotent; the same key with a different body is a 409. Concurrent requests share
a group commit (one transaction, one publish) and still each get their own answer."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from models import Order, OrderEvent, OrderLine
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until


def stored_rows() -> tuple[int, int, int]:
    with unit_of_work() as s:
        return (
            s.scalar(select(func.count()).select_from(Order)),
            s.scalar(select(func.count()).select_from(OrderLine)),
            s.scalar(select(func.count()).select_from(OrderEvent)),
        )


@pytest.fixture
def client(db):
    from api.app import create_app

    with TestClient(create_app()) as c:
        yield c


def post(client, body, key, **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = key
    return client.post("/v1/orders", content=data, headers=headers, **kw)


def test_accepts_and_stores_before_answering(client, api_key):
    r = post(client, order_message(), api_key)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "RECEIVED" and r.json()["created"] is True
    assert stored_rows() == (1, 1, 1)


def test_repeat_returns_same_order_and_conflict_is_409(client, api_key):
    body = order_message(external_id="ext-1")
    first = post(client, body, api_key)
    again = post(client, body, api_key)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.json()["created"] is False
    changed = order_message(external_id="ext-1", quantity=2)
    conflict = post(client, changed, api_key)
    assert conflict.status_code == 409
    assert conflict.json()["details"][0]["field"] == "external_id"
    assert "different body" in conflict.json()["message"]
    assert stored_rows()[0] == 1


def _without(field):
    data = order_message()
    del data[field]
    return data


def _with_line(quantity):
    data = order_message()
    data["lines"][0]["quantity"] = quantity
    return data


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (_without("lines"), 422, "lines"),
        (_without("shipping_address"), 422, "shipping_address"),
        (_with_line(0), 422, "lines.0.quantity"),
        (_with_line(-3), 422, "lines.0.quantity"),
        (order_message(currency="ZZZ"), 422, "currency"),
        (b"{not json", 400, "body"),
        (b"", 400, "body"),
        ("[1, 2, 3]", 422, "body"),
    ],
    ids=[
        "no-lines",
        "no-address",
        "zero-qty",
        "negative-qty",
        "currency",
        "not-json",
        "empty",
        "array",
    ],
)
def test_invalid_input_names_field_and_stores_nothing(client, api_key, body, status, field):
    r = post(client, body, api_key)
    assert r.status_code == status, r.text
    named = [d for d in r.json()["details"] if d["field"] == field or d["field"].startswith(field)]
    assert named, r.json()["details"]
    assert all(isinstance(d["reason"], str) and d["reason"].strip() for d in named), named
    assert stored_rows() == (0, 0, 0)


def test_ten_megabyte_body_is_refused(client, api_key):
    big = json.dumps({**order_message(), "padding": "x" * (10 * 1024 * 1024)})
    r = post(client, big, api_key)
    assert r.status_code == 413
    assert r.json()["details"][0]["field"] == "body"
    assert stored_rows() == (0, 0, 0)


def test_ten_megabyte_chunked_body_is_refused_over_http(procs, db, api_key):
    """No Content-Length to refuse up front: the API counts the bytes as they stream in (real
    uvicorn, real socket, ``Transfer-Encoding: chunked``)."""
    from workers.procs import free_port

    port = free_port()
    procs.api(port)
    head = json.dumps(order_message())[:-1].encode() + b', "padding": "'

    def body():
        yield from [head] + [b"x" * 65536] * 160 + [b'"}']  # about 10 MB

    try:
        r = requests.post(
            f"http://127.0.0.1:{port}/v1/orders", data=body(), timeout=60,
            headers={"X-API-Key": api_key, "Content-Type": "application/json"},
        )  # fmt: skip
    except requests.ConnectionError:
        pytest.fail("the API closed the connection without answering 413")
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in r.request.headers
    assert r.status_code == 413, r.text
    assert r.json()["details"][0]["field"] == "body"
    assert stored_rows() == (0, 0, 0)


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_wrong_api_key_is_401(client, key):
    r = post(client, order_message(), key)
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"
    assert "X-API-Key" in r.json()["message"]
    [detail] = r.json()["details"]
    assert detail["field"] == "X-API-Key" and detail["reason"].strip()
    assert stored_rows() == (0, 0, 0)


def test_key_bound_to_another_source_is_403(client):
    from settings import get_settings

    shop_key = next(k for k, s in get_settings().api_key_map().items() if s == "shop-a")
    r = post(client, order_message(source="shop-b"), shop_key)
    assert r.status_code == 403 and r.json()["details"][0]["field"] == "source"
    assert post(client, order_message(source="shop-a"), shop_key).status_code == 202
    assert stored_rows()[0] == 1


def test_key_bound_to_a_source_sees_and_acts_on_that_source_only(client, api_key):
    """Another source's order is answered like a missing one (404, nothing changed) on every
    route that takes an order id; the wildcard key and the owner's key still reach it."""
    from settings import get_settings

    shop_key = next(k for k, s in get_settings().api_key_map().items() if s == "shop-a")
    theirs = post(client, order_message(source="shop-b"), api_key).json()["id"]
    ours = post(client, order_message(source="shop-a"), shop_key).json()["id"]
    headers = {"X-API-Key": shop_key}
    waybill = {"carrier": "zhongtong", "waybill": "ZT5550000009"}
    refused = [
        client.get(f"/v1/orders/{theirs}", headers=headers),
        client.post(f"/v1/orders/{theirs}/cancel", json={"reason": "x"}, headers=headers),
        client.post(f"/v1/orders/{theirs}/refunds", json={"amount": 1}, headers=headers),
        client.post(f"/v1/orders/{theirs}/shipments", json=waybill, headers=headers),
        client.post(f"/v1/orders/{theirs}/receipt", headers=headers),
    ]
    for r in refused:
        assert r.status_code == 404, r.text
        assert r.json()["details"] == [{"field": "order_id", "reason": f"order {theirs} not found"}]
    assert client.get(f"/v1/orders/{theirs}", headers={"X-API-Key": api_key}).status_code == 200
    assert client.get(f"/v1/orders/{ours}", headers=headers).status_code == 200
    with unit_of_work() as s:  # nothing happened to the other source's order
        events = s.scalars(select(OrderEvent.kind).where(OrderEvent.order_id == theirs)).all()
    assert events == ["transition"], events


def test_unknown_order_is_404(client, api_key):
    r = client.get(
        "/v1/orders/00000000-0000-0000-0000-000000000000", headers={"X-API-Key": api_key}
    )
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert r.json()["details"] == [
        {"field": "order_id", "reason": "order 00000000-0000-0000-0000-000000000000 not found"}
    ]


def test_rejected_order_shows_reason_and_lines(client, api_key):
    from producers.intake import accept_message
    from services.reservation import reserve_order

    order_id = accept_message(
        order_message([("NOPE", 2), ("ALSO-NOPE", 1)]), channel="test"
    ).order_id
    with unit_of_work() as s:
        reserve_order(s, order_id, now=datetime.now(UTC), payment_window_s=600)
    r = client.get(f"/v1/orders/{order_id}", headers={"X-API-Key": api_key})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["reason"]) == ("REJECTED", "unknown_sku")
    assert [(line["sku"], line["quantity"]) for line in body["lines"]] == [
        ("NOPE", 2), ("ALSO-NOPE", 1),
    ]  # fmt: skip
    assert [e["to"] for e in body["timeline"] if e["kind"] == "transition"] == [
        "RECEIVED", "REJECTED",
    ]  # fmt: skip


def test_same_order_fifty_times_concurrently_makes_one(procs, db, api_key):
    """Real HTTP server, 50 concurrent identical requests -> exactly one order."""
    from workers.procs import free_port

    port = free_port()
    procs.api(port)
    body = order_message(external_id="dup-50")

    def send(_):
        return requests.post(
            f"http://127.0.0.1:{port}/v1/orders", json=body, headers={"X-API-Key": api_key},
            timeout=30,
        )  # fmt: skip

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(send, range(50)))
    assert {r.status_code for r in responses} <= {200, 202}
    assert sum(r.json()["created"] for r in responses) == 1
    assert len({r.json()["id"] for r in responses}) == 1
    assert stored_rows()[:2] == (1, 1)


def test_unknown_user_is_422_and_stores_nothing(client, api_key):
    body = order_message()
    body["user_id"] = 424242
    r = post(client, body, api_key)
    assert r.status_code == 422 and r.json()["details"] == [
        {"field": "user_id", "reason": "no user with id 424242"}
    ]
    assert stored_rows() == (0, 0, 0)


def test_back_pressure_refuses_with_retry_after_and_stores_nothing(
    client, api_key, catalog, monkeypatch
):
    """Three accepted orders wait to be reserved (no worker runs here); with room for three,
    the fourth is refused with 429 and Retry-After and changes nothing. Once the backlog is
    reserved, the same order is accepted."""
    from api.orders import intake_gate
    from services.reservation import reserve_order
    from settings import get_settings

    monkeypatch.setenv("INTAKE_MAX_BACKLOG", "3")
    monkeypatch.setenv("INTAKE_RETRY_AFTER_S", "7")
    get_settings.cache_clear()
    intake_gate.cache_clear()
    catalog({"SKU-1": 10})
    ids = [post(client, order_message(), api_key).json()["id"] for _ in range(3)]
    assert len(set(ids)) == 3
    before = stored_rows()
    intake_gate().refresh_s = 0.0  # read the backlog on every request from here on
    late = order_message()
    r = post(client, late, api_key)
    assert r.status_code == 429, r.text
    assert r.headers["Retry-After"] == "7"
    assert r.json()["error"] == "overloaded" and "3 accepted orders" in r.json()["message"]
    assert stored_rows() == before  # nothing half-written, nothing lost
    with unit_of_work() as s:
        for oid in ids:
            reserve_order(s, oid, now=datetime.now(UTC), payment_window_s=600)
    r = post(client, late, api_key)
    assert r.status_code == 202, r.text
    intake_gate.cache_clear()
    get_settings.cache_clear()


# --- group commit ------------------------------------------------------------------------------


def batch_sizes() -> tuple[float, float]:
    """This process's ``orderflow_intake_batch_size`` (count, sum): intake transactions and
    the orders they stored."""
    from prometheus_client import REGISTRY

    from observability import metrics  # noqa: F401 - registers the series

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(f"orderflow_intake_batch_size_{name}") or 0.0

    return sample("count"), sample("sum")


def in_one_batch(client, key: str, bodies: Sequence[Any], monkeypatch) -> list[Any]:
    """Post ``bodies`` so that one flush stores them all, and return their responses.

    With one flush at a time, a first order's flush is held open while the others arrive one by
    one (each waited for in the queue, so their order is known), then released: the others
    queue behind it and the next flush takes them together. The first order is stored as usual
    (202)."""
    from api.orders import intake_batcher

    batcher = intake_batcher()
    flush, entered, release = batcher.flush, threading.Event(), threading.Event()

    def held_flush(msgs):
        if not entered.is_set():
            entered.set()
            release.wait(60)
        return flush(msgs)

    monkeypatch.setattr(batcher, "flush", held_flush)
    monkeypatch.setattr(batcher, "max_flushes", 1)  # the others queue behind the held one
    with ThreadPoolExecutor(len(bodies) + 1) as pool:
        first = pool.submit(post, client, order_message(), key)
        wait_until(entered.is_set, 30, 0.01)
        pending = []
        for i, body in enumerate(bodies, 1):
            pending.append(pool.submit(post, client, body, key))
            wait_until(lambda i=i: batcher.queued == i, 30, 0.01)
        release.set()
        assert first.result().status_code == 202, first.result().text
        return [f.result() for f in pending]


def test_concurrent_requests_share_one_transaction(client, api_key, monkeypatch):
    """Ten requests arriving while a flush runs are stored by the next one: 11 orders in two
    transactions, each request answered with its own order."""
    count, total = batch_sizes()
    responses = in_one_batch(client, api_key, [order_message() for _ in range(10)], monkeypatch)
    assert [r.status_code for r in responses] == [202] * 10
    assert len({r.json()["id"] for r in responses}) == 10
    assert stored_rows() == (11, 11, 11)
    after = batch_sizes()
    assert (after[0] - count, after[1] - total) == (2, 11)  # batches of 1 and 10


def test_one_bad_order_in_a_batch_fails_alone(client, api_key, monkeypatch):
    """An unknown user (422) and a key reused with another body (409) are refused in their
    own savepoints; the good orders beside them in the same transaction are stored."""
    taken = order_message(external_id="taken")
    assert post(client, taken, api_key).status_code == 202
    unknown_user = {**order_message(), "user_id": 424242}
    changed = order_message(external_id="taken", quantity=5)
    good = [order_message(), order_message()]
    count, _ = batch_sizes()
    r = in_one_batch(client, api_key, [good[0], unknown_user, changed, good[1]], monkeypatch)
    assert [x.status_code for x in r] == [202, 422, 409, 202], [x.text for x in r]
    assert r[1].json()["details"] == [{"field": "user_id", "reason": "no user with id 424242"}]
    assert r[2].json()["details"][0]["field"] == "external_id"
    assert batch_sizes()[0] - count == 2
    with unit_of_work() as s:
        stored = set(s.scalars(select(Order.external_id)).all())
    assert stored >= {"taken", good[0]["external_id"], good[1]["external_id"]}
    assert unknown_user["external_id"] not in stored
    assert stored_rows() == (4, 4, 4)  # taken, the held first order and the two good ones


def test_the_same_key_twice_in_one_batch_behaves_as_in_a_row(client, api_key, monkeypatch):
    """Within one transaction the first of a key is created, a repeat with the same body is a
    200 with the same id, and the same key with another body is a 409."""
    body = order_message(external_id="twice")
    other = order_message(external_id="twice", quantity=3)
    r = in_one_batch(client, api_key, [body, body, other, order_message()], monkeypatch)
    assert [x.status_code for x in r] == [202, 200, 409, 202], [x.text for x in r]
    assert r[0].json()["id"] == r[1].json()["id"] and r[1].json()["created"] is False
    assert stored_rows() == (3, 3, 3)


def test_a_publish_failure_leaves_the_batch_stored(client, api_key, monkeypatch):
    """The broker refuses every publish: the orders are committed before it is tried, so each
    request still gets its 202 and each order waits RECEIVED with a stage deadline, for the
    sweeper to re-drive."""
    import kombu.exceptions

    from workers.publish import app

    def broker_down(*_a, **_kw):
        raise kombu.exceptions.OperationalError("Error 111 connecting to broker")

    monkeypatch.setattr(app, "send_task", broker_down)
    r = in_one_batch(client, api_key, [order_message() for _ in range(3)], monkeypatch)
    assert [x.status_code for x in r] == [202] * 3
    with unit_of_work() as s:
        rows = s.execute(select(Order.status, Order.stage_deadline)).all()
    assert len(rows) == 4
    assert all(status == "RECEIVED" and deadline is not None for status, deadline in rows)


def test_a_batch_whose_transaction_fails_answers_503_to_each_request(client, api_key, monkeypatch):
    """The database goes away under the flush: every request of that batch gets the 503 the
    one-request path gives (with Retry-After), nothing is stored, and the next batch works."""
    from sqlalchemy.exc import OperationalError

    import api.orders

    accept_many = api.orders.accept_many
    calls = []

    def lost_connection(msgs, **kw):
        calls.append(len(msgs))
        if len(calls) == 2:  # the batch behind the held first order
            raise OperationalError("INSERT", {}, ConnectionError("server closed the connection"))
        return accept_many(msgs, **kw)

    monkeypatch.setattr(api.orders, "accept_many", lost_connection)
    r = in_one_batch(client, api_key, [order_message() for _ in range(3)], monkeypatch)
    assert [x.status_code for x in r] == [503] * 3
    assert all(x.headers["Retry-After"] == "1" and x.json()["error"] == "unavailable" for x in r)
    assert stored_rows() == (1, 1, 1)  # only the first order, from the batch before
    assert post(client, order_message(), api_key).status_code == 202
