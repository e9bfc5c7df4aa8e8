"""``orderflow payments`` (refund, reconcile) and ``orderflow shipments`` (register a waybill)."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from cli.common import Column, command, console, print_listing
from cli.orders import ORDER_QUERY_HELP
from settings import get_settings

payments_app = typer.Typer(no_args_is_help=True, help="Payments, refunds and reconciliation")
shipments_app = typer.Typer(no_args_is_help=True, help="Shipments and tracking")


@payments_app.command("refund")
@command
def payments_refund(
    order: str = typer.Argument(..., help=ORDER_QUERY_HELP),
    refund_no: str = typer.Option(..., help="Your refund number; the same number refunds once"),
    amount: int | None = typer.Option(None, min=1, help="Minor units; default: all remaining"),
    reason: str = typer.Option("refund by operator"),
) -> None:
    """Refund part or all of an order's payment (idempotent by refund number)."""
    from services import payments
    from services.queries import resolve_order
    from services.unit_of_work import unit_of_work
    from workers.publish import enqueue_followups

    with unit_of_work() as session:
        order_id = resolve_order(session, order)
        followup = payments.refund_for_order(
            session, order_id, amount=amount, refund_no=refund_no, reason=reason, actor="cli",
            now=datetime.now(UTC),
        )  # fmt: skip
    enqueue_followups([followup] if followup else [])
    console.print(f"refund {refund_no} for {order_id} requested")


@payments_app.command("acknowledge")
@command
def payments_acknowledge(
    order: str = typer.Argument(..., help=ORDER_QUERY_HELP),
    note: str = typer.Option(..., help="What was done; recorded on the timeline"),
) -> None:
    """Clear a payment flagged on the Attention page (a wrong amount paid on an order that
    was over, refunded in full) once someone has looked at it."""
    from services import payments
    from services.queries import resolve_order
    from services.unit_of_work import unit_of_work

    with unit_of_work() as session:
        order_id = resolve_order(session, order)
        flagged = payments.acknowledge(session, order_id, actor="cli", note=note)
    console.print(f"acknowledged {order_id}: {flagged}")


FINDING_COLUMNS = (
    Column("order", "order_id", ident=True), Column("provider", "provider"),
    Column("out_trade_no", "out_trade_no", ident=True), Column("ours", "ours"),
    Column("provider says", "theirs"), Column("action", "action"),
)  # fmt: skip


@payments_app.command("reconcile")
@command
def payments_reconcile(
    sample: int = typer.Option(50, min=0, help="Final payments to re-check as well"),
) -> None:
    """Compare payments with the providers; fix what is safe, list what is not."""
    from adapters.registry import payment_provider
    from services import reconcile
    from workers.ports import ports
    from workers.publish import enqueue_followups

    report = reconcile.reconcile(payment_provider, ports(), sample=sample)
    enqueue_followups(report.followups)
    rows = [
        {"order_id": f.order_id, "provider": f.provider, "out_trade_no": f.out_trade_no,
         "ours": f.ours, "theirs": f.theirs, "action": f.action}
        for f in report.findings
    ]  # fmt: skip
    if rows:
        print_listing(rows, FINDING_COLUMNS, as_json=False, empty="")
    console.print(
        f"checked {report.checked}, fixed {len(report.fixed)}, unresolved {len(report.unresolved)}"
    )
    if report.unresolved:
        raise typer.Exit(1)


@shipments_app.command("register")
@command
def shipments_register(
    order: str = typer.Argument(..., help=ORDER_QUERY_HELP),
    carrier: str = typer.Option(..., help="Kuaidi100 carrier code, e.g. yuantong"),
    waybill: str = typer.Option(..., help="The parcel's waybill number"),
    warehouse: str | None = typer.Option(
        None, help="The warehouse whose parcel it is (needed when several are unshipped)"
    ),
) -> None:
    """Register the waybill a warehouse printed for a PAID order's parcel: that parcel ships
    (the order is SHIPPED once every parcel is)."""
    from models import Order
    from services import shipping
    from services.queries import resolve_order
    from services.unit_of_work import unit_of_work
    from workers.publish import enqueue_followups

    with unit_of_work() as session:
        order_id = resolve_order(session, order)
        followups = shipping.register_waybill(
            session, order_id, carrier, waybill, now=datetime.now(UTC), actor="cli",
            first_poll_s=get_settings().tracking_first_poll_s, warehouse=warehouse,
        )  # fmt: skip
        status = session.get_one(Order, order_id).status
    enqueue_followups(followups)
    console.print(f"order {order_id}: parcel shipped as {carrier} {waybill}; order {status}")
