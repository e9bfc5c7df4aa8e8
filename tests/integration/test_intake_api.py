"""POST /v1/orders against real PostgreSQL: bad input gets a clear error and stores nothing;
repeats are idempotent; the same key with a different body is a 409."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from models import Order, OrderEvent, OrderLine
from services.unit_of_work import unit_of_work
from tests.conftest import order_message


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
    fields = [d["field"] for d in r.json()["details"]]
    assert any(f == field or f.startswith(field) for f in fields), fields
    assert stored_rows() == (0, 0, 0)


def test_ten_megabyte_body_is_refused(client, api_key):
    big = json.dumps({**order_message(), "padding": "x" * (10 * 1024 * 1024)})
    r = post(client, big, api_key)
    assert r.status_code == 413
    assert r.json()["details"][0]["field"] == "body"
    assert stored_rows() == (0, 0, 0)


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_wrong_api_key_is_401(client, key):
    r = post(client, order_message(), key)
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"
    assert stored_rows() == (0, 0, 0)


def test_key_bound_to_another_source_is_403(client):
    from settings import get_settings

    shop_key = next(k for k, s in get_settings().api_key_map().items() if s == "shop-a")
    r = post(client, order_message(source="shop-b"), shop_key)
    assert r.status_code == 403 and r.json()["details"][0]["field"] == "source"
    assert post(client, order_message(source="shop-a"), shop_key).status_code == 202
    assert stored_rows()[0] == 1


def test_unknown_order_is_404(client, api_key):
    r = client.get(
        "/v1/orders/00000000-0000-0000-0000-000000000000", headers={"X-API-Key": api_key}
    )
    assert r.status_code == 404 and r.json()["error"] == "not_found"


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
