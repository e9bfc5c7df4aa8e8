"""The ``orderflow`` command."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cli.apikeys import apikeys_app
from cli.callbacks import callbacks_app
from cli.catalog import catalog_app, stock_admin_app, users_app
from cli.common import command, console, fail, print_json
from services.task_names import ORDERS_PROCESS
from settings import get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="orderflow operations")
db_app = typer.Typer(no_args_is_help=True, help="Database schema")
orders_app = typer.Typer(no_args_is_help=True, help="Inspect orders")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: tasks that failed for good")
stock_app = typer.Typer(no_args_is_help=True, help="Stock counters and the ledger")
payments_app = typer.Typer(no_args_is_help=True, help="Payments, refunds and reconciliation")
shipments_app = typer.Typer(no_args_is_help=True, help="Shipments and tracking")
metrics_app = typer.Typer(no_args_is_help=True, help="Prometheus metrics")
app.add_typer(db_app, name="db")
app.add_typer(orders_app, name="orders")
app.add_typer(dlq_app, name="dlq")
app.add_typer(stock_app, name="stock")
app.add_typer(payments_app, name="payments")
app.add_typer(shipments_app, name="shipments")
app.add_typer(metrics_app, name="metrics")
app.add_typer(catalog_app, name="catalog")
app.add_typer(users_app, name="users")
app.add_typer(callbacks_app, name="callbacks")
app.add_typer(apikeys_app, name="apikeys")
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
    no_enqueue: bool = typer.Option(False, help="Store only; the sweeper will process them"),
) -> None:
    """Import orders from a JSONL file; bad lines are reported with their line numbers."""
    from cli.intake import import_jsonl

    if not file.is_file():
        raise fail(f"file: {file} does not exist or is not a file")
    report = import_jsonl(file)
    unqueued = 0
    if report.created_ids and not no_enqueue:
        from workers.publish import enqueue_many

        queued = enqueue_many((ORDERS_PROCESS, oid) for oid in report.created_ids)
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


@orders_app.command("show")
@command
def orders_show(
    order_id: str,
    as_json: bool = typer.Option(False, "--json", help="Print the whole view as JSON (scripts)"),
) -> None:
    """An order's timeline: transitions, task attempts (worker, retries), provider calls with
    redacted bodies, notifications, and the status callbacks sent for it."""
    from services.queries import order_timeline
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        view = order_timeline(session, order_id)
    if as_json:
        print_json(view)
    else:
        print_order(view)


def print_order(view: dict[str, Any]) -> None:
    """The order's header, its timeline as a table, and its status callbacks."""
    console.print(
        f"[bold]order {escape(view['id'])}[/]  [bold cyan]{view['status']}[/]"
        + (f"  ({escape(view['reason'])})" if view["reason"] else ""),
        highlight=False,
    )
    lines = ", ".join(f"{ln['sku']} x{ln['quantity']}" for ln in view["lines"])
    console.print(
        Text(f"source {view['source']} / {view['external_id']}   "
             f"{view['total_amount']} {view['currency']} via {view['payment_provider']}   "
             f"created {view['created_at']}\nlines: {lines}")
    )  # fmt: skip
    table = Table("time", "kind", "transition", "task (worker, retries)", "detail",
                  title="timeline", show_lines=True)  # fmt: skip
    for e in view["timeline"]:
        transition = f"{e['from'] + ' ' if e['from'] else ''}→ {e['to']}" if e["to"] else ""
        detail = dict(e["detail"] or {})
        table.add_row(_clock(e["at"]), e["kind"], transition, _task_cell(detail.pop("task", None)),
                      Text(_detail_text(e["kind"], detail, e["actor"])))  # fmt: skip
    console.print(table)
    _print_callbacks(view["callbacks"], view["source"])


def _clock(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%m-%d %H:%M:%S.%f")[:-3]


def _task_cell(task: dict[str, Any] | None) -> Text:
    if not task:
        return Text("")
    return Text(f"{task.get('name')}\non {task.get('worker')}\nretries {task.get('retries')}")


def _compact(value: Any, limit: int = 400) -> str:
    # ", " and ": " separators: a long body wraps at its spaces, not inside a value.
    text = json.dumps(value, default=str, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _detail_text(kind: str, d: dict[str, Any], actor: str | None) -> str:
    """One cell: what happened, the way an operator reads it. Provider bodies were redacted
    when they were recorded (observability.redact): they are shown as stored."""
    if kind == "provider_call":
        parts = [f"{d.pop('provider', '?')} {d.pop('operation', '?')} [{d.pop('ms', '?')} ms]: "
                 f"{d.pop('outcome', '?')}"]  # fmt: skip
        for key in ("request", "response"):
            if key in d:
                parts.append(f"{key}: {_compact(d.pop(key))}")
    elif kind == "notification":
        parts = [f"{d.pop('provider', '?')} {d.pop('type', '?')} -> {d.pop('state', '?')} "
                 f"(event {d.pop('event_id', '?')})"]  # fmt: skip
    else:
        parts = []
    if d:
        parts.append(_compact(d))
    if actor and actor != "system":
        parts.append(f"by {actor}")
    return "\n".join(parts)


def _print_callbacks(rows: list[dict[str, Any]], source: str) -> None:
    if not rows:
        console.print(f"no status callbacks (source {source!r} has no endpoint)", highlight=False)
        return
    table = Table("event id", "order status", "delivery", "attempts", "last code", "last error",
                  "delivered", title=f"status callbacks to {source}")  # fmt: skip
    for c in rows:
        table.add_row(
            c["event_id"], c["order_status"], c["status"], str(c["attempts"]),
            str(c["last_status_code"] or ""), Text(c["last_error"] or ""),
            _clock(c["delivered_at"]) if c["delivered_at"] else "",
        )  # fmt: skip
    console.print(table)


AGE_RE = r"^(\d+)([smhd])$"


def _parse_age(text: str) -> int:
    """``90s``, ``15m``, ``2h``, ``3d`` -> seconds (a CLI input: one-line error when wrong)."""
    import re

    match = re.match(AGE_RE, text)
    if not match:
        raise fail(f"older-than: {text!r} is not an age like 90s, 15m, 2h or 3d")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


@orders_app.command("list")
@command
def orders_list(
    status: str | None = typer.Option(None, help="Only this status"),
    provider: str | None = typer.Option(None, help="Only this payment provider"),
    older_than: str | None = typer.Option(None, help="Only orders older than this, e.g. 2h"),
    limit: int = typer.Option(50, min=1, max=10_000),
) -> None:
    """The newest orders, filtered by status, payment provider and age."""
    from datetime import timedelta

    from sqlalchemy import select

    from adapters.registry import PAYMENT_PROVIDERS
    from domain.orders import OrderStatus
    from models import Order
    from services.unit_of_work import unit_of_work

    if status is not None and status not in OrderStatus.__members__:
        raise fail(f"status: unknown status {status!r}; one of {', '.join(OrderStatus)}")
    if provider is not None and provider not in PAYMENT_PROVIDERS:
        raise fail(
            f"provider: unknown provider {provider!r}; one of {', '.join(PAYMENT_PROVIDERS)}"
        )
    stmt = select(Order).order_by(Order.created_at.desc()).limit(limit)
    if status:
        stmt = stmt.where(Order.status == status)
    if provider:
        stmt = stmt.where(Order.payment_provider == provider)
    if older_than:
        stmt = stmt.where(
            Order.created_at < datetime.now(UTC) - timedelta(seconds=_parse_age(older_than))
        )
    table = Table("id", "source", "external id", "status", "reason", "provider", "total", "created")
    with unit_of_work() as session:
        for o in session.scalars(stmt):
            table.add_row(
                o.id, o.source, o.external_id, o.status, o.reason or "", o.payment_provider,
                f"{o.total_amount} {o.currency}", o.created_at.isoformat(timespec="seconds"),
            )  # fmt: skip
    console.print(table)


@orders_app.command("cancel")
@command
def orders_cancel(
    order_id: str,
    reason: str = typer.Option("cancelled by operator", help="Recorded on the timeline"),
) -> None:
    """Cancel an order before it ships: stock released, payment closed or refunded."""
    from services import payments
    from services.unit_of_work import unit_of_work
    from workers.publish import enqueue_followups

    with unit_of_work() as session:
        followups = payments.cancel_order(
            session, order_id, now=datetime.now(UTC), actor="cli", reason=reason
        )
    enqueue_followups(followups)
    console.print(
        f"cancelled {order_id}" + (" (closing/refunding the payment)" if followups else "")
    )


@payments_app.command("refund")
@command
def payments_refund(
    order_id: str,
    refund_no: str = typer.Option(..., help="Your refund number; the same number refunds once"),
    amount: int | None = typer.Option(None, min=1, help="Minor units; default: all remaining"),
    reason: str = typer.Option("refund by operator"),
) -> None:
    """Refund part or all of an order's payment (idempotent by refund number)."""
    from services import payments
    from services.unit_of_work import unit_of_work
    from workers.publish import enqueue_followups

    with unit_of_work() as session:
        followup = payments.refund_for_order(
            session, order_id, amount=amount, refund_no=refund_no, reason=reason, actor="cli",
            now=datetime.now(UTC),
        )  # fmt: skip
    enqueue_followups([followup] if followup else [])
    console.print(f"refund {refund_no} for {order_id} requested")


@payments_app.command("reconcile")
@command
def payments_reconcile(
    sample: int = typer.Option(50, min=0, help="Final payments to re-check as well"),
) -> None:
    """Compare payments with the providers; fix what is safe, list what is not."""
    from tasks.payments import run_reconcile

    report = run_reconcile(sample)
    table = Table("order", "provider", "out_trade_no", "ours", "provider says", "action")
    for f in report.findings:
        table.add_row(f.order_id, f.provider, f.out_trade_no, f.ours, f.theirs, f.action)
    if report.findings:
        console.print(table)
    console.print(
        f"checked {report.checked}, fixed {len(report.fixed)}, unresolved {len(report.unresolved)}"
    )
    if report.unresolved:
        raise typer.Exit(1)


@shipments_app.command("register")
@command
def shipments_register(
    order_id: str,
    carrier: str = typer.Option(..., help="Kuaidi100 carrier code, e.g. yuantong"),
    waybill: str = typer.Option(..., help="The parcel's waybill number"),
) -> None:
    """Register the waybill the warehouse printed for a PAID order: the order ships."""
    from services import shipping
    from services.unit_of_work import unit_of_work
    from workers.publish import enqueue_followups

    with unit_of_work() as session:
        followups = shipping.register_waybill(
            session, order_id, carrier, waybill, now=datetime.now(UTC), actor="cli",
            first_poll_s=get_settings().tracking_first_poll_s,
        )  # fmt: skip
    enqueue_followups(followups)
    console.print(f"order {order_id} shipped as {carrier} {waybill}")


@dlq_app.command("list")
@command
def dlq_list(limit: int = typer.Option(100, min=1)) -> None:
    """Open dead letters."""
    from services import dead_letters
    from services.unit_of_work import unit_of_work

    table = Table("id", "task", "order", "error", "attempts", "at")
    with unit_of_work() as session:
        for dl in dead_letters.list_open(session, limit):
            table.add_row(
                str(dl.id), dl.task_name, dl.order_id or "",
                f"{dl.error_class.rsplit('.', 1)[-1]}: {dl.error_message[:80]}",
                str(dl.attempts), dl.created_at.isoformat(timespec="seconds"),
            )  # fmt: skip
    console.print(table)


@dlq_app.command("show")
@command
def dlq_show(dead_letter_id: int) -> None:
    """One dead letter: task, arguments, error, attempts, status."""
    from models import DeadLetter
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        dl = session.get(DeadLetter, dead_letter_id)
        if dl is None:
            raise fail(f"id: no dead letter {dead_letter_id}")
        print_json(
            {
                "id": dl.id, "task": dl.task_name, "task_id": dl.task_id, "queue": dl.queue,
                "order_id": dl.order_id, "args": dl.args, "kwargs": dl.kwargs,
                "error_class": dl.error_class, "error": dl.error_message,
                "attempts": dl.attempts, "status": dl.status, "created_at": dl.created_at,
                "resolved_at": dl.resolved_at,
            }
        )  # fmt: skip


@dlq_app.command("replay")
@command
def dlq_replay(dead_letter_id: int) -> None:
    """Run a dead-lettered task again."""
    from services import dead_letters
    from services.unit_of_work import unit_of_work
    from workers.publish import enqueue_replay

    with unit_of_work() as session:
        replay = dead_letters.replay(session, dead_letter_id, now=datetime.now(UTC), actor="cli")
    enqueue_replay(replay)
    console.print(f"replayed dead letter {dead_letter_id} ({replay.task_name})")


@dlq_app.command("discard")
@command
def dlq_discard(dead_letter_id: int) -> None:
    """Mark a dead letter as handled without running it."""
    from services import dead_letters
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        dead_letters.discard(session, dead_letter_id, now=datetime.now(UTC), actor="cli")
    console.print(f"discarded dead letter {dead_letter_id}")


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
