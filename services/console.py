"""Read queries for the ops console (``api/console.py``), written for a large database: counts
by status with one GROUP BY over an index, everything else an indexed lookup with a LIMIT.

Nothing here writes except :func:`record_action` (the console's own timeline row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from adapters.circuit import breaker_for
from domain.orders import FINAL_STATUSES, OrderStatus
from models import CallbackDelivery, DeadLetter, Order, OrderEvent, Payment, Stock, StockMovement
from services import callbacks, dead_letters, stock_admin, timeline, tracking
from services.queries import find_order as find_order  # re-export: the search box's lookup
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

# find_order (id, unique id prefix, external id or waybill) lives in services.queries, beside
# match_orders, which `orderflow orders show` shares with it.


def order_page(session: Session, order_id: str) -> dict[str, Any]:
    """The order view (lines, whole timeline) plus its payment, its parcels (every one, oldest
    first, cancelled ones with why), its returns and dead letters."""
    from services.parcel_views import parcels_view
    from services.payments import payment_view
    from services.return_views import returns_of

    view = order_view(session, order_id)
    for event in view["timeline"]:
        event["task_label"] = task_label(event["detail"])
    view["payment"] = payment_view(session, order_id)
    view["parcels"] = parcels = parcels_view(session, order_id)
    view["returns"] = returns_of(session, order_id)
    attention = view["status"] == OrderStatus.NEEDS_ATTENTION
    for parcel in parcels:  # a parcel's trouble is the order's reason (tracking, booking)
        parcel["reason"] = (
            _parcel_reason(view["reason"], parcel, len(parcels)) if attention else None
        )
    view["dead_letters"] = [
        _dead_letter_row(dl)
        for dl in session.scalars(
            select(DeadLetter).where(DeadLetter.order_id == order_id).order_by(DeadLetter.id)
        )
    ]
    for row in view["dead_letters"]:
        if row["status"] == "REPLAYED":
            row["outcome"] = replay_outcome(session, row["id"])
    return view


def _parcel_reason(reason: str | None, parcel: dict[str, Any], parcels: int) -> str | None:
    """The order's flag shown on the parcel it is about: the only parcel, or the one the
    reason names (``parcel <id> (<warehouse>)``, :attr:`domain.parcels.Parcel.label`)."""
    if reason is None or parcel["cancelled_at"] is not None:
        return None
    return reason if parcels == 1 or f"parcel {parcel['id']} (" in reason else None


def task_label(detail: dict[str, Any] | None) -> str:
    """The task behind a timeline row, as shown in the timeline's task column: ``"orders.process
    on w1@host (retries 2)"`` from the running task's context that :mod:`services.timeline`
    adds (``{"name", "worker", "retries"}``), a bare task name where a row names one (a dead
    letter's), ``""`` when the row was not written by a task."""
    task = (detail or {}).get("task")
    label = _task_name(detail)
    if not isinstance(task, dict):
        return label
    if task.get("worker"):
        label += f" on {task['worker']}"
    return label + (f" (retries {task['retries']})" if task.get("retries") is not None else "")


def _task_name(detail: dict[str, Any] | None) -> str:
    task = (detail or {}).get("task")
    if isinstance(task, dict):  # "task" is the key of rows written before the context had "name"
        return str(task.get("name") or task.get("task") or "?")
    return task if isinstance(task, str) else ""


# --- attention -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attention:
    orders: list[dict[str, Any]]
    orders_total: int
    dead_letters: list[dict[str, Any]]
    dead_letters_total: int
    stale: list[dict[str, Any]]
    endpoints: list[dict[str, Any]]
    payments: list[dict[str, Any]] = field(default_factory=list)


def attention(
    session: Session, *, now: datetime, stale_after_s: float, limit: int = 100
) -> Attention:
    """What needs a person: NEEDS_ATTENTION orders, open dead letters, stale tracking."""
    status = OrderStatus.NEEDS_ATTENTION.value
    rows = session.execute(
        select(Order.id, Order.external_id, Order.reason, Order.updated_at, Order.payment_provider)
        .where(Order.status == status)
        .order_by(Order.updated_at)
        .limit(limit)
    )
    orders = [
        {"id": i, "external_id": x, "reason": r or "", "since": u, "provider": p}
        for i, x, r, u, p in rows
    ]
    total = session.scalar(select(func.count()).where(Order.status == status)) or 0
    stale = tracking.stale_shipments(session, now=now, stale_after_s=stale_after_s, limit=limit)
    letters = [_dead_letter_row(dl) for dl in dead_letters.list_open(session, limit)]
    shipments = [{"shipment_id": s, "order_id": o, "last_event_at": at} for s, o, at in stale]
    _add_external_ids(session, letters + shipments)
    return Attention(
        orders=orders,
        orders_total=int(total),
        dead_letters=letters,
        dead_letters_total=dead_letters.count_open(session),
        stale=shipments,
        endpoints=endpoint_health(session),
        payments=flagged_payments(session, limit=limit),
    )


def flagged_payments(session: Session, *, limit: int = 100) -> list[dict[str, Any]]:
    """Payments flagged for a person whose order can no longer move (a wrong amount paid after
    the order was over: refunded, then flagged), oldest first, until acknowledged
    (``orderflow payments acknowledge``)."""
    rows = session.execute(
        select(Payment.order_id, Payment.provider, Payment.attention, Payment.updated_at,
               Order.status)
        .join(Order, Order.id == Payment.order_id)
        .where(Payment.attention.is_not(None))
        .order_by(Payment.updated_at)
        .limit(limit)
    )  # fmt: skip
    return [
        {"order_id": o, "provider": p, "attention": a, "since": u, "status": st}
        for o, p, a, u, st in rows
    ]


def _add_external_ids(session: Session, rows: list[dict[str, Any]]) -> None:
    """Each row's ``external_id``: of its ``order_id``'s order (one primary-key lookup for all)."""
    ids = {r["order_id"] for r in rows if r.get("order_id")}
    found: dict[str, str] = {}
    if ids:
        pairs = session.execute(select(Order.id, Order.external_id).where(Order.id.in_(ids)))
        found = {order_id: external_id for order_id, external_id in pairs}
    for row in rows:
        row["external_id"] = found.get(row.get("order_id") or "")


def endpoint_health(session: Session) -> list[dict[str, Any]]:
    """Each callback endpoint (``services.callbacks.list_endpoints``) with its state (inactive,
    paused, failing: consecutive failures since its last success, or ok) and the age of its
    oldest undelivered (pending or held) delivery, by the database's clock; None when none
    waits. ``ix_callback_deliveries_endpoint_id_status`` finds the undelivered rows."""
    waiting = CallbackDelivery.status.in_([callbacks.PENDING, callbacks.PAUSED])
    oldest = dict(
        session.execute(
            select(CallbackDelivery.endpoint_id, func.min(CallbackDelivery.created_at))
            .where(waiting)
            .group_by(CallbackDelivery.endpoint_id)
        )
        .tuples()
        .all()
    )
    now = session.scalar(select(func.now()))
    result = []
    for e in callbacks.list_endpoints(session):
        state = ("inactive" if not e.active else "paused" if e.paused_at is not None
                 else "failing" if e.consecutive_failures else "ok")  # fmt: skip
        since = oldest.get(e.id)
        result.append({
            "source": e.source, "state": state, "paused_at": e.paused_at,
            "consecutive_failures": e.consecutive_failures, "pending": e.pending,
            "oldest_pending_s": (now - since).total_seconds() if since and now else None,
        })  # fmt: skip
    return result


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What became of a replayed dead letter's task, as far as the database tells: ``again``, a
    newer dead letter of the same task for the same order; ``moved``, the order's latest
    transition since the replay (from, to, at); ``ran``, the latest timeline row the task wrote
    since (kind, at). All None: nothing recorded yet (still queued, running, or it changed
    nothing)."""

    dead_letter_id: int
    task: str
    status: str
    order_id: str | None
    order_status: str | None
    again: dict[str, Any] | None = None
    moved: tuple[str, str, datetime] | None = None
    ran: tuple[str, datetime] | None = None


def replay_outcome(session: Session, dl_id: int, *, scan: int = 500) -> ReplayOutcome | None:
    """The outcome of dead letter ``dl_id``'s replay (None for an unknown id). "Since the replay"
    is after the order's ``dlq_replayed`` row for it (by row id, not by clock); at most
    ``scan`` later rows of the order's timeline are read (``ix_order_events_order_id_id``)."""
    dl = session.get(DeadLetter, dl_id)
    if dl is None:
        return None
    order = session.get(Order, dl.order_id) if dl.order_id else None
    outcome = ReplayOutcome(dl.id, dl.task_name, dl.status, dl.order_id,
                            order.status if order is not None else None)  # fmt: skip
    if order is None or dl.status != "REPLAYED":
        return outcome
    mark = session.scalar(
        select(OrderEvent.id)
        .where(
            OrderEvent.order_id == order.id,
            OrderEvent.kind == "dlq_replayed",
            OrderEvent.detail["dead_letter_id"].as_integer() == dl_id,
        )
        .order_by(OrderEvent.id.desc())
        .limit(1)
    )
    if mark is None:
        return outcome
    later = session.scalars(
        select(OrderEvent)
        .where(OrderEvent.order_id == order.id, OrderEvent.id > mark)
        .order_by(OrderEvent.id)
        .limit(scan)
    ).all()
    return _since_replay(session, outcome, later)


def _since_replay(
    session: Session, outcome: ReplayOutcome, later: Sequence[OrderEvent]
) -> ReplayOutcome:
    moved = ran = None
    letters = []
    for e in later:
        detail = e.detail or {}
        if e.kind == "transition":
            moved = (e.from_status or "", e.to_status or "", e.created_at)
        if e.kind == "dead_letter" and isinstance(detail.get("dead_letter_id"), int):
            letters.append(detail["dead_letter_id"])
        elif isinstance(detail.get("task"), dict) and _task_name(detail) == outcome.task:
            ran = (e.kind, e.created_at)  # written by the task as it ran (its context)
    again = None
    if letters:
        again = session.scalar(
            select(DeadLetter)
            .where(DeadLetter.id.in_(letters), DeadLetter.task_name == outcome.task)
            .order_by(DeadLetter.id.desc())
            .limit(1)
        )
    found = {"id": again.id, "status": again.status} if again is not None else None
    return dataclasses.replace(outcome, again=found, moved=moved, ran=ran)


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
