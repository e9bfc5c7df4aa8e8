"""``orderflow returns``: the after-sale queue (issue 22). An operator lists the returns waiting
for a decision, approves or rejects them, and records a warehouse's receipt when it has no
system of its own calling the API. The rules are :mod:`services.returns`' and
:mod:`services.return_receipt`'s; every error is one line naming the field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer

from cli.common import Column, command, console, fail, json_option, print_json, print_listing
from domain.aftersale import ReturnStatus
from domain.money import format_money

returns_app = typer.Typer(
    no_args_is_help=True, help="Returns: list, show, approve, reject, receive"
)

COLUMNS = [
    Column("id", lambda r: str(r["id"]), ident=True),
    Column("order", "order_id", ident=True),
    Column("kind", "kind"),
    Column("status", "status"),
    Column("lines", lambda r: ", ".join(f"{x['sku']} x{x['quantity']}" for x in r["lines"])),
    Column(
        "refund",
        lambda r: (
            "" if r["refund_amount"] is None else format_money(r["refund_amount"], r["currency"])
        ),
    ),
    Column("reason", "reason"),
]


@returns_app.command("list")
@command
def returns_list(
    status: str | None = typer.Option(None, help="Only this status, e.g. REQUESTED (any case)"),
    limit: int = typer.Option(50, min=1, max=1000, help="At most this many, newest first"),
    as_json: bool = json_option(),
) -> None:
    """The newest returns; ``--status requested`` is the queue waiting for an operator."""
    from services.return_views import list_returns, return_view
    from services.unit_of_work import unit_of_work

    wanted = _status(status)
    with unit_of_work() as session:
        rows = [return_view(r) for r in list_returns(session, status=wanted, limit=limit)]
    print_listing(rows, COLUMNS, as_json=as_json,
                  empty="no returns" + (f" {wanted}" if wanted else ""))  # fmt: skip


@returns_app.command("show")
@command
def returns_show(return_id: int = typer.Argument(...), as_json: bool = json_option()) -> None:
    """One return with its lines, what the warehouse found and what was refunded."""
    from services.return_views import get_return
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        view = get_return(session, return_id)
    if as_json:
        print_json(view)
        return
    print_listing([view], COLUMNS, as_json=False, empty="")
    lines = [Column("sku", "sku"), Column("quantity", "quantity"), Column("restocked", "restocked"),
             Column("damaged", "damaged"), Column("lost", "lost"),
             Column("refund", lambda x: "" if x["refund_amount"] is None
                    else format_money(x["refund_amount"], view["currency"]))]  # fmt: skip
    print_listing(view["lines"], lines, as_json=False, empty="")
    parcel = view["parcel"]
    if parcel:
        console.print(f"parcel back: {parcel['carrier']} {parcel['waybill']}")


@returns_app.command("approve")
@command
def returns_approve(
    return_id: int = typer.Argument(...),
    note: str = typer.Option("approved by operator", help="Recorded on the timeline"),
) -> None:
    """Approve a REQUESTED return: a refund-only one is refunded now, any other waits for its
    parcel (``RETURN_SHIP_BACK_S``)."""
    _decide(return_id, approve=True, note=note)


@returns_app.command("reject")
@command
def returns_reject(
    return_id: int = typer.Argument(...),
    note: str = typer.Option(..., help="Why: recorded on the timeline and shown to the shop"),
) -> None:
    """Reject a REQUESTED return; its units may be asked for again."""
    _decide(return_id, approve=False, note=note)


@returns_app.command("receive")
@command
def returns_receive(
    return_id: int = typer.Argument(...),
    line: list[str] = typer.Option(..., help="SKU=RESTOCK,DAMAGED,LOST per line, e.g. B=1,0,0"),
    warehouse: str | None = typer.Option(
        None, help="Where restocked units go (default: where each line shipped from)"
    ),
) -> None:
    """Record the warehouse's receipt of a return's parcel and settle it (refund, reship an
    exchange, or close)."""
    from services import return_receipt
    from services.unit_of_work import unit_of_work
    from settings import get_settings
    from workers.ports import allocation_policy
    from workers.publish import enqueue_followups

    found = [_found(i, text) for i, text in enumerate(line)]
    with unit_of_work() as session:
        status, followups = return_receipt.receive(
            session, return_id, found, warehouse=warehouse,
            default_warehouse=get_settings().default_warehouse, actor="cli",
            now=datetime.now(UTC), allocation=allocation_policy(),
            redrive_s=get_settings().shipping_redrive_s,
        )  # fmt: skip
    enqueue_followups(followups)
    console.print(f"return {return_id} is {status}")


def _decide(return_id: int, *, approve: bool, note: str) -> None:
    from services import returns
    from services.unit_of_work import unit_of_work
    from workers.ports import return_policy
    from workers.publish import enqueue_followups

    with unit_of_work() as session:
        out = returns.decide(session, return_id, approve=approve, actor="cli", note=note,
                             policy=return_policy(), now=datetime.now(UTC))  # fmt: skip
    enqueue_followups(out.followups)
    console.print(f"return {return_id} is {out.status}")


def _status(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return ReturnStatus(value.upper()).value
    except ValueError:
        names = ", ".join(s.value for s in ReturnStatus)
        raise fail(f"--status: {value!r} is not one of {names}") from None


def _found(i: int, text: str) -> tuple[str, tuple[int, int, int]]:
    """``SKU=R,D,L`` as (sku, (restock, damaged, lost)); a bad one fails naming ``--line``."""
    sku, _, counts = text.partition("=")
    parts: list[Any] = counts.split(",")
    if not sku or len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise fail(f"--line {i + 1}: {text!r} is not SKU=RESTOCK,DAMAGED,LOST (e.g. B=1,0,0)")
    restock, damaged, lost = (int(p) for p in parts)
    return sku, (restock, damaged, lost)
