"""``orderflow operators``: one console account per person (see :mod:`services.operators`).

* ``create NAME --role viewer|operator|admin``: the password is asked twice without echo, or
  read from stdin with ``--password-stdin`` (scripts); it must meet the users' password policy.
* ``list [--json]``: names, roles and states (never a hash).
* ``disable NAME``: the account can no longer log in and its console sessions end now.

Each change is an audit row (``/console/audit``) with actor ``cli:<OS user>``.
"""

from __future__ import annotations

import getpass
import sys
from datetime import UTC, datetime

import typer

from cli.common import Column, command, console, fail, json_option, print_listing, when

operators_app = typer.Typer(no_args_is_help=True, help="Console operator accounts")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return "cli:unknown"


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = typer.prompt("password", hide_input=True)
    if typer.prompt("again", hide_input=True) != first:
        raise fail("the two passwords differ")
    return str(first)


@operators_app.command("create")
@command
def create(
    name: str = typer.Argument(..., help="The person's login name (a-z 0-9 . _ -)"),
    role: str = typer.Option(..., help="viewer, operator or admin"),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from stdin instead of asking"
    ),
) -> None:
    """Create a console account."""
    from domain.operators import Role
    from services import operators
    from services.unit_of_work import unit_of_work

    parsed = Role.parse(role)
    password = _password(password_stdin)
    with unit_of_work() as session:
        made = operators.create(session, name, password, parsed)
        operators.audit(session, actor=_actor(), action="operator_create", target=made.actor,
                        detail={"role": made.role.label})  # fmt: skip
    console.print(f"operator {made.name} created ({made.role.label})", markup=False,
                  highlight=False)  # fmt: skip


def _minute(iso: str | None) -> str:
    return iso[:16].replace("T", " ") if iso else ""


OPERATOR_COLUMNS = (
    Column("name", "name", ident=True), Column("role", "role"),
    Column("created", lambda o: _minute(o["created_at"])),
    Column("state", lambda o: f"{o['state']} {_minute(o['disabled_at'])}".strip()),
)  # fmt: skip


@operators_app.command("list")
@command
def list_operators(as_json: bool = json_option()) -> None:
    """Accounts with their role and state."""
    from services import operators
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        rows = [
            {"name": op.name, "role": op.role.label,
             "state": "disabled" if op.disabled_at else "active",
             "created_at": when(op.created_at), "disabled_at": when(op.disabled_at)}
            for op in operators.list_all(session)
        ]  # fmt: skip
    empty = "no operators yet: `orderflow operators create NAME --role admin`"
    print_listing(rows, OPERATOR_COLUMNS, as_json=as_json, empty=empty)


@operators_app.command("disable")
@command
def disable(name: str = typer.Argument(..., help="The account to disable")) -> None:
    """Disable an account and end its console sessions."""
    from api.catalog import admin_api_key_setting
    from api.console_auth import session_store
    from services import operators
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        gone = operators.disable(session, name, now=datetime.now(UTC))
        operators.audit(session, actor=_actor(), action="operator_disable", target=gone.actor)
    ended = session_store(admin_api_key_setting()).revoke_operator(gone.id)
    console.print(f"operator {gone.name} disabled; {ended} console session(s) ended",
                  markup=False, highlight=False)  # fmt: skip
