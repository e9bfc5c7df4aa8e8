"""Catalog administration against real PostgreSQL through the CLI: CSV/JSONL import and export,
the products and users commands, and imports that fail during the write.

Import contract under test: by default a file with any bad row writes nothing and reports every
bad row by line number (exit 1); ``--partial`` writes the good rows and still reports the bad
ones (exit 1); a clean file imports (exit 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select, text

from models import Product, ProductPrice
from models.db import session_factory
from producers.intake import accept_message
from services import catalog_admin
from services.unit_of_work import unit_of_work
from tests.conftest import order_message, wait_until
from tests.integration.catalog_admin_support import count, product, waiting_on_a_lock

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
    terms = cli("catalog", "products", "update", "C-1", "--not-returnable",
                "--return-window-s", "3600")  # fmt: skip
    assert terms.returncode == 0, terms.stderr
    with session_factory()() as s:
        assert s.scalars(select(Product.returnable).where(Product.sku == "C-1")).one() is False
    too_long = cli("catalog", "products", "update", "C-1", "--return-window-s", "99999999")
    assert too_long.returncode == 1 and "return_window_s" in too_long.stderr
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
