"""Catalog administration against real PostgreSQL through the admin API: the admin key, products
and prices, deactivate/delete (including a delete racing an uncommitted order line), the
not-found answers and the stock routes."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from api.catalog import admin_api_key_setting
from api.catalog import router as catalog_router
from api.errors import domain_error_response
from domain.errors import NotFound
from models import Product, ProductPrice, StockMovement
from models.db import session_factory
from producers.intake import accept_message, to_new_order
from producers.schema import parse_message
from services import catalog_admin
from services.intake import accept_order
from services.queries import stock_drift
from services.reservation import reserve_order
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.integration.catalog_admin_support import count, product, waiting_on_a_lock

ADMIN_KEY = "admin-test-key-0123456789"
H = {"X-Admin-Key": ADMIN_KEY}


def make_app(key: str | None = ADMIN_KEY):
    from api.app import create_app

    app = create_app()
    if not any(getattr(r, "path", None) == "/v1/admin/products" for r in app.routes):
        app.include_router(catalog_router)
    # ADMIN_API_KEY is read from settings in production; the test supplies it directly.
    app.dependency_overrides[admin_api_key_setting] = lambda: SecretStr(key) if key else None
    return app


@pytest.fixture
def client(db):
    with TestClient(make_app()) as c:
        yield c


def add(client, sku="P-1", price=1250, currency="CNY", **extra):
    body = {"sku": sku, "name": f"Product {sku}", "price_amount": price, "currency": currency}
    return client.post("/v1/admin/products", json={**body, **extra}, headers=H)


# --- admin key ---------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-Admin-Key": "wrong"}, {"X-API-Key": ADMIN_KEY}])
def test_admin_routes_need_the_admin_key(client, headers):
    r = client.post(
        "/v1/admin/products",
        json={"sku": "X", "name": "x", "price_amount": 1, "currency": "CNY"},
        headers=headers,
    )
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized" and "X-Admin-Key" in r.json()["message"]
    assert client.get("/v1/admin/products/X/prices", headers=headers).status_code == 401
    assert count(Product) == 0


def test_no_configured_key_refuses_everything(db):
    with TestClient(make_app(key=None)) as c:
        assert c.get("/v1/admin/products", headers=H).status_code == 401


def test_key_is_read_from_settings(db, monkeypatch):
    from settings import Settings, get_settings

    if "admin_api_key" not in Settings.model_fields:
        pytest.skip("settings.py has no admin_api_key field yet")
    monkeypatch.setenv("ADMIN_API_KEY", "from-settings-key")
    get_settings.cache_clear()
    try:
        app = make_app()
        app.dependency_overrides.clear()
        with TestClient(app) as c:
            ok = c.get("/v1/admin/products", headers={"X-Admin-Key": "from-settings-key"})
            assert ok.status_code == 200
            assert c.get("/v1/admin/products", headers=H).status_code == 401
    finally:
        monkeypatch.delenv("ADMIN_API_KEY")
        get_settings.cache_clear()


# --- products and prices -----------------------------------------------------------------------


def test_create_update_and_price_history(client):
    r = add(client)
    assert r.status_code == 201, r.text
    assert r.json() | {"created_at": None, "updated_at": None} == {
        "sku": "P-1", "name": "Product P-1", "price_amount": 1250, "currency": "CNY",
        "active": True, "returnable": True, "return_window_s": None, "created_at": None,
        "updated_at": None,
    }  # fmt: skip
    dup = add(client)
    assert dup.status_code == 409 and dup.json()["details"][0]["field"] == "sku"

    repriced = client.patch("/v1/admin/products/P-1", json={"price_amount": 1500}, headers=H)
    assert repriced.json()["price_amount"] == 1500
    renamed = client.patch("/v1/admin/products/P-1", json={"name": " Widget "}, headers=H)
    assert renamed.json()["name"] == "Widget"
    same = client.patch("/v1/admin/products/P-1", json={"price_amount": 1500}, headers=H)
    assert same.status_code == 200  # no change of price: no history row
    client.patch("/v1/admin/products/P-1", json={"price_amount": 200, "currency": "USD"}, headers=H)

    history = client.get("/v1/admin/products/P-1/prices", headers=H).json()["prices"]
    assert [(p["price_amount"], p["currency"]) for p in history] == [
        (1250, "CNY"), (1500, "CNY"), (200, "USD"),
    ]  # fmt: skip
    assert {p["actor"] for p in history} == {"admin-api"}
    stamps = [datetime.fromisoformat(p["valid_from"]) for p in history]
    assert stamps == sorted(stamps) and stamps[-1] <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"price_amount": 12.5}, "price_amount"),
        ({"price_amount": "1250"}, "price_amount"),
        ({"price_amount": -1}, "price_amount"),
        ({"price_amount": 10**13}, "price_amount"),
        ({"currency": "ZZZ"}, "currency"),
        ({"sku": "has space"}, "sku"),
        ({"sku": ""}, "sku"),
        ({"name": "   "}, "name"),
        ({"colour": "red"}, "colour"),
    ],
    ids=["float", "string", "negative", "huge", "currency", "sku-space", "sku-empty", "name",
         "extra"],
)  # fmt: skip
def test_bad_product_input_names_the_field(client, body, field):
    base = {"sku": "P-1", "name": "Widget", "price_amount": 1250, "currency": "CNY"}
    r = client.post("/v1/admin/products", json={**base, **body}, headers=H)
    assert r.status_code == 422, r.text
    assert r.json()["details"][0]["field"] == field
    assert count(Product) == 0 and count(ProductPrice) == 0


def test_patch_errors(client):
    add(client)
    missing = client.patch("/v1/admin/products/NOPE", json={"name": "x"}, headers=H)
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "not_found", "message": "product NOPE not found",
        "details": [{"field": "sku", "reason": "product NOPE not found"}],
    }  # fmt: skip
    empty = client.patch("/v1/admin/products/P-1", json={}, headers=H)
    assert empty.status_code == 422 and empty.json()["details"][0]["field"] == "body"
    bad = client.patch("/v1/admin/products/P-1", json={"currency": "XXX"}, headers=H)
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "currency"
    assert product("P-1").currency == "CNY"


def test_after_sale_terms_are_set_per_product_and_checked(client):
    add(client)
    r = client.patch("/v1/admin/products/P-1", headers=H,
                     json={"returnable": False, "return_window_s": 86_400})  # fmt: skip
    assert r.status_code == 200, r.text
    assert (r.json()["returnable"], r.json()["return_window_s"]) == (False, 86_400)
    for bad in ({"return_window_s": -1}, {"return_window_s": 400 * 86_400},
                {"returnable": "no"}, {"return_window_s": 1.5}):  # fmt: skip
        refused = client.patch("/v1/admin/products/P-1", json=bad, headers=H)
        assert refused.status_code == 422, bad
        assert refused.json()["details"][0]["field"] == next(iter(bad)), refused.json()
    assert (product("P-1").returnable, product("P-1").return_window_s) == (False, 86_400)


def test_deactivated_product_is_not_sold(client):
    add(client, "P-1")
    client.post("/v1/admin/stock/receive", json={"sku": "P-1", "quantity": 5}, headers=H)
    r = client.post("/v1/admin/products/P-1/deactivate", headers=H)
    assert r.status_code == 200 and r.json()["active"] is False
    oid = accept_message(order_message("P-1"), channel="test").order_id
    with unit_of_work() as s:
        out = reserve_order(s, oid, now=datetime.now(UTC), payment_window_s=60)
    assert (out.status, out.reason) == ("REJECTED", "inactive_product")


def test_delete_deactivates_what_orders_or_the_ledger_refer_to(client):
    for sku in ("ORDERED", "STOCKED", "FRESH"):
        add(client, sku)
    accept_message(order_message("ORDERED"), channel="test")
    client.post("/v1/admin/stock/receive", json={"sku": "STOCKED", "quantity": 1}, headers=H)

    for sku in ("ORDERED", "STOCKED"):
        r = client.delete(f"/v1/admin/products/{sku}", headers=H)
        assert r.json() == {"sku": sku, "outcome": "deactivated"}
        assert product(sku).active is False
    r = client.delete("/v1/admin/products/FRESH", headers=H)
    assert r.json() == {"sku": "FRESH", "outcome": "deleted"}
    assert product("FRESH") is None
    for gone in (client.get("/v1/admin/products/FRESH/prices", headers=H),
                 client.delete("/v1/admin/products/FRESH", headers=H)):  # fmt: skip
        assert gone.status_code == 404 and gone.json()["details"][0]["field"] == "sku"
    with unit_of_work() as s:  # the deleted product's history went with it
        assert set(s.scalars(select(ProductPrice.sku))) == {"ORDERED", "STOCKED"}


def test_delete_waits_for_an_uncommitted_order_line_and_deactivates(client):
    """Intake inserts order lines without locking the product: a line inserted but not yet
    committed must still stop the delete (it deactivates once the line commits)."""
    add(client, "RACE")
    outcome: dict[str, object] = {}

    def delete() -> None:
        try:
            with unit_of_work() as s:
                outcome["result"] = catalog_admin.delete_product(s, "RACE", actor="test")
        except Exception as exc:
            outcome["result"] = exc

    intake = session_factory()()  # a second real connection, its transaction left open
    with intake.begin():
        accept_order(intake, to_new_order(parse_message(order_message("RACE"))),
                     now=datetime.now(UTC), redrive_after_s=30, channel="test")  # fmt: skip
        deleter = threading.Thread(target=delete)
        deleter.start()
        wait_until(lambda: bool(waiting_on_a_lock("LOCK TABLE order_lines"))
                   or not deleter.is_alive(), timeout_s=30)  # fmt: skip
        assert "result" not in outcome, outcome  # it waited for the uncommitted order line
    intake.close()  # committed
    deleter.join(timeout=60)
    assert outcome["result"] == "deactivated"
    assert product("RACE").active is False


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("PATCH", "/v1/admin/products/P-9", "sku"),
        ("GET", "/v1/admin/products/P-9/prices", "sku"),
        ("POST", "/v1/admin/products/P-9/deactivate", "sku"),
        ("DELETE", "/v1/admin/products/P-9", "sku"),
    ],
)
def test_every_404_names_the_field_its_raiser_named(client, method, path, field):
    r = client.request(method, path, json={"name": "x"} if method == "PATCH" else None, headers=H)
    assert r.status_code == 404, r.text
    body = r.json()
    assert body["error"] == "not_found"
    assert body["details"][0]["field"] == field and "P-9" in body["details"][0]["reason"]


def test_a_404_whose_raiser_named_no_field_says_id():
    body = json.loads(domain_error_response(NotFound("something else")).body)
    assert body["details"] == [{"field": "id", "reason": "something else"}]


# --- stock routes ------------------------------------------------------------------------------


def test_stock_routes_go_through_the_ledger(client):
    add(client, "S-1")
    body = {"sku": "S-1", "warehouse": "main", "quantity": 10}
    r = client.post("/v1/admin/stock/receive", json=body, headers=H)
    assert r.json() == {"sku": "S-1", "warehouse": "main", "on_hand": 10, "reserved": 0,
                        "available": 10}  # fmt: skip
    adj = client.post("/v1/admin/stock/adjust",
                      json={"sku": "S-1", "delta": -2, "reason": "broken"}, headers=H)  # fmt: skip
    assert adj.json()["on_hand"] == 8
    mv = client.post("/v1/admin/stock/move", headers=H, json={
        "sku": "S-1", "from_warehouse": "main", "to_warehouse": "east", "quantity": 3})  # fmt: skip
    assert (mv.json()["from"]["on_hand"], mv.json()["to"]["on_hand"]) == (5, 3)
    with unit_of_work() as s:
        kinds = list(s.scalars(select(StockMovement.kind).order_by(StockMovement.id)))
        assert kinds == ["receive", "adjust", "move", "move"]
        assert stock_drift(s) == []
    assert client.get("/v1/admin/stock/drift", headers=H).json() == {"proposals": []}
    report = client.get("/v1/admin/stock", headers=H)
    assert report.status_code == 200, report.text
    assert report.json() == {"stock": [
        {"sku": "S-1", "warehouse": "east", "on_hand": 3, "reserved": 0, "available": 3},
        {"sku": "S-1", "warehouse": "main", "on_hand": 5, "reserved": 0, "available": 5},
    ], "proposals": []}  # fmt: skip
    one = client.get("/v1/admin/stock", params={"sku": "S-1"}, headers=H).json()["stock"]
    assert len(one) == 2
    unknown = client.get("/v1/admin/stock", params={"sku": "NOPE"}, headers=H)
    assert unknown.status_code == 404 and unknown.json()["details"][0]["field"] == "sku"
    assert client.get("/v1/admin/stock").status_code == 401  # admin key required


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("adjust", {"sku": "S-1", "delta": -1}, 422, "reason"),
        ("adjust", {"sku": "S-1", "delta": -1, "reason": "  "}, 422, "reason"),
        ("adjust", {"sku": "S-1", "delta": 0, "reason": "x"}, 422, "delta"),
        ("adjust", {"sku": "S-1", "delta": -6, "reason": "x"}, 422, "delta"),
        ("adjust", {"sku": "S-1", "delta": 1.5, "reason": "x"}, 422, "delta"),
        ("receive", {"sku": "S-1", "quantity": 0}, 422, "quantity"),
        ("receive", {"sku": "NOPE", "quantity": 1}, 404, "sku"),
        ("adjust", {"sku": "S-1", "warehouse": "west", "delta": 1, "reason": "x"}, 404,
         "warehouse"),
        ("move", {"sku": "S-1", "from_warehouse": "main", "to_warehouse": "main",
                  "quantity": 1}, 422, "to_warehouse"),
        ("move", {"sku": "S-1", "from_warehouse": "main", "to_warehouse": "east",
                  "quantity": 6}, 422, "quantity"),
        ("move", {"sku": "S-1", "from_warehouse": "west", "to_warehouse": "east",
                  "quantity": 1}, 404, "from_warehouse"),
    ],
)  # fmt: skip
def test_stock_route_errors(client, path, body, status, field):
    add(client, "S-1")
    client.post("/v1/admin/stock/receive", json={"sku": "S-1", "quantity": 5}, headers=H)
    r = client.post(f"/v1/admin/stock/{path}", json=body, headers=H)
    assert r.status_code == status, r.text
    if field:
        assert r.json()["details"][0]["field"] == field
    with unit_of_work() as s:
        assert count(StockMovement) == 1  # only the receipt: a refused change wrote nothing
        assert stock_drift(s) == []
