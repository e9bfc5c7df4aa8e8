"""Catalog administration against real PostgreSQL: the admin API (key, products, prices,
deactivate/delete, stock routes) and CSV/JSONL import and export through the CLI.

Import contract under test: by default a file with any bad row writes nothing and reports every
bad row by line number (exit 1); ``--partial`` writes the good rows and still reports the bad
ones (exit 1); a clean file imports (exit 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select

from api.catalog import admin_api_key_setting
from api.catalog import router as catalog_router
from models import Product, ProductPrice, StockMovement
from producers.intake import accept_message
from services import catalog_admin
from services.queries import stock_drift
from services.reservation import reserve_order
from services.unit_of_work import unit_of_work
from tests.conftest import order_message

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


def product(sku: str) -> Product | None:
    with unit_of_work() as s:
        return s.scalars(select(Product).where(Product.sku == sku)).one_or_none()


def count(model) -> int:
    with unit_of_work() as s:
        return s.scalar(select(func.count()).select_from(model))


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
        "active": True, "created_at": None, "updated_at": None,
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
    assert client.patch("/v1/admin/products/NOPE", json={"name": "x"}, headers=H).status_code == 404
    empty = client.patch("/v1/admin/products/P-1", json={}, headers=H)
    assert empty.status_code == 422 and empty.json()["details"][0]["field"] == "body"
    bad = client.patch("/v1/admin/products/P-1", json={"currency": "XXX"}, headers=H)
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "currency"
    assert product("P-1").currency == "CNY"


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
    assert client.get("/v1/admin/products/FRESH/prices", headers=H).status_code == 404
    assert client.delete("/v1/admin/products/FRESH", headers=H).status_code == 404
    with unit_of_work() as s:  # the deleted product's history went with it
        assert set(s.scalars(select(ProductPrice.sku))) == {"ORDERED", "STOCKED"}


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


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("adjust", {"sku": "S-1", "delta": -1}, 422, "reason"),
        ("adjust", {"sku": "S-1", "delta": -1, "reason": "  "}, 422, "reason"),
        ("adjust", {"sku": "S-1", "delta": 0, "reason": "x"}, 422, "delta"),
        ("adjust", {"sku": "S-1", "delta": -6, "reason": "x"}, 422, "delta"),
        ("adjust", {"sku": "S-1", "delta": 1.5, "reason": "x"}, 422, "delta"),
        ("receive", {"sku": "S-1", "quantity": 0}, 422, "quantity"),
        ("receive", {"sku": "NOPE", "quantity": 1}, 404, None),
        ("move", {"sku": "S-1", "from_warehouse": "main", "to_warehouse": "main",
                  "quantity": 1}, 422, "to_warehouse"),
        ("move", {"sku": "S-1", "from_warehouse": "main", "to_warehouse": "east",
                  "quantity": 6}, 422, "quantity"),
        ("move", {"sku": "S-1", "from_warehouse": "west", "to_warehouse": "east",
                  "quantity": 1}, 404, None),
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


# --- import and export (CLI) -------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.catalog", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


BAD_CSV = """sku,name,price_amount,currency,active
A-1,Apple,1250,CNY,true
A-2,Pear,12.50,CNY,true
A-3,Plum,300,CNY,
A-4,,100,CNY,true
A-5,Fig,100,XXX,yes
A-1,Apple again,1,CNY,true
EXISTING,Renamed,999,CNY,false
"""


def seed_existing() -> None:
    with unit_of_work() as s:
        catalog_admin.create_product(
            s, "EXISTING", "Old name", catalog_admin.check_price(500, "CNY"), actor="test"
        )


def test_csv_with_bad_rows_imports_nothing_and_reports_every_line(db, tmp_path):
    seed_existing()
    path = tmp_path / "products.csv"
    path.write_text(BAD_CSV)
    run = cli("catalog", "import", str(path))
    assert run.returncode == 1, run.stderr
    assert "line 3: price_amount: must be an integer number of minor units" in run.stdout
    assert "line 5: name: is required" in run.stdout
    assert "line 6: currency: unknown currency" in run.stdout
    assert "line 7: sku: A-1 already appears on line 2" in run.stdout
    assert "nothing imported: 4 bad row(s)" in run.stdout
    assert "Traceback" not in run.stderr
    assert count(Product) == 1  # a failed import leaves nothing behind ...
    existing = product("EXISTING")
    assert (existing.name, existing.price_amount, existing.active) == ("Old name", 500, True)
    assert count(ProductPrice) == 1  # ... not even a price history row


def test_csv_partial_imports_the_good_rows(db, tmp_path):
    seed_existing()
    path = tmp_path / "products.csv"
    path.write_text(BAD_CSV)
    run = cli("catalog", "import", str(path), "--partial")
    assert run.returncode == 1  # something was rejected: a person should look
    assert "line 3: price_amount" in run.stdout and "line 7: sku" in run.stdout
    assert "imported 3 row(s): created 2, updated 1, unchanged 0; rejected 4" in run.stdout
    with unit_of_work() as s:
        skus = sorted(s.scalars(select(Product.sku)))
    assert skus == ["A-1", "A-3", "EXISTING"]
    assert product("A-1").name == "Apple" and product("A-3").active is True
    existing = product("EXISTING")
    assert (existing.name, existing.price_amount, existing.active) == ("Renamed", 999, False)
    with unit_of_work() as s:
        assert [p.price_amount for p in s.scalars(
            select(ProductPrice).where(ProductPrice.sku == "EXISTING").order_by(ProductPrice.id)
        )] == [500, 999]  # fmt: skip


def test_clean_csv_imports_and_export_round_trips(db, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(
        "\ufeffsku,name,price_amount,currency\n"
        'B-1,"Bowl, large",1999,CNY\n'
        'B-2,"Two\nlines",5,JPY\n'
        "\n"
        "B-3,Cup,0,USD\n"
    )
    run = cli("catalog", "import", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "created 3" in run.stdout
    assert product("B-2").name == "Two\nlines" and product("B-2").currency == "JPY"

    for suffix in ("csv", "jsonl"):
        out = tmp_path / f"out.{suffix}"
        exported = cli("catalog", "export", str(out))
        assert exported.returncode == 0 and "exported 3 product(s)" in exported.stdout
        again = cli("catalog", "import", str(out))
        assert again.returncode == 0, again.stdout
        assert "created 0, updated 0, unchanged 3" in again.stdout
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows[0] == {"sku": "B-1", "name": "Bowl, large", "price_amount": 1999,
                       "currency": "CNY", "active": True}  # fmt: skip
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_jsonl_errors_by_line(db, tmp_path):
    path = tmp_path / "products.jsonl"
    lines = [
        {"sku": "J-1", "name": "One", "price_amount": 100, "currency": "CNY"},
        "{broken",
        {"sku": "J-2", "name": "Two", "price_amount": 1.5, "currency": "CNY"},
        {"sku": "J-3", "name": "Three", "price_amount": 100, "currency": "CNY", "active": "no"},
        {"sku": "J-4", "name": "Four", "price_amount": 100, "currency": "CNY", "extra": 1},
        [1, 2],
    ]
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    run = cli("catalog", "import", str(path))
    assert run.returncode == 1
    expected = [
        "line 2: row: not valid JSON",
        "line 3: price_amount",
        "line 4: active",
        "line 5: extra: unknown field",
        "line 6: row: must be a JSON object",
    ]
    for line in expected:
        assert line in run.stdout, run.stdout
    assert count(Product) == 0
    partial = cli("catalog", "import", str(path), "--partial")
    assert "created 1" in partial.stdout and product("J-1") is not None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("sku,name,prce_amount,currency\nA,a,1,CNY\n", "line 1: prce_amount: unknown column"),
        ("sku,name,currency\nA,a,CNY\n", "line 1: price_amount: column is missing"),
        ("", "line 1: file: is empty"),
        ("sku,name,price_amount,currency\nA,a,1\n", "line 2: row: has 3 fields, the header 4"),
    ],
    ids=["typo", "missing", "empty", "short-row"],
)
def test_csv_structure_errors(db, tmp_path, content, expected):
    path = tmp_path / "p.csv"
    path.write_text(content)
    run = cli("catalog", "import", str(path))
    assert run.returncode == 1 and expected in run.stdout, run.stdout
    assert count(Product) == 0


def test_import_refuses_unknown_suffix_and_missing_file(db, tmp_path):
    other = tmp_path / "p.xlsx"
    other.write_text("x")
    run = cli("catalog", "import", str(other))
    assert run.returncode == 1 and "file: p.xlsx: expected a .csv or .jsonl file" in run.stderr
    missing = cli("catalog", "import", str(tmp_path / "none.csv"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_products_cli(db):
    assert cli("catalog", "products", "add", "C-1", "--name", "Cup", "--price", "250",
               "--currency", "CNY").returncode == 0  # fmt: skip
    dup = cli("catalog", "products", "add", "C-1", "--name", "Cup", "--price", "250",
              "--currency", "CNY")  # fmt: skip
    assert dup.returncode == 1 and "sku: product C-1 already exists" in dup.stderr
    bad = cli("catalog", "products", "add", "C-2", "--name", "Cup", "--price", "250",
              "--currency", "EURO")  # fmt: skip
    assert bad.returncode == 1 and "currency: unknown currency" in bad.stderr
    upd = cli("catalog", "products", "update", "C-1", "--price", "300", "--inactive")
    assert upd.returncode == 0 and "3.00 CNY, inactive" in upd.stdout
    prices = cli("catalog", "products", "prices", "C-1")
    assert "2.50 CNY" in prices.stdout and "3.00 CNY" in prices.stdout
    listed = cli("catalog", "products", "list")
    assert "C-1" in listed.stdout and "no" in listed.stdout
    assert "deleted C-1" in cli("catalog", "products", "delete", "C-1").stdout
    missing = cli("catalog", "products", "deactivate", "C-1")
    assert missing.returncode == 1 and "product C-1" in missing.stderr


def test_users_cli_creates_an_admin(db):
    run = subprocess.run(
        [sys.executable, "-m", "cli.catalog", "users", "create", "Ops@Example.com", "--admin",
         "--password-stdin"],
        input="Sturdy-password-9\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "ops@example.com (admin)" in run.stdout
    weak = subprocess.run(
        [sys.executable, "-m", "cli.catalog", "users", "create", "x@example.com",
         "--password-stdin"],
        input="short\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert weak.returncode == 1 and "password: must be at least 10 characters" in weak.stderr
