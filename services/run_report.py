"""Read models for a run's report (``orderflow demo`` and the benchmarks): outcomes by status,
captured payments by provider, how fast orders entered a status, who still has to pay, and
parcels per warehouse."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from domain.orders import OrderStatus
from domain.parcels import UNKNOWN_WAREHOUSE
from domain.payments import CAPTURED
from domain.tracking import ShipmentStatus
from models import Order, OrderEvent, Payment, Return, ReturnLine, Shipment
from models.logistics import OUTBOUND_ONLY


def outcome_counts(session: Session) -> list[tuple[str, str | None, str, int]]:
    """``(status, reason, payment provider, orders)``, sorted."""
    rows = session.execute(
        select(Order.status, Order.reason, Order.payment_provider, func.count())
        .group_by(Order.status, Order.reason, Order.payment_provider)
        .order_by(Order.status, Order.reason, Order.payment_provider)
    ).all()
    return [(status, reason, provider, n) for status, reason, provider, n in rows]


def captured_by_provider(session: Session) -> dict[str, int]:
    """Payments recorded as captured (paid, or refunded after), per provider."""
    rows = session.execute(
        select(Payment.provider, func.count())
        .where(Payment.status.in_([str(s) for s in CAPTURED]))
        .group_by(Payment.provider)
    ).all()
    return {provider: n for provider, n in rows}


def entered(session: Session, status: str) -> tuple[int, datetime | None, datetime | None]:
    """How many orders moved into ``status``, and the first and last such move."""
    n, first, last = session.execute(
        select(
            func.count(), func.min(OrderEvent.created_at), func.max(OrderEvent.created_at)
        ).where(OrderEvent.kind == "transition", OrderEvent.to_status == status)
    ).one()
    return int(n), first, last


def awaiting_payment(session: Session) -> list[tuple[str, str, str, str]]:
    """``(order id, external id, provider, out_trade_no)`` of every order awaiting payment."""
    rows = session.execute(
        select(Order.id, Order.external_id, Payment.provider, Payment.out_trade_no)
        .join(Payment, Payment.order_id == Order.id)
        .where(Order.status == OrderStatus.AWAITING_PAYMENT)
    ).all()
    return [(oid, ext, provider, trade) for oid, ext, provider, trade in rows]


def delivered(session: Session) -> list[tuple[str, str]]:
    """``(order id, external id)`` of every order delivered and not yet confirmed received."""
    rows = session.execute(
        select(Order.id, Order.external_id).where(Order.status == OrderStatus.DELIVERED)
    ).all()
    return [(oid, ext) for oid, ext in rows]


def receipts_by(session: Session) -> dict[str, int]:
    """How many orders reached RECEIPT_CONFIRMED: ``buyer`` (confirmed through the API or the
    CLI) and ``clock`` (the sweep, ``AUTO_RECEIVE_S`` after delivery)."""
    by_clock = OrderEvent.actor == "sweeper"
    row = session.execute(
        select(func.count().filter(~by_clock), func.count().filter(by_clock)).where(
            OrderEvent.kind == "transition",
            OrderEvent.to_status == OrderStatus.RECEIPT_CONFIRMED,
        )
    ).one()
    return {"buyer": row[0], "clock": row[1]}


def awaiting_parcel(session: Session) -> list[tuple[int, list[str]]]:
    """``(return id, its SKUs)`` of every return waiting for its parcel."""
    rows = session.execute(
        select(Return.id, ReturnLine.sku)
        .join(ReturnLine, ReturnLine.return_id == Return.id)
        .where(Return.status == "AWAITING_PARCEL")
        .order_by(Return.id)
    ).all()
    out: dict[int, list[str]] = {}
    for return_id, sku in rows:
        out.setdefault(return_id, []).append(sku)
    return list(out.items())


def returns_summary(session: Session) -> list[tuple[str, str, int, int]]:
    """``(kind, status, returns, refunded minor units)`` per kind and status of return."""
    rows = session.execute(
        select(
            Return.kind,
            Return.status,
            func.count(),
            func.coalesce(func.sum(Return.refund_amount), 0),
        )
        .group_by(Return.kind, Return.status)
        .order_by(Return.kind, Return.status)
    ).all()
    return [(kind, status, int(n), int(total or 0)) for kind, status, n, total in rows]


def parcels_by_warehouse(session: Session) -> list[tuple[str, int, int]]:
    """``(warehouse, parcels booked, parcels delivered)`` per warehouse, by name. Booked: the
    parcel got a waybill (a parcel refused or cancelled before booking never does); a legacy
    parcel without a warehouse counts under ``?``."""
    booked = Shipment.waybill.is_not(None)
    rows = session.execute(
        select(
            Shipment.warehouse,
            func.count().filter(booked),
            func.count().filter(booked, Shipment.status == ShipmentStatus.DELIVERED),
        )
        .where(OUTBOUND_ONLY)
        .group_by(Shipment.warehouse)
        .order_by(Shipment.warehouse)
    ).all()
    return [(w or UNKNOWN_WAREHOUSE, int(b), int(d)) for w, b, d in rows if b]


def orders_by_parcels(session: Session, status: str) -> dict[int, int]:
    """How many orders now in ``status`` were shipped as N booked parcels, by N."""
    per_order = (
        select(func.count().label("parcels"))
        .select_from(Shipment)
        .join(Order, Order.id == Shipment.order_id)
        .where(Order.status == status, Shipment.waybill.is_not(None), OUTBOUND_ONLY)
        .group_by(Shipment.order_id)
        .subquery()
    )
    rows = session.execute(
        select(per_order.c.parcels, func.count()).group_by(per_order.c.parcels)
    ).all()
    return {int(n): int(orders) for n, orders in sorted(rows)}
