"""``orderflow callbacks``: status-callback endpoints and the delivery log.

* ``register SOURCE URL [--secret S | --secret-stdin]`` creates or replaces the source's
  endpoint. Without a secret one is generated and printed once (it is stored, encrypted under
  ``KEY_ENCRYPTION_KEY``, which must be set, but never shown again: re-register to rotate it).
* ``list`` endpoints (no secrets), ``deliveries [--order ID] [--status S] [--source S]``
  (both with ``--json``), ``resend EVENT_ID | --order ID`` (same event id again),
  ``resume SOURCE``.

Run standalone as ``python -m cli.callbacks ...``.
"""

from __future__ import annotations

import secrets
import sys
from datetime import UTC, datetime
from typing import Any

import typer
from pydantic import SecretStr
from rich.text import Text

from cli.common import Column, command, console, fail, json_option, print_listing, when

callbacks_app = typer.Typer(no_args_is_help=True, help="Status callbacks to upstream systems")


@callbacks_app.command("register")
@command
def register(
    source: str = typer.Argument(..., help="The orders' source, e.g. shop-a"),
    url: str = typer.Argument(..., help="http(s) URL the events are POSTed to"),
    secret: str | None = typer.Option(
        None, help="Shared HMAC secret (16+ chars); visible in shell history, prefer stdin"
    ),
    secret_stdin: bool = typer.Option(False, "--secret-stdin", help="Read the secret from stdin"),
) -> None:
    """Register (or replace) the callback endpoint of SOURCE."""
    from services import callbacks
    from services.secrets_at_rest import cipher_from_setting
    from services.unit_of_work import unit_of_work
    from settings import get_settings

    if secret is not None and secret_stdin:
        raise fail("secret: give --secret or --secret-stdin, not both")
    generated = secret is None and not secret_stdin
    value = sys.stdin.readline().strip() if secret_stdin else secret
    shared = SecretStr(value if value is not None else secrets.token_urlsafe(32))
    cipher = cipher_from_setting(get_settings().key_encryption_key)  # unset: refused, named
    with unit_of_work() as session:
        endpoint = callbacks.register_endpoint(session, source, url, shared, cipher=cipher)
        endpoint_id, paused = endpoint.id, endpoint.paused_at is not None
    console.print(f"callback endpoint {endpoint_id} for {source}: {url}")
    if generated:
        # Printed this once only, plainly, so it can be piped into the receiver's config.
        console.print(f"secret (shown once): {shared.get_secret_value()}", soft_wrap=True)
    if paused:
        console.print(f"[yellow]endpoint is paused[/]: `orderflow callbacks resume {source}`")


ENDPOINT_COLUMNS = (
    Column("id", "id", ident=True), Column("source", "source"), Column("url", "url"),
    Column("active", lambda e: "yes" if e["active"] else "no"), Column("paused", "paused_at"),
    Column("failures", "consecutive_failures"), Column("pending", "pending"),
)  # fmt: skip


@callbacks_app.command("list")
@command
def list_endpoints(as_json: bool = json_option()) -> None:
    """Registered endpoints with their health (never their secrets)."""
    from services import callbacks
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        rows = [
            {"id": e.id, "source": e.source, "url": e.url, "active": e.active,
             "paused_at": when(e.paused_at), "consecutive_failures": e.consecutive_failures,
             "pending": e.pending}
            for e in callbacks.list_endpoints(session)
        ]  # fmt: skip
    print_listing(rows, ENDPOINT_COLUMNS, as_json=as_json, empty="no callback endpoints")


DELIVERY_COLUMNS = (
    Column("id", "id", ident=True), Column("event id", "event_id", ident=True),
    Column("source", "source"), Column("order", "order_id", ident=True),
    Column("order status", "order_status"), Column("parcel", lambda d: d["parcel"] or ""),
    Column("status", "status"), Column("attempts", "attempts"),
    Column("attempt log (time, code or error, duration)", lambda d: _attempt_log(d["log"])),
    Column("next attempt", "next_attempt_at"), Column("delivered", "delivered_at"),
)  # fmt: skip


@callbacks_app.command("deliveries")
@command
def deliveries(
    order: str | None = typer.Option(None, help="Only this order's events"),
    status: str | None = typer.Option(None, help="PENDING, DELIVERED, FAILED or PAUSED (any case)"),
    source: str | None = typer.Option(None, help="Only this source's endpoint"),
    limit: int = typer.Option(100, min=1, max=10_000),
    as_json: bool = json_option(),
) -> None:
    """The delivery log, newest first, with each delivery's attempts (the last five)."""
    from services import callbacks
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        found = callbacks.list_deliveries(
            session, order_id=order, status=status and status.strip().upper(), source=source,
            limit=limit,
        )  # fmt: skip
    rows = [
        {"id": d.id, "event_id": str(d.event_id), "source": d.source, "order_id": d.order_id,
         "order_status": d.order_status, "event_type": d.event_type, "parcel": d.parcel,
         "status": d.status, "attempts": d.attempts,
         "last_status_code": d.last_status_code, "last_error": d.last_error,
         "next_attempt_at": when(d.next_attempt_at), "created_at": when(d.created_at),
         "delivered_at": when(d.delivered_at),
         "log": [{"at": when(a.at), "ok": a.ok, "status_code": a.status_code, "error": a.error,
                  "duration_ms": a.duration_ms} for a in d.attempt_log]}
        for d in found
    ]  # fmt: skip
    print_listing(rows, DELIVERY_COLUMNS, as_json=as_json, empty="no deliveries",
                  show_lines=True)  # fmt: skip


def _attempt_log(attempts: list[dict[str, Any]], last: int = 5) -> Text:
    lines = [
        f"{datetime.fromisoformat(a['at']):%H:%M:%S} {a['status_code'] or '-'} "
        f"{'ok' if a['ok'] else a['error'] or 'failed'}"
        + (f" {a['duration_ms']} ms" if a["duration_ms"] is not None else "")
        for a in attempts[-last:]
    ]
    if len(attempts) > last:
        lines.insert(0, f"(+{len(attempts) - last} earlier)")
    return Text("\n".join(lines))


@callbacks_app.command("resend")
@command
def resend(
    event_id: str | None = typer.Argument(None, help="The event to send again"),
    order: str | None = typer.Option(None, help="Send every event of this order again"),
) -> None:
    """Queue an event (or all of an order's events) again, with the same event id."""
    from services import callbacks
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        count = callbacks.resend(session, now=datetime.now(UTC), event_id=event_id, order_id=order)
    console.print(f"queued {count} event(s) again")


@callbacks_app.command("resume")
@command
def resume(source: str = typer.Argument(..., help="The source whose endpoint to resume")) -> None:
    """Resume a paused endpoint: its held deliveries go out on the next beat tick."""
    from services import callbacks
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        count = callbacks.resume(session, source, now=datetime.now(UTC))
    console.print(f"resumed {source}: {count} held deliveries due now")


if __name__ == "__main__":
    callbacks_app()
