"""Catalog, user and stock administration commands (wired into ``orderflow`` by cli/main.py).

* ``catalog products add|update|deactivate|delete|list|prices`` and ``catalog import FILE``
  / ``catalog export FILE`` (``.csv`` or ``.jsonl``). Import is all-or-nothing: when any row is
  bad nothing is written, every bad row is printed with its line number, and the exit code is
  1; ``--partial`` writes the good rows anyway (still exit 1 when some were rejected). Export
  writes a temporary file and renames it, so an interrupted export leaves no half file.
* ``users create EMAIL`` (``--admin``; the password is prompted for, or read from stdin with
  ``--password-stdin``).
* ``stock receive|adjust|move|repair``. ``repair`` prints, for each row whose counters disagree
  with the ledger (or the active reservations), the ledger row that would reconcile it, and
  exits 1; it writes only with ``--apply`` (see :mod:`services.stock_admin`).

Run standalone as ``python -m cli.catalog {catalog,users,stock} ...``.
"""

from __future__ import annotations

import getpass
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from cli.common import Column, command, console, err_console, fail, json_option, print_listing

if TYPE_CHECKING:
    from services.stock_admin import RepairProposal

catalog_app = typer.Typer(no_args_is_help=True, help="Products, prices, import and export")
products_app = typer.Typer(no_args_is_help=True, help="Create, change and list products")
catalog_app.add_typer(products_app, name="products")
users_app = typer.Typer(no_args_is_help=True, help="Shop users")
stock_admin_app = typer.Typer(no_args_is_help=True, help="Receive, adjust, move and repair stock")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name in some containers
        return "cli"


def _progress() -> Progress:
    columns = (TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    return Progress(*columns, console=err_console)


# --- products ----------------------------------------------------------------------------------


@products_app.command("add")
@command
def products_add(
    sku: str,
    name: str = typer.Option(..., help="Product name"),
    price: int = typer.Option(..., help="Price in minor units (1250 = 12.50)"),
    currency: str = typer.Option(..., help="ISO 4217 code, e.g. CNY"),
    inactive: bool = typer.Option(False, "--inactive", help="Create it deactivated"),
) -> None:
    """Create a product (its first price starts the price history)."""
    from services import catalog_admin
    from services.unit_of_work import unit_of_work

    money = catalog_admin.check_price(price, currency)
    with unit_of_work() as session:
        catalog_admin.create_product(session, sku, name, money, active=not inactive, actor=_actor())
    console.print(f"created {sku}: {name}, {money}")


@products_app.command("update")
@command
def products_update(
    sku: str,
    name: str | None = typer.Option(None, help="New name"),
    price: int | None = typer.Option(None, help="New price in minor units"),
    currency: str | None = typer.Option(None, help="New currency"),
    active: bool | None = typer.Option(None, "--active/--inactive", help="Sell it or not"),
    returnable: bool | None = typer.Option(
        None, "--returnable/--not-returnable", help="May a return be approved without a person"
    ),
    return_window_s: int | None = typer.Option(None, help="Its own return window (seconds)"),
) -> None:
    """Change a product's name, price, active flag or after-sale terms (a price change is
    recorded)."""
    from domain.money import Money
    from services import catalog_admin
    from services.unit_of_work import unit_of_work

    given = (name, price, currency, active, returnable, return_window_s)
    if all(x is None for x in given):
        raise fail("nothing to change: give --name, --price, --currency, --active/--inactive, "
                   "--returnable/--not-returnable or --return-window-s")  # fmt: skip
    with unit_of_work() as session:
        p = catalog_admin.update_product(
            session, sku, name=name, price_amount=price, currency=currency, active=active,
            returnable=returnable, return_window_s=return_window_s, actor=_actor(),
        )  # fmt: skip
        money = Money(p.price_amount, p.currency)
        console.print(f"{p.sku}: {p.name}, {money}, {'active' if p.active else 'inactive'}")


@products_app.command("deactivate")
@command
def products_deactivate(sku: str) -> None:
    """Stop selling a product (new orders for it are rejected)."""
    from services import catalog_admin
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        catalog_admin.deactivate_product(session, sku, actor=_actor())
    console.print(f"deactivated {sku}")


@products_app.command("delete")
@command
def products_delete(sku: str) -> None:
    """Delete a product never ordered or stocked; otherwise deactivate it."""
    from services import catalog_admin
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        outcome = catalog_admin.delete_product(session, sku, actor=_actor())
    if outcome == "deleted":
        console.print(f"deleted {sku}")
    else:
        console.print(f"deactivated {sku} (orders or the stock ledger refer to it)")


PRODUCT_COLUMNS = (
    Column("sku", "sku", ident=True), Column("name", "name"),
    Column("price", lambda p: str(p["price"]["display"])),
    Column("active", lambda p: "yes" if p["active"] else "no"),
)  # fmt: skip


@products_app.command("list")
@command
def products_list(
    active: bool | None = typer.Option(None, "--active/--inactive", help="Only these"),
    limit: int = typer.Option(1000, min=1, max=100_000),
    as_json: bool = json_option(),
) -> None:
    """Products sorted by SKU."""
    from domain.money import money_json
    from services import catalog_admin
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        found = catalog_admin.list_products(session, active=active, limit=limit)
    rows = [
        {"sku": p["sku"], "name": p["name"], "price": money_json(p["price_amount"], p["currency"]),
         "active": p["active"], "created_at": p["created_at"], "updated_at": p["updated_at"]}
        for p in found
    ]  # fmt: skip
    print_listing(rows, PRODUCT_COLUMNS, as_json=as_json, empty="no products")


@products_app.command("prices")
@command
def products_prices(sku: str) -> None:
    """A product's price history, oldest first."""
    from domain.money import Money
    from services import catalog_admin
    from services.unit_of_work import unit_of_work

    table = Table("valid from", "price", "actor")
    with unit_of_work() as session:
        for row in catalog_admin.price_history(session, sku):
            money = Money(row["price_amount"], row["currency"])
            table.add_row(row["valid_from"], str(money), row["actor"] or "")
    console.print(table)


# --- import and export -------------------------------------------------------------------------


@catalog_app.command("import")
@command
def catalog_import(
    file: Path = typer.Argument(..., help="A .csv (with header) or .jsonl file"),
    partial: bool = typer.Option(
        False, "--partial", help="Import the good rows even when some rows are bad"
    ),
) -> None:
    """Create or update products from FILE. All-or-nothing unless --partial."""
    from sqlalchemy.exc import SQLAlchemyError

    from services import catalog_import as importer
    from services.unit_of_work import unit_of_work

    if not file.is_file():
        raise fail(f"file: {file} does not exist or is not a file")
    records, syntax_errors = importer.read_records(file)
    with _progress() as progress:
        tasks: dict[str, TaskID] = {}

        def advance(phase: str, step: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.advance(tasks[phase], step)

        try:
            with unit_of_work() as session:
                report = importer.import_catalog(
                    session, records, syntax_errors=syntax_errors, partial=partial,
                    actor=_actor(), progress=advance,
                )  # fmt: skip
        except SQLAlchemyError as exc:  # e.g. the connection was lost part way
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise fail(f"database error: {first}; nothing was imported (rolled back)") from None
    for error in report.errors:
        console.print(f"[red]{error}[/]", highlight=False)
    if not report.written:
        bad = len({e.line for e in report.errors})
        console.print(
            f"nothing imported: {bad} bad row(s) (fix them, or use --partial to import the "
            "good rows)"
        )
        raise typer.Exit(1)
    console.print(
        f"imported {report.created + report.updated + report.unchanged} row(s): created "
        f"{report.created}, updated {report.updated}, unchanged {report.unchanged}; "
        f"rejected {len({e.line for e in report.errors})}"
    )
    if report.errors:
        raise typer.Exit(1)


@catalog_app.command("export")
@command
def catalog_export(
    file: Path = typer.Argument(..., help="Target .csv or .jsonl file (replaced atomically)"),
) -> None:
    """Write every product to FILE, in the format the importer reads."""
    from services import catalog_import as importer
    from services.unit_of_work import unit_of_work

    fmt = file.suffix.lower().lstrip(".")
    if fmt not in ("csv", "jsonl"):
        raise fail(f"file: {file.name}: expected a .csv or .jsonl file")
    if not file.parent.is_dir():
        raise fail(f"file: directory {file.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    try:
        with unit_of_work() as session, os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            total = importer.count_products(session)
            with _progress() as progress:
                task = progress.add_task("export", total=total)
                count = importer.write_rows(
                    importer.export_rows(session), out, fmt,
                    lambda n: progress.advance(task, n),
                )  # fmt: skip
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    console.print(f"exported {count} product(s) to {file}")


# --- users -------------------------------------------------------------------------------------


@users_app.command("create")
@command
def users_create(
    email: str,
    admin: bool = typer.Option(False, "--admin", help="An operator account"),
    name: str | None = typer.Option(None, help="Display name"),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from stdin instead of prompting"
    ),
) -> None:
    """Create a user (the same email and password rules as POST /v1/users)."""
    from services import users
    from services.unit_of_work import unit_of_work

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with unit_of_work() as session:
        user = users.register(session, email, password, display_name=name, is_admin=admin)
    console.print(f"created user {user.id} {user.email}" + (" (admin)" if admin else ""))


# --- stock -------------------------------------------------------------------------------------


def _show_level(level: dict[str, object]) -> None:
    console.print(
        f"{level['sku']} @ {level['warehouse']}: on hand {level['on_hand']}, "
        f"reserved {level['reserved']}, available {level['available']}"
    )


@stock_admin_app.command("receive")
@command
def stock_receive(
    sku: str,
    quantity: int = typer.Argument(..., help="Units received (> 0)"),
    warehouse: str | None = typer.Option(None, help="Default: DEFAULT_WAREHOUSE"),
    reason: str | None = typer.Option(None, help="E.g. the delivery note"),
) -> None:
    """Add units on hand (a ledger row of kind receive)."""
    from services import stock_admin
    from services.unit_of_work import unit_of_work
    from settings import get_settings

    with unit_of_work() as session:
        level = stock_admin.receive(
            session, sku, warehouse or get_settings().default_warehouse, quantity,
            actor=_actor(), reason=reason,
        )  # fmt: skip
    _show_level(level.as_dict())


@stock_admin_app.command("adjust")
@command
def stock_adjust(
    sku: str,
    delta: int = typer.Option(..., help="Units to add (5) or remove (-5); write --delta=-5"),
    reason: str = typer.Option(..., help="Why (stock-take, damage, ...): required"),
    warehouse: str | None = typer.Option(None, help="Default: DEFAULT_WAREHOUSE"),
) -> None:
    """Correct on-hand units with a reason (never below what is reserved)."""
    from services import stock_admin
    from services.unit_of_work import unit_of_work
    from settings import get_settings

    with unit_of_work() as session:
        level = stock_admin.adjust(
            session, sku, warehouse or get_settings().default_warehouse, delta,
            reason=reason, actor=_actor(),
        )  # fmt: skip
    _show_level(level.as_dict())


@stock_admin_app.command("move")
@command
def stock_move(
    sku: str,
    quantity: int = typer.Argument(..., help="Units to move (> 0)"),
    from_warehouse: str = typer.Option(..., "--from", help="Source warehouse"),
    to_warehouse: str = typer.Option(..., "--to", help="Destination warehouse"),
    reason: str | None = typer.Option(None, help="Why"),
) -> None:
    """Move available units between warehouses (two ledger rows, one transaction)."""
    from services import stock_admin
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        src, dst = stock_admin.move(
            session, sku, from_warehouse, to_warehouse, quantity, actor=_actor(), reason=reason
        )
    _show_level(src.as_dict())
    _show_level(dst.as_dict())


def print_repair_proposals(proposals: list[RepairProposal]) -> None:
    """A table of proposals: counters, ledger, active reservations, the reconciling ledger row
    and the counters after it. Also used by ``orderflow stock report``."""
    table = Table(
        "sku", "warehouse", "counters on hand/res.", "ledger on hand/res.", "active res.",
        "repair ledger row Δon hand/Δres.", "counters after", "note",
    )  # fmt: skip
    for p in proposals:
        counters = "missing" if p.counter_on_hand is None else (
            f"{p.counter_on_hand}/{p.counter_reserved}"
        )  # fmt: skip
        table.add_row(
            p.sku, p.warehouse, counters, f"{p.ledger_on_hand}/{p.ledger_reserved}",
            str(p.active_reserved), f"{p.delta_on_hand:+d}/{p.delta_reserved:+d}",
            f"{p.target_on_hand}/{p.target_reserved}", p.blocked or "",
        )  # fmt: skip
    console.print(table)


@stock_admin_app.command("repair")
@command
def stock_repair(
    apply: bool = typer.Option(False, "--apply", help="Write the repair rows (default: show)"),
    trust: str = typer.Option(
        "counters", help="Which on-hand figure is right: counters (default) or ledger"
    ),
) -> None:
    """Show, for each row that drifted from the ledger, the ledger row that would reconcile it
    (exit 1 when there is drift); write them only with --apply."""
    from services import stock_admin
    from services.unit_of_work import unit_of_work

    if trust not in ("counters", "ledger"):
        raise fail("trust: must be 'counters' or 'ledger'")
    mode: stock_admin.Trust = "ledger" if trust == "ledger" else "counters"
    with unit_of_work() as session:
        if apply:
            proposals = stock_admin.apply_repairs(session, trust=mode, actor=_actor())
        else:
            proposals = stock_admin.propose_repairs(session, trust=mode)
    if not proposals:
        console.print("[green]counters match the ledger and the reservations[/]")
        return
    print_repair_proposals(proposals)
    blocked = [p for p in proposals if p.blocked]
    if apply:
        console.print(
            f"repaired {len(proposals) - len(blocked)} row(s); {len(blocked)} need a person"
        )
        if blocked:
            raise typer.Exit(1)
        return
    console.print(
        f"{len(proposals)} row(s) drifted; nothing was written. Review, then run "
        "`orderflow stock repair --apply`" + (f" ({len(blocked)} blocked)" if blocked else "")
    )
    raise typer.Exit(1)


def standalone_app() -> typer.Typer:
    """All three groups under one command, as ``orderflow`` will show them."""
    app = typer.Typer(no_args_is_help=True, add_completion=False, help="orderflow administration")
    app.add_typer(catalog_app, name="catalog")
    app.add_typer(users_app, name="users")
    app.add_typer(stock_admin_app, name="stock")
    return app


if __name__ == "__main__":
    standalone_app()()
