"""The ``orderflow`` command."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.apikeys import apikeys_app
from cli.callbacks import callbacks_app
from cli.catalog import catalog_app, stock_admin_app, users_app
from cli.common import command, console, fail, print_json
from cli.dlq import dlq_app
from cli.keys import keys_app
from cli.operators import operators_app
from cli.orders import orders_app
from cli.payments import payments_app, shipments_app
from cli.returns import returns_app
from cli.settlement import settlement_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="orderflow operations")
db_app = typer.Typer(no_args_is_help=True, help="Database schema")
stock_app = typer.Typer(no_args_is_help=True, help="Stock counters and the ledger")
metrics_app = typer.Typer(no_args_is_help=True, help="Prometheus metrics")
app.add_typer(db_app, name="db")
app.add_typer(orders_app, name="orders")
app.add_typer(returns_app, name="returns")
app.add_typer(dlq_app, name="dlq")
app.add_typer(stock_app, name="stock")
app.add_typer(payments_app, name="payments")
app.add_typer(shipments_app, name="shipments")
app.add_typer(metrics_app, name="metrics")
app.add_typer(catalog_app, name="catalog")
app.add_typer(users_app, name="users")
app.add_typer(callbacks_app, name="callbacks")
app.add_typer(apikeys_app, name="apikeys")
app.add_typer(keys_app, name="keys")
app.add_typer(operators_app, name="operators")
app.add_typer(settlement_app, name="settlement")
# receive / adjust / move / repair join `stock report` in the one `stock` group.
stock_app.registered_commands += stock_admin_app.registered_commands


@db_app.command("upgrade")
@command
def db_upgrade(revision: str = typer.Argument("head", help="Target revision")) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from models.migrate import current_revision, upgrade

    upgrade(revision)
    console.print(f"database at revision [bold]{current_revision()}[/]")


@app.command("intake")
@command
def intake(
    file: Path = typer.Argument(..., help="JSONL file, one order message per line"),
    no_enqueue: bool = typer.Option(
        False, "--no-enqueue", help="Store only; the sweeper will process them"
    ),  # one flag: a bare bool option named no_* would also grow a --no-no-enqueue
) -> None:
    """Import orders from a JSONL file; bad lines are reported with their line numbers."""
    from cli.intake import import_jsonl

    if not file.is_file():
        raise fail(f"file: {file} does not exist or is not a file")
    report = import_jsonl(file)
    unqueued = 0
    if report.created_ids and not no_enqueue:
        from workers.publish import enqueue_reservations

        queued = enqueue_reservations(report.created_ids)  # RESERVE_BATCH_MAX ids a message
        if queued < len(report.created_ids):
            # Stored is safe: each order's stage deadline makes the sweeper publish it later.
            unqueued = len(report.created_ids) - queued
            console.print(f"[red]broker unreachable:[/] {unqueued} stored orders not queued; "
                          "the sweeper will process them")  # fmt: skip
    for number, reason in report.errors:
        console.print(f"[red]line {number}:[/] {reason}")
    console.print(
        f"accepted {report.accepted}, already present {report.duplicates}, "
        f"rejected {len(report.errors)}"
    )
    if report.errors or unqueued:
        raise typer.Exit(1)


@stock_app.command("report")
@command
def stock_report() -> None:
    """On hand / reserved / available per SKU and warehouse, and the ledger drift check."""
    from cli.catalog import print_repair_proposals
    from services.queries import stock_drift
    from services.stock_admin import levels, propose_repairs
    from services.unit_of_work import unit_of_work

    table = Table("sku", "warehouse", "on hand", "reserved", "available")
    with unit_of_work() as session:
        for s in levels(session):
            table.add_row(s.sku, s.warehouse, str(s.on_hand), str(s.reserved), str(s.available))
        drift = stock_drift(session)
        proposals = propose_repairs(session)
    console.print(table)
    if drift or proposals:
        if drift:
            console.print("[red]counters differ from the ledger:[/]")
            print_json(drift)
        print_repair_proposals(proposals)  # proposed, never applied: see `stock repair --apply`
        raise typer.Exit(1)
    console.print("[green]counters match the ledger[/]")


@metrics_app.command("serve")
def metrics_serve(
    port: int = typer.Option(9808, min=1, max=65535),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every one)"),
) -> None:
    """Export this host's worker metrics on /metrics, for a machine with workers but no API.

    Event series only (retries, failures, provider calls, stage latency), merged from
    PROMETHEUS_MULTIPROC_DIR; the state series come from the API's /metrics. Needs no database.
    """
    import signal
    import threading

    from observability.metrics import serve_events

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    console.print(f"worker metrics on http://{host}:{port}/metrics; Ctrl-C stops")
    try:
        serve_events(host, port, stop)
    except KeyboardInterrupt:
        pass
    except (RuntimeError, OSError) as exc:
        raise fail(str(exc)) from None


@app.command("up")
def up(
    api_port: int = typer.Option(8000, min=1, max=65535),
    flower_port: int = typer.Option(5555, min=1, max=65535),
    simulators: bool = typer.Option(
        True, help="Start the provider simulators (a local stand-in for every provider)"
    ),
) -> None:
    """Run the API, a worker per queue, beat, Flower and the simulators until Ctrl-C."""
    from cli.ops import run_up

    try:
        run_up(api_port=api_port, flower_port=flower_port, simulators=simulators)
    except (RuntimeError, TimeoutError, OSError) as exc:
        raise fail(str(exc)) from None


@app.command("doctor")
@command
def doctor() -> None:
    """Check database, migrations, broker, workers, beat and providers; exit 1 on a failure."""
    from cli.ops import run_doctor

    if not run_doctor():
        raise typer.Exit(1)


@app.command("demo")
def demo(
    orders: int = typer.Option(1000, min=1, max=100_000, help="How many orders to push"),
    payment_window: int = typer.Option(15, min=1, help="Seconds before unpaid orders expire"),
    concurrency: int = typer.Option(16, min=1, max=256, help="Concurrent intake clients"),
    stall_after: int | None = typer.Option(
        None,
        min=1,
        help="Seconds without any order changing status (while some are not final) before "
        "the demo reports the stuck stage and stops [default: 60, or the payment window + 30]",
    ),
    database: str = typer.Option(
        "orderflow_demo", help="Scratch database the demo drops and recreates on the server"
    ),
) -> None:
    """Run the pipeline end to end on the embedded default (or configured servers)."""
    import re

    from cli.demo import run_demo

    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", database):
        raise fail(f"database: {database!r} is not a plain lower-case name")
    try:
        run_demo(
            orders=orders, payment_window_s=payment_window, concurrency=concurrency,
            stall_s=stall_after, database=database,
        )  # fmt: skip
    except (RuntimeError, TimeoutError, OSError) as exc:
        raise fail(str(exc)) from None


if __name__ == "__main__":
    app()
