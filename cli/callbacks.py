"""``orderflow callbacks``: status-callback endpoints and the delivery log.

* ``register SOURCE URL [--secret S | --secret-stdin]`` creates or replaces the source's
  endpoint. Without a secret one is generated and printed once (it is stored, encrypted under
  ``KEY_ENCRYPTION_KEY``, which must be set, but never shown again: re-register to rotate it).
* ``list`` endpoints (no secrets), ``deliveries [--order ID] [--status S] [--source S]``,
  ``resend EVENT_ID | --order ID`` (same event id again), ``resume SOURCE``.

Run standalone as ``python -m cli.callbacks ...``.
"""

from __future__ import annotations

import secrets
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer
from pydantic import SecretStr
from rich.table import Table
from rich.text import Text

from cli.common import command, console, fail

if TYPE_CHECKING:
    from services.callbacks import AttemptView

callbacks_app = typer.Typer(no_args_is_help=True, help="Status callbacks to upstream systems")


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


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


@callbacks_app.command("list")
@command
def list_endpoints() -> None:
    """Registered endpoints with their health (never their secrets)."""
    from services import callbacks
    from services.unit_of_work import unit_of_work

    table = Table("id", "source", "url", "active", "paused", "failures", "pending")
    with unit_of_work() as session:
        for e in callbacks.list_endpoints(session):
            table.add_row(
                str(e.id), e.source, e.url, "yes" if e.active else "no", _when(e.paused_at),
                str(e.consecutive_failures), str(e.pending),
            )  # fmt: skip
    console.print(table)


@callbacks_app.command("deliveries")
@command
def deliveries(
    order: str | None = typer.Option(None, help="Only this order's events"),
    status: str | None = typer.Option(None, help="PENDING, DELIVERED, FAILED or PAUSED"),
    source: str | None = typer.Option(None, help="Only this source's endpoint"),
    limit: int = typer.Option(100, min=1, max=10_000),
) -> None:
    """The delivery log, newest first, with each delivery's attempts (the last five)."""
    from services import callbacks
    from services.unit_of_work import unit_of_work

    table = Table("id", "event id", "source", "order", "order status", "status", "attempts",
                  "attempt log (time, code or error, duration)", "next attempt", "delivered",
                  show_lines=True)  # fmt: skip
    with unit_of_work() as session:
        rows = callbacks.list_deliveries(
            session, order_id=order, status=status, source=source, limit=limit
        )
    for d in rows:
        table.add_row(
            str(d.id), d.event_id, d.source, d.order_id, d.order_status, d.status,
            str(d.attempts), Text(_attempt_log(d.attempt_log)),
            _when(d.next_attempt_at), _when(d.delivered_at),
        )  # fmt: skip
    console.print(table)


def _attempt_log(attempts: tuple[AttemptView, ...], last: int = 5) -> str:
    lines = [
        f"{a.at:%H:%M:%S} {a.status_code or '-'} "
        f"{'ok' if a.ok else a.error or 'failed'}"
        + (f" {a.duration_ms} ms" if a.duration_ms is not None else "")
        for a in attempts[-last:]
    ]
    if len(attempts) > last:
        lines.insert(0, f"(+{len(attempts) - last} earlier)")
    return "\n".join(lines)


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
