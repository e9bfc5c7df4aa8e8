"""Read queries for the ops console (``api/console.py``), written for a large database: counts
by status with one GROUP BY over an index, everything else an indexed lookup with a LIMIT.

Nothing here writes except :func:`record_action` (the console's own timeline row).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from adapters.circuit import breaker_for
from domain.orders import FINAL_STATUSES, OrderStatus
from models import DeadLetter, Order, OrderEvent, Shipment, Stock, StockMovement
from services import dead_letters, stock_admin, timeline, tracking
from services.queries import order_view, status_counts

#: Statuses in pipeline order (the funnel's rows).
PIPELINE: tuple[OrderStatus, ...] = tuple(OrderStatus)
#: Stages an order waits in (the "oldest waiting" table).
WAITING: tuple[OrderStatus, ...] = tuple(s for s in OrderStatus if s not in FINAL_STATUSES)


# --- pipeline --------------------------------------------------------------------------------


def funnel(session: Session) -> list[tuple[str, int]]:
    """Orders per status, every status listed (zero included), in pipeline order."""
    counts = status_counts(session)
    return [(s.value, counts.get(s.value, 0)) for s in PIPELINE]


def throughput(session: Session, *, now: datetime, window_s: float = 3600) -> list[dict[str, Any]]:
    """Transitions per (from, to) over the last ``window_s``, busiest first (partial index
    ``ix_order_events_transition_created_at``)."""
    n = func.count().label("n")
    rows = session.execute(
        select(OrderEvent.from_status, OrderEvent.to_status, n)
        .where(
            OrderEvent.kind == "transition",
            OrderEvent.created_at >= now - timedelta(seconds=window_s),
        )
        .group_by(OrderEvent.from_status, OrderEvent.to_status)
        .order_by(n.desc(), OrderEvent.to_status)
    )
    return [{"from": f or "", "to": t or "", "count": int(c)} for f, t, c in rows]


def oldest_waiting(session: Session, *, now: datetime) -> list[dict[str, Any]]:
    """Per waiting stage, the order with the earliest stage deadline (the one that has waited
    longest), read from ``ix_orders_status_deadline`` with LIMIT 1 per stage."""
    result = []
    for status in WAITING:
        row = session.execute(
            select(Order.id, Order.stage_deadline, Order.updated_at)
            .where(Order.status == status.value)
            .order_by(Order.stage_deadline.asc().nulls_last())
            .limit(1)
        ).first()
        if row is not None:
            deadline = row[1]
            result.append({
                "status": status.value, "order_id": row[0], "deadline": deadline,
                "since": row[2], "overdue": deadline is not None and deadline < now,
            })  # fmt: skip
    return result


# --- order -----------------------------------------------------------------------------------


def find_order(session: Session, query: str) -> str | None:
    """The order id for an order id, an external id or a waybill number (in that order)."""
    q = query.strip()
    if not q or len(q) > 128:
        return None
    if len(q) <= 36 and session.get(Order, q) is not None:
        return q
    by_external = session.scalar(select(Order.id).where(Order.external_id == q).limit(1))
    if by_external is not None:
        return by_external
    if len(q) > 64:
        return None
    return session.scalar(select(Shipment.order_id).where(Shipment.waybill == q).limit(1))


def order_page(session: Session, order_id: str) -> dict[str, Any]:
    """The order view (lines, whole timeline) plus its payment, shipment and dead letters."""
    from services.payments import payment_view
    from services.shipping import shipment_view

    view = order_view(session, order_id)
    view["payment"] = payment_view(session, order_id)
    view["shipment"] = shipment_view(session, order_id)
    view["dead_letters"] = [
        _dead_letter_row(dl)
        for dl in session.scalars(
            select(DeadLetter).where(DeadLetter.order_id == order_id).order_by(DeadLetter.id)
        )
    ]
    return view


# --- attention -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attention:
    orders: list[dict[str, Any]]
    orders_total: int
    dead_letters: list[dict[str, Any]]
    dead_letters_total: int
    stale: list[dict[str, Any]]


def attention(
    session: Session, *, now: datetime, stale_after_s: float, limit: int = 100
) -> Attention:
    """What needs a person: NEEDS_ATTENTION orders, open dead letters, stale tracking."""
    status = OrderStatus.NEEDS_ATTENTION.value
    rows = session.execute(
        select(Order.id, Order.reason, Order.updated_at, Order.payment_provider)
        .where(Order.status == status)
        .order_by(Order.updated_at)
        .limit(limit)
    )
    orders = [
        {"id": i, "reason": r or "", "since": u, "provider": p} for i, r, u, p in rows
    ]  # fmt: skip
    total = session.scalar(select(func.count()).where(Order.status == status)) or 0
    stale = tracking.stale_shipments(session, now=now, stale_after_s=stale_after_s, limit=limit)
    return Attention(
        orders=orders,
        orders_total=int(total),
        dead_letters=[_dead_letter_row(dl) for dl in dead_letters.list_open(session, limit)],
        dead_letters_total=dead_letters.count_open(session),
        stale=[{"shipment_id": s, "order_id": o, "last_event_at": at} for s, o, at in stale],
    )


def open_circuits(client: redis.Redis, providers: list[str]) -> list[dict[str, Any]]:
    """Providers whose circuit breaker is open now, with the seconds left of the cool-down."""
    result = []
    for name in providers:
        breaker = breaker_for(client, name)
        if not breaker.allow():
            result.append({"provider": name, "retry_after_s": breaker.retry_after_s()})
    return result


def _dead_letter_row(dl: DeadLetter) -> dict[str, Any]:
    return {
        "id": dl.id, "task": dl.task_name, "order_id": dl.order_id, "status": dl.status,
        "error": f"{dl.error_class.rsplit('.', 1)[-1]}: {dl.error_message[:200]}",
        "attempts": dl.attempts, "created_at": dl.created_at,
    }  # fmt: skip


# --- stock -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StockPage:
    rows: list[dict[str, Any]]
    total: int
    repairs: list[dict[str, Any]]  # proposals for the drifting rows of this page


def stock_page(
    session: Session, *, sku_prefix: str = "", offset: int = 0, limit: int = 100
) -> StockPage:
    """One page of stock counters (by SKU, warehouse) with the drift check for that page: the
    ledger is summed only for the page's keys (``ix_stock_movements_sku_warehouse``), and the
    repair proposals come from ``stock_admin.propose_repairs`` for the rows that drift."""
    where = [Stock.sku.startswith(sku_prefix, autoescape=True)] if sku_prefix else []
    counters = session.execute(
        select(Stock.sku, Stock.warehouse, Stock.on_hand, Stock.reserved)
        .where(*where)
        .order_by(Stock.sku, Stock.warehouse)
        .offset(offset)
        .limit(limit)
    ).all()
    total = session.scalar(select(func.count()).select_from(Stock).where(*where)) or 0
    keys = [(r[0], r[1]) for r in counters]
    ledger = _ledger_for(session, keys)
    rows = []
    for sku, wh, on_hand, reserved in counters:
        l_on, l_res = ledger.get((sku, wh), (0, 0))
        rows.append({
            "sku": sku, "warehouse": wh, "on_hand": on_hand, "reserved": reserved,
            "available": on_hand - reserved, "ledger_on_hand": l_on, "ledger_reserved": l_res,
            "drift": (on_hand, reserved) != (l_on, l_res),
        })  # fmt: skip
    drifting = [(str(r["sku"]), str(r["warehouse"])) for r in rows if r["drift"]]
    repairs = (
        [p.as_dict() for p in stock_admin.propose_repairs(session, keys=drifting)]
        if drifting
        else []
    )
    return StockPage(rows=rows, total=int(total), repairs=repairs)


def _ledger_for(
    session: Session, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[int, int]]:
    if not keys:
        return {}
    rows = session.execute(
        select(
            StockMovement.sku,
            StockMovement.warehouse,
            func.sum(StockMovement.delta_on_hand),
            func.sum(StockMovement.delta_reserved),
        )
        .where(tuple_(StockMovement.sku, StockMovement.warehouse).in_(keys))
        .group_by(StockMovement.sku, StockMovement.warehouse)
    )
    return {(s, w): (int(on), int(res)) for s, w, on, res in rows}


# --- actions ---------------------------------------------------------------------------------


def record_action(
    session: Session, order_id: str, action: str, *, actor: str, detail: dict[str, Any]
) -> None:
    """The console's own timeline row for an action taken on (or about) an order."""
    timeline.record(
        session, order_id, "console_action", detail={"action": action, **detail}, actor=actor
    )


def full_drift(session: Session, *, limit: int = 200) -> list[dict[str, Any]]:
    """The drift check over every stock row (``orderflow stock report``): on request only, as
    it sums the whole ledger."""
    return [p.as_dict() for p in stock_admin.propose_repairs(session)[:limit]]
