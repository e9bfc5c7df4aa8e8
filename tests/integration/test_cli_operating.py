"""Operating with the `orderflow` CLI (issue 19): finding an order by whatever is at hand, list
commands with whole ids, --json and a line for an empty list, one money format, clean help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import click
import typer
from sqlalchemy import text
from typer.testing import CliRunner

from services.unit_of_work import unit_of_work

A = "fd46726f-0c1d-4e5a-9b7c-2f3e4d5c6b7a"
B = "fd46aa01-8e2f-4a6b-8c1d-9e0f1a2b3c4d"
C = "0b9e1c2d-3f4a-4b5c-8d6e-7f8091a2b3c4"
LONG_EXTERNAL = "ux-00397-storefront-eu-west-checkout-20240611"


def cli(
    *args: str, columns: int = 80, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command in a child process, with a pipe's default width (80) unless told."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": str(columns)},
    )  # fmt: skip


def insert_order(oid: str, external_id: str, *, source: str = "web", status: str = "RECEIVED",
                 total: int = 6900, currency: str = "CNY") -> None:  # fmt: skip
    with unit_of_work() as s:
        s.execute(
            text("INSERT INTO orders (id, source, external_id, body_hash, status, currency, "
                 "total_amount, payment_provider, shipping_address) VALUES (:id, :src, :ext, "
                 "md5(:id), :st, :cur, :total, 'alipay', '{}'::jsonb)"),
            {"id": oid, "src": source, "ext": external_id, "st": status, "cur": currency,
             "total": total},
        )  # fmt: skip


def add_waybill(oid: str, waybill: str, carrier: str = "yuantong") -> None:
    with unit_of_work() as s:
        s.execute(
            text("INSERT INTO shipments (order_id, booking_key, carrier, waybill, status) "
                 "VALUES (:o, :bk, :c, :w, 'PENDING')"),
            {"o": oid, "bk": f"bk-{oid}-{carrier}", "c": carrier, "w": waybill},
        )  # fmt: skip


def as_json(run: subprocess.CompletedProcess[str]) -> Any:
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


# --- orders show: id, id prefix, external id, waybill ----------------------------------------


def test_show_finds_an_order_by_id_prefix_external_id_or_waybill(db):
    insert_order(A, "ux-00397")
    insert_order(B, "ux-00398")
    add_waybill(B, "YT9000000001")
    for query, oid in [(A, A), ("fd46726f", A), ("ux-00397", A), ("YT9000000001", B),
                       (A.upper(), A), ("FD46AA", B)]:  # fmt: skip
        run = cli("orders", "show", query, columns=200)
        assert run.returncode == 0, (query, run.stderr)
        assert f"order {oid}" in run.stdout, query
    view = as_json(cli("orders", "show", "ux-00397", "--json"))
    assert view["id"] == A
    assert view["total"] == {"amount_minor": 6900, "currency": "CNY", "display": "69.00 CNY"}


def test_show_lists_every_parcel_with_its_warehouse_lines_and_latest_event(db):
    insert_order(A, "ux-00397", status="PARTIALLY_SHIPPED")
    with unit_of_work() as s:
        ids = [s.execute(text(
            "INSERT INTO shipments (order_id, booking_key, warehouse, carrier, waybill, status, "
            "cancelled_at, cancel_reason) VALUES (:o, :bk, :w, :c, :wb, :st, :ca, :cr) "
            "RETURNING id"), {"o": A, "bk": f"ship-{A}-{w}-1", "w": w, "c": c, "wb": wb,
                              "st": st, "ca": ca, "cr": cr}).scalar_one()
            for w, c, wb, st, ca, cr in [
                ("north", "yuantong", "YT9000000001", "IN_TRANSIT", None, None),
                ("south", None, None, "PENDING", None, None),
                ("east", None, None, "PENDING", "2026-12-01T00:00:00Z", "refused:out_of_stock"),
            ]]  # fmt: skip
        for sid, sku in zip(ids, "ABC", strict=True):
            s.execute(text("INSERT INTO shipment_lines (shipment_id, sku, quantity) "
                           "VALUES (:s, :k, 2)"), {"s": sid, "k": sku})  # fmt: skip
        s.execute(text("INSERT INTO tracking_events (shipment_id, occurred_at, status, "
                       "description, dedupe_key) VALUES (:s, now(), 'IN_TRANSIT', "
                       "'arrived at Shanghai hub', 'k1')"), {"s": ids[0]})  # fmt: skip
    out = cli("orders", "show", A, columns=220).stdout
    table = out[out.index("parcels") :]
    first_cells = {str(i) for i in ids}
    rows = [ln for ln in table.splitlines()
            if "│" in ln and ln.split("│")[1].strip() in first_cells]  # fmt: skip
    assert len(rows) == 3, table
    assert "north" in rows[0] and "A x2" in rows[0] and "YT9000000001" in rows[0]
    assert "arrived at Shanghai hub" in rows[0] and "IN_TRANSIT" in rows[0]
    assert "south" in rows[1] and "not booked" in rows[1] and "PENDING" in rows[1]
    assert "east" in rows[2] and "CANCELLED (refused:out_of_stock)" in rows[2]
    view = as_json(cli("orders", "show", A, "--json"))
    assert [(p["warehouse"], p["lines"]) for p in view["parcels"]] == [
        (w, [{"sku": k, "quantity": 2}]) for w, k in (("north", "A"), ("south", "B"), ("east", "C"))
    ]


def test_show_says_not_found_and_lists_the_candidates_of_an_ambiguous_query(db):
    insert_order(A, "ux-00397")
    insert_order(B, "ux-00398")
    for query in ("fd46726e", "ux-99999", "fd4", "[x]"):  # fd4: shorter than a prefix may be
        run = cli("orders", "show", query)
        assert run.returncode == 1
        assert run.stderr == f"error: order {query} not found\n", run.stderr
    ambiguous = cli("orders", "show", "fd46")  # one line, though longer than 80 columns
    assert ambiguous.returncode == 1 and ambiguous.stderr.count("\n") == 1
    assert ambiguous.stderr.startswith("error: order: 'fd46' matches 2 orders: ")
    assert A in ambiguous.stderr and B in ambiguous.stderr


def test_ambiguity_lists_at_most_ten_and_covers_shared_external_ids_and_waybills(db):
    many = [f"abcd{i:04x}-0000-4000-8000-000000000000" for i in range(12)]
    for i, oid in enumerate(many):
        insert_order(oid, f"bulk-{i}")
    run = cli("orders", "show", "abcd")
    assert run.returncode == 1
    assert "'abcd' matches more than 10 orders" in run.stderr
    assert sum(oid in run.stderr for oid in many) == 10
    insert_order(A, "same-ext", source="shop-a")
    insert_order(C, "same-ext", source="shop-b")
    shared = cli("orders", "show", "same-ext")
    assert shared.returncode == 1 and "matches 2 orders by external id" in shared.stderr
    assert A in shared.stderr and C in shared.stderr
    add_waybill(many[0], "SF1", carrier="shunfeng")
    add_waybill(many[1], "SF1", carrier="yuantong")
    waybill = cli("orders", "show", "SF1")
    assert waybill.returncode == 1 and "matches 2 orders by waybill" in waybill.stderr


def test_console_search_shares_the_lookup(db):
    from services import console

    insert_order(A, "ux-00397")
    with unit_of_work() as s:
        assert console.find_order(s, "fd46726f") == A
        assert console.find_order(s, " ux-00397 ") == A
        assert console.find_order(s, "fd4") is None


def test_commands_that_act_on_an_order_take_what_show_takes(db):
    insert_order(A, "ux-00397")
    insert_order(B, "ux-00398", status="PAID")
    insert_order(C, "ux-00399")
    ambiguous = cli("orders", "cancel", "fd46")
    assert ambiguous.returncode == 1 and "'fd46' matches 2 orders" in ambiguous.stderr
    missing = cli("payments", "refund", "ux-99999", "--refund-no", "r-1")
    assert missing.returncode == 1 and missing.stderr == "error: order ux-99999 not found\n"
    assert _statuses() == {A: "RECEIVED", B: "PAID", C: "RECEIVED"}  # refused: nothing moved
    cancelled = cli("orders", "cancel", "ux-00397")
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"cancelled {A}" in cancelled.stdout
    shipped = cli("shipments", "register", "FD46AA", "--carrier", "yuantong",
                  "--waybill", "YT9000000002", columns=200)  # fmt: skip
    assert shipped.returncode == 0, shipped.stderr
    assert f"order {B}: parcel shipped as yuantong YT9000000002; order SHIPPED" in shipped.stdout
    unpaid = cli("payments", "refund", "0b9e1c2d", "--refund-no", "r-2")  # C has no payment
    assert unpaid.returncode == 1 and "order has no payment" in unpaid.stderr
    assert _statuses() == {A: "CANCELLED", B: "SHIPPED", C: "RECEIVED"}


def test_payments_acknowledge_clears_a_flag_found_by_external_id(db):
    insert_order(A, "ux-00397", status="CANCELLED")
    with unit_of_work() as s:
        s.execute(
            text("INSERT INTO payments (order_id, provider, out_trade_no, idempotency_key, amount, "
                 "currency, status, captured_amount, captured_currency, attention) VALUES (:o, "
                 "'alipay', 'T1', 'k1', 6900, 'CNY', 'REFUNDED', 1, 'CNY', 'wrong amount')"),
            {"o": A},
        )  # fmt: skip
    blank = cli("payments", "acknowledge", "ux-00397", "--note", " ")
    assert blank.returncode == 1 and "note:" in blank.stderr
    done = cli("payments", "acknowledge", "ux-00397", "--note", "told the buyer", columns=200)
    assert done.returncode == 0, done.stderr
    assert f"acknowledged {A}: wrong amount" in done.stdout
    again = cli("payments", "acknowledge", "ux-00397", "--note", "again")
    assert again.returncode == 1 and "has no payment waiting for a person" in again.stderr


def _statuses() -> dict[str, str]:
    with unit_of_work() as s:
        return dict(s.execute(text("SELECT id, status FROM orders")).tuples().all())


# --- orders list ------------------------------------------------------------------------------


def test_orders_list_shows_whole_ids_money_in_major_units_and_any_case_status(db):
    insert_order(A, LONG_EXTERNAL, status="REJECTED")
    insert_order(C, "jp-1", status="REJECTED", total=500, currency="JPY")
    insert_order(B, "ux-2", status="RECEIVED")
    run = cli("orders", "list", "--status", "rejected")  # 80 columns: a pipe's width
    assert run.returncode == 0, run.stderr
    assert A in run.stdout and C in run.stdout and LONG_EXTERNAL in run.stdout
    assert B not in run.stdout
    assert "69.00 CNY" in run.stdout and "500 JPY" in run.stdout and "6900" not in run.stdout
    rows = as_json(cli("orders", "list", "--status", "Rejected", "--json"))
    assert [r["id"] for r in rows] == [C, A] or [r["id"] for r in rows] == [A, C]
    totals = {r["id"]: r["total"] for r in rows}
    assert totals[A] == {"amount_minor": 6900, "currency": "CNY", "display": "69.00 CNY"}
    assert totals[C] == {"amount_minor": 500, "currency": "JPY", "display": "500 JPY"}
    assert {r["external_id"] for r in rows} == {LONG_EXTERNAL, "jp-1"}
    none = cli("orders", "list", "--status", "completed")
    assert none.returncode == 0 and none.stdout.strip() == "no orders match these filters"
    assert as_json(cli("orders", "list", "--status", "completed", "--json")) == []
    bad = cli("orders", "list", "--status", "nope")
    assert bad.returncode == 1 and "status: unknown status 'NOPE'" in bad.stderr


# --- every list command: empty line, --json, whole ids ------------------------------------------


# (command, options, what an empty list prints); --status in any case, as operators type it.
LISTS = [
    (("orders", "list"), (), "no orders"),
    (("dlq", "list"), (), "no dead letters"),
    (("catalog", "products", "list"), (), "no products"),
    (("callbacks", "list"), (), "no callback endpoints"),
    (("callbacks", "deliveries"), ("--status", "pending"), "no deliveries"),
    (("apikeys", "list"), (), "no API keys"),
    (("operators", "list"), (), "no operators yet: `orderflow operators create NAME --role admin`"),
]


def test_an_empty_list_is_one_line_and_an_empty_json_array(db):
    for command, options, line in LISTS:
        args = (*command, *options)
        run = cli(*args)
        assert run.returncode == 0, (args, run.stderr)
        assert run.stdout.strip() == line, (args, run.stdout)
        assert as_json(cli(*args, "--json")) == [], args


def test_list_commands_print_json_rows_with_whole_ids_and_money_objects(catalog):
    from datetime import UTC, datetime

    from pydantic import SecretStr

    from domain.operators import Role
    from services import api_keys, callbacks, dead_letters, operators
    from services.secrets_at_rest import cipher_from_setting
    from settings import get_settings

    catalog({"CUP-1": 3}, price=6900)
    insert_order(A, "ux-00397")
    with unit_of_work() as s:
        dl_id = dead_letters.record(
            s, task_name="orders.process", task_id="t-1", args=[A], kwargs={}, queue="orders",
            error=RuntimeError("boom " * 40), attempts=4, order_id=A,
        )  # fmt: skip
        key = api_keys.create_key(s, source="shop-a", now=datetime.now(UTC))
        operators.create(s, "nia", "Correct-Horse-42", Role.parse("viewer"))
        cipher = cipher_from_setting(get_settings().key_encryption_key)
        callbacks.register_endpoint(s, "web", "http://127.0.0.1:9/hook",
                                    SecretStr("s" * 32), cipher=cipher)  # fmt: skip

    listed = cli("dlq", "list")
    assert listed.returncode == 0 and A in listed.stdout  # the order id, whole, at 80 columns
    (dl,) = as_json(cli("dlq", "list", "--json"))
    assert dl["id"] == dl_id and dl["order_id"] == A
    assert dl["error"].startswith("boom boom") and len(dl["error"]) > 80  # the table cuts at 80
    (product,) = as_json(cli("catalog", "products", "list", "--json"))
    assert product["sku"] == "CUP-1"
    assert product["price"] == {"amount_minor": 6900, "currency": "CNY", "display": "69.00 CNY"}
    assert "69.00 CNY" in cli("catalog", "products", "list").stdout
    (k,) = as_json(cli("apikeys", "list", "--json"))
    assert k["key_id"] == key.key_id and k["state"] == "active" and "api_key" not in k
    assert key.key_id in cli("apikeys", "list").stdout
    (op,) = as_json(cli("operators", "list", "--json"))
    assert op["name"] == "nia" and op["role"] == "viewer" and op["state"] == "active"
    (ep,) = as_json(cli("callbacks", "list", "--json"))
    assert ep["source"] == "web" and ep["url"] == "http://127.0.0.1:9/hook" and ep["active"]
    assert "secret" not in json.dumps(ep)


# --- help screens -------------------------------------------------------------------------------


def _screens(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += _screens(sub, (*path, name))
    return found


def test_help_shows_no_bool_type_beside_flags_and_no_double_negation():
    from cli.main import app

    runner = CliRunner()
    screens = _screens(typer.main.get_command(app))
    assert ("intake",) in screens and ("orders", "list") in screens and len(screens) > 30
    for path in screens:
        out = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "120"}).output
        assert "Show this message and exit." in out, path
        assert "<bool>" not in out and "--no-no-" not in out, (path, out)
    intake = runner.invoke(app, ["intake", "--help"], env={"COLUMNS": "120"}).output
    assert "--no-enqueue" in intake and "default: no-no-enqueue" not in intake
    for command, _, _ in LISTS:
        assert "--json" in runner.invoke(app, [*command, "--help"]).output, command
    top = cli("--help", columns=120)  # the installed entry point renders the same
    assert top.returncode == 0 and "<bool>" not in top.stdout and "--help" in top.stdout
