"""``orderflow orders``: show an order's whole story, list orders, cancel one.

``show`` and ``cancel`` (and ``payments refund``, ``shipments register``) take whatever the
operator has at hand: the order id, a unique prefix of it, the upstream's external id or a
waybill number (services.queries.match_orders).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cli.common import Column, command, console, fail, json_option, print_json, print_listing, when
from domain.money import money_json

#: Every command that takes an order takes what ``orders show`` takes.
ORDER_QUERY_HELP = "Order id, a unique prefix of it (4+ characters), external id or waybill"

orders_app = typer.Typer(no_args_is_help=True, help="Inspect orders")


@orders_app.command("show")
@command
def orders_show(
    order: str = typer.Argument(..., help=ORDER_QUERY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the whole view as JSON (scripts)"),
) -> None:
    """An order's timeline: transitions, task attempts (worker, retries), provider calls with
    redacted bodies, notifications, and the status callbacks sent for it."""
    from services.queries import order_timeline, resolve_order
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        view = order_timeline(session, resolve_order(session, order))
    view["total"] = money_json(view["total_amount"], view["currency"])
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
             f"{view['total']['display']} via {view['payment_provider']}   "
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
    _print_parcels(view["parcels"])
    _print_callbacks(view["callbacks"], view["source"])


def _print_parcels(parcels: list[dict[str, Any]]) -> None:
    """A row per parcel (one per warehouse; cancelled ones with why), its latest event last."""
    if not parcels:
        console.print("no parcels")
        return
    table = Table("parcel", "warehouse", "lines", "waybill", "status", "latest event",
                  title="parcels", show_lines=True)  # fmt: skip
    for p in parcels:
        lines = ", ".join(f"{ln['sku']} x{ln['quantity']}" for ln in p["lines"])
        waybill = f"{p['carrier']} {p['waybill']}" if p["waybill"] else "not booked"
        status = f"CANCELLED ({p['cancel_reason']})" if p["cancelled_at"] else p["status"]
        latest = p["events"][-1] if p["events"] else None
        event = f"{_clock(latest['at'])} {latest['description']}" if latest else ""
        table.add_row(str(p["id"]), p["warehouse"] or "", lines, Text(waybill), Text(status),
                      Text(event))  # fmt: skip
    console.print(table)


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


CALLBACK_COLUMNS = (
    Column("event id", "event_id", ident=True), Column("order status", "order_status"),
    Column("parcel", lambda c: c["parcel"] or ""),
    Column("delivery", "status"), Column("attempts", "attempts"),
    Column("last code", "last_status_code"),
    Column("last error", lambda c: Text(c["last_error"] or "")),
    Column("delivered", lambda c: _clock(c["delivered_at"]) if c["delivered_at"] else ""),
)  # fmt: skip


def _print_callbacks(rows: list[dict[str, Any]], source: str) -> None:
    empty = f"no status callbacks (source {source!r} has no endpoint)"
    print_listing(rows, CALLBACK_COLUMNS, as_json=False, empty=empty,
                  title=f"status callbacks to {source}")  # fmt: skip


AGE_RE = r"^(\d+)([smhd])$"


def _parse_age(text: str) -> int:
    """``90s``, ``15m``, ``2h``, ``3d`` -> seconds (a CLI input: one-line error when wrong)."""
    import re

    match = re.match(AGE_RE, text)
    if not match:
        raise fail(f"older-than: {text!r} is not an age like 90s, 15m, 2h or 3d")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


ORDER_COLUMNS = (
    Column("id", "id", ident=True), Column("source", "source"),
    Column("external id", "external_id", ident=True), Column("status", "status"),
    Column("reason", "reason"), Column("provider", "payment_provider"),
    Column("total", lambda o: str(o["total"]["display"])), Column("created", "created_at"),
)  # fmt: skip


@orders_app.command("list")
@command
def orders_list(
    status: str | None = typer.Option(None, help="Only this status (any case), e.g. rejected"),
    provider: str | None = typer.Option(None, help="Only this payment provider"),
    older_than: str | None = typer.Option(None, help="Only orders older than this, e.g. 2h"),
    limit: int = typer.Option(50, min=1, max=10_000),
    as_json: bool = json_option(),
) -> None:
    """The newest orders, filtered by status, payment provider and age."""
    from datetime import timedelta

    from adapters.registry import PAYMENT_PROVIDERS
    from domain.orders import OrderStatus
    from services import queries
    from services.unit_of_work import unit_of_work

    status = status.strip().upper() if status is not None else None
    if status is not None and status not in OrderStatus.__members__:
        raise fail(f"status: unknown status {status!r}; one of {', '.join(OrderStatus)}")
    if provider is not None and provider not in PAYMENT_PROVIDERS:
        raise fail(
            f"provider: unknown provider {provider!r}; one of {', '.join(PAYMENT_PROVIDERS)}"
        )
    before = None
    if older_than:
        before = datetime.now(UTC) - timedelta(seconds=_parse_age(older_than))
    with unit_of_work() as session:
        found = queries.list_orders(
            session, status=status, provider=provider, created_before=before, limit=limit
        )
        rows = [
            {"id": o.id, "source": o.source, "external_id": o.external_id, "status": o.status,
             "reason": o.reason, "payment_provider": o.payment_provider,
             "total": money_json(o.total_amount, o.currency), "created_at": when(o.created_at)}
            for o in found
        ]  # fmt: skip
    filtered = status or provider or older_than
    empty = "no orders match these filters" if filtered else "no orders"
    print_listing(rows, ORDER_COLUMNS, as_json=as_json, empty=empty)


@orders_app.command("cancel")
@command
def orders_cancel(
    order: str = typer.Argument(..., help=ORDER_QUERY_HELP),
    reason: str = typer.Option("cancelled by operator", help="Recorded on the timeline"),
) -> None:
    """Cancel an order before it ships: stock released, payment closed or refunded."""
    from services import payments
    from services.order_state import lock_order
    from services.queries import resolve_order
    from services.unit_of_work import unit_of_work
    from workers.publish import enqueue_followups

    with unit_of_work() as session:
        order_id = resolve_order(session, order)
        followups = payments.cancel_order(
            session, order_id, now=datetime.now(UTC), actor="cli", reason=reason
        )
        status = lock_order(session, order_id).status  # locked by the cancel already
    enqueue_followups(followups)
    if status != "CANCELLED":  # booked parcels: only what had not shipped was cancelled
        then = " (refunding its share)" if followups else ""
        console.print(f"cancelled what had not shipped of {order_id}{then}; it follows its "
                      f"booked parcels ({status})")  # fmt: skip
        return
    console.print(
        f"cancelled {order_id}" + (" (closing/refunding the payment)" if followups else "")
    )


@orders_app.command("confirm-receipt")
@command
def orders_confirm_receipt(order: str = typer.Argument(..., help=ORDER_QUERY_HELP)) -> None:
    """Confirm a delivered order's receipt for the buyer (e.g. on a phone call): it moves to
    RECEIPT_CONFIRMED and its after-sale window starts. Again: says where it stands."""
    from services.queries import resolve_order
    from services.receipt import confirm_receipt
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        order_id = resolve_order(session, order)
        status = confirm_receipt(session, order_id, actor="cli")
    console.print(f"{order_id} is {status}")
