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
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select, text

from api.catalog import admin_api_key_setting
from api.catalog import router as catalog_router
from api.errors import not_found_response
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


def waiting_on_a_lock(query_prefix: str) -> list[int]:
    """Backends of this database blocked on a lock while running a statement that starts so."""
    with unit_of_work() as s:
        return list(s.scalars(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query ILIKE :q"
        ), {"q": f"{query_prefix}%"}))  # fmt: skip


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
    ("message", "field"),
    [
        ("product P-9", "sku"),
        ("order 1f2e", "order_id"),
        ("payment of order 1f2e", "order_id"),
        ("no callback deliveries for event 7a", "event_id"),
        ("source: no callback endpoint for 'web'", "source"),
        ("shipment 4", "shipment_id"),
        ("something else", "id"),
    ],
)
def test_every_404_names_a_field(message, field):
    body = json.loads(not_found_response(NotFound(message)).body)
    assert body["error"] == "not_found"
    assert body["details"][0]["field"] == field and body["details"][0]["reason"]


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


# --- import and export (CLI) -------------------------------------------------------------------


#: The installed console script (pyproject's [project.scripts]), i.e. what an operator runs.
ORDERFLOW = str(Path(sys.executable).with_name("orderflow"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    assert os.access(ORDERFLOW, os.X_OK), f"{ORDERFLOW} missing: pip install -e ."
    return subprocess.run(
        [ORDERFLOW, *args],
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


def test_products_cli_deactivates(db):
    assert cli("catalog", "products", "add", "D-1", "--name", "Dish", "--price", "990",
               "--currency", "CNY").returncode == 0  # fmt: skip
    accept_message(order_message("D-1"), channel="test")
    run = cli("catalog", "products", "deactivate", "D-1")
    assert run.returncode == 0 and "deactivated D-1" in run.stdout, run.stderr
    assert product("D-1").active is False
    again = cli("catalog", "products", "deactivate", "D-1")  # idempotent
    assert again.returncode == 0 and product("D-1").active is False
    listed = cli("catalog", "products", "list", "--inactive")
    assert "D-1" in listed.stdout and "9.90 CNY" in listed.stdout
    ordered = cli("catalog", "products", "delete", "D-1")  # an order names it: kept
    assert ordered.returncode == 0 and "deactivated D-1 (orders" in ordered.stdout
    assert product("D-1") is not None


def test_users_cli_creates_an_admin(db):
    run = subprocess.run(
        [ORDERFLOW, "users", "create", "Ops@Example.com", "--admin",
         "--password-stdin"],
        input="Sturdy-password-9\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "ops@example.com (admin)" in run.stdout
    weak = subprocess.run(
        [ORDERFLOW, "users", "create", "x@example.com",
         "--password-stdin"],
        input="short\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert weak.returncode == 1 and "password: must be at least 10 characters" in weak.stderr


# --- a failure during the write leaves nothing behind ------------------------------------------

RACE_CSV = "sku,name,price_amount,currency\nC-1,One,100,CNY\nC-2,Two,200,CNY\nC-3,Three,300,CNY\n"


def start_import_blocked_on(tmp_path, sku: str):
    """An import (the CLI, its own process) whose INSERT of ``sku`` waits on another
    transaction's uncommitted insert of the same SKU: C-1 is already written in its
    transaction. Returns (the other session, inside its open transaction; the process; the
    importer's backend pid)."""
    path = tmp_path / "race.csv"
    path.write_text(RACE_CSV)
    other = session_factory()()
    other.begin()
    catalog_admin.create_product(other, sku, "Concurrent", catalog_admin.check_price(9, "CNY"),
                                 actor="other")  # fmt: skip
    other.flush()
    run = subprocess.Popen(
        [ORDERFLOW, "catalog", "import", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    pids: list[int] = []
    wait_until(lambda: bool(pids.extend(waiting_on_a_lock("INSERT INTO products")) or pids)
               or run.poll() is not None, timeout_s=60)  # fmt: skip
    assert run.poll() is None and pids, run.communicate()
    return other, run, pids[0]


def test_import_that_loses_a_concurrent_create_leaves_nothing(db, tmp_path):
    other, run, _ = start_import_blocked_on(tmp_path, "C-2")
    other.commit()  # the importer's INSERT of C-2 now fails on the unique index
    other.close()
    out, err = run.communicate(timeout=120)
    assert run.returncode == 1, out + err
    assert "created concurrently; nothing was imported" in err and "Traceback" not in err
    with unit_of_work() as s:  # only the concurrent product: nothing from the file
        assert list(s.execute(select(Product.sku, Product.name))) == [("C-2", "Concurrent")]
        assert list(s.scalars(select(ProductPrice.actor))) == ["other"]


def test_import_whose_connection_is_killed_leaves_nothing(db, tmp_path):
    other, run, importer_pid = start_import_blocked_on(tmp_path, "C-2")
    with unit_of_work() as s:
        assert s.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": importer_pid})
    other.rollback()
    other.close()
    out, err = run.communicate(timeout=120)
    assert run.returncode == 1, out + err
    assert "database error" in err and "nothing was imported" in err, err
    assert "Traceback" not in err
    assert count(Product) == 0 and count(ProductPrice) == 0  # C-1 was written, then rolled back


def test_partial_import_reads_the_rows_after_a_broken_quote(db, tmp_path):
    path = tmp_path / "quote.csv"
    path.write_text(
        "sku,name,price_amount,currency\n"
        "Q-1,One,100,CNY\n"
        'Q-2,"Two,200,CNY\n'  # the quote never closes: it swallows every later line
        "Q-3,Three,300,CNY\n"
        "Q-4,Four,x,CNY\n"
        "Q-5,Five,500,CNY\n"
    )
    run = cli("catalog", "import", str(path), "--partial")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "line 3: row: has 2 fields, the header 4; it runs over lines 3-6" in run.stdout
    assert "line 5: price_amount" in run.stdout  # a later bad row is reported by its own line
    assert "imported 3 row(s): created 3" in run.stdout and "rejected 2" in run.stdout
    with unit_of_work() as s:
        assert sorted(s.scalars(select(Product.sku))) == ["Q-1", "Q-3", "Q-5"]
