"""Read models: what the API and CLI show about orders and stock."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Subquery, func, select
from sqlalchemy.orm import Session

from domain.errors import NotFound, ValidationError
from models import Order, OrderEvent, Shipment, Stock, StockMovement

#: Shortest id prefix that is looked up (as git abbreviates: shorter ones name too many orders).
MIN_ID_PREFIX = 4
#: How many candidates an ambiguous query reports.
MAX_CANDIDATES = 10
# Order ids are str(uuid4()): lower-case hex and dashes, 36 characters.
_ID_CHARS = re.compile(r"[0-9a-f-]+")
_ID_LENGTH = 36


def ensure_order_source(session: Session, order_id: str, source: str) -> None:
    """Raise :class:`NotFound` unless an API key bound to ``source`` (``*``: any) may see the
    order. Another source's order is answered exactly like a missing one, so a key can neither
    act on nor learn of orders that are not its source's."""
    if source == "*":
        return
    owner = session.scalar(select(Order.source).where(Order.id == order_id))
    if owner != source:
        raise NotFound(f"order {order_id} not found", field="order_id")


@dataclass(frozen=True, slots=True)
class OrderMatch:
    """The orders an operator's query names. ``ids`` is empty (nothing), one id, or up to
    :data:`MAX_CANDIDATES` candidates (``more``: there are others); ``by`` is the key that
    matched: ``id``, ``external_id``, ``waybill``, ``id_prefix`` or ``""``."""

    query: str
    ids: tuple[str, ...] = ()
    by: str = ""
    more: bool = False


def match_orders(session: Session, query: str) -> OrderMatch:
    """What ``query`` names, trying each key in turn and stopping at the first that matches:

    1. an order id (any case: ids are lower-case uuids);
    2. an external id, in any source (two sources may share one: then both are candidates);
    3. a waybill number (the same number at two carriers: both orders are candidates);
    4. a prefix of an order id, of :data:`MIN_ID_PREFIX` to 35 id characters.

    Exact keys come before prefixes, so an external id that happens to look like an id prefix
    still finds its own order. Each step is an indexed lookup with a LIMIT (the prefix uses the
    primary key under the C collation; under another collation it scans ``orders``). A blank or
    over-long query (over 128 characters, the longest external id) matches nothing.
    """
    q = query.strip()
    if not q or len(q) > 128:
        return OrderMatch(query)
    lowered = q.lower()
    if len(q) <= _ID_LENGTH and session.get(Order, lowered) is not None:
        return OrderMatch(q, (lowered,), "id")
    steps = [("external_id", select(Order.id).where(Order.external_id == q))]
    if len(q) <= 64:
        waybill = select(Shipment.order_id).where(Shipment.waybill == q).distinct()
        steps.append(("waybill", waybill))
    if MIN_ID_PREFIX <= len(q) < _ID_LENGTH and _ID_CHARS.fullmatch(lowered):
        prefix = Order.id.startswith(lowered, autoescape=True)
        steps.append(("id_prefix", select(Order.id).where(prefix)))
    for by, stmt in steps:
        ordered = stmt.order_by(stmt.selected_columns[0]).limit(MAX_CANDIDATES + 1)
        found = list(session.scalars(ordered))
        if found:
            return OrderMatch(q, tuple(found[:MAX_CANDIDATES]), by, len(found) > MAX_CANDIDATES)
    return OrderMatch(q)


def find_order(session: Session, query: str) -> str | None:
    """The id of the one order ``query`` names (see :func:`match_orders`); None when it names
    none or several (the ops console's search box)."""
    match = match_orders(session, query)
    return match.ids[0] if len(match.ids) == 1 else None


def resolve_order(session: Session, query: str) -> str:
    """The id of the one order ``query`` names (see :func:`match_orders`), for commands that
    take an order. Raises :class:`NotFound` ``order Q not found`` when it names none, and
    :class:`ValidationError` on ``order`` listing the candidates when it names several."""
    match = match_orders(session, query)
    if not match.ids:
        raise NotFound(f"order {query} not found", field="order_id")
    if len(match.ids) > 1:
        count = f"more than {MAX_CANDIDATES}" if match.more else str(len(match.ids))
        listed = ", ".join(match.ids) + (", …" if match.more else "")
        if match.by == "id_prefix":
            what, hint = "orders", "give more of the id"
        else:
            what, hint = f"orders by {match.by.replace('_', ' ')}", "give the order id"
        raise ValidationError("order", f"{query!r} matches {count} {what}: {listed}; {hint}")
    return match.ids[0]


def order_view(session: Session, order_id: str) -> dict[str, Any]:
    """The order with lines and its whole timeline, as plain JSON-able data."""
    order = session.get(Order, order_id)
    if order is None:
        raise NotFound(f"order {order_id} not found", field="order_id")
    events = session.scalars(
        select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
    )
    return {
        "id": order.id,
        "source": order.source,
        "external_id": order.external_id,
        "status": order.status,
        "reason": order.reason,
        "currency": order.currency,
        "total_amount": order.total_amount,
        "payment_provider": order.payment_provider,
        "customer_ref": order.customer_ref,
        "user_id": order.user_id,
        "stage_deadline": order.stage_deadline.isoformat() if order.stage_deadline else None,
        "delivered_at": order.delivered_at.isoformat() if order.delivered_at else None,
        "receipt_confirmed_at": (
            order.receipt_confirmed_at.isoformat() if order.receipt_confirmed_at else None
        ),
        "created_at": order.created_at.isoformat(),
        "updated_at": order.updated_at.isoformat(),
        "lines": [
            {"sku": line.sku, "quantity": line.quantity, "unit_amount": line.unit_amount}
            for line in order.lines
        ],
        "timeline": [
            {
                "at": e.created_at.isoformat(),
                "kind": e.kind,
                "from": e.from_status,
                "to": e.to_status,
                "detail": e.detail,
                "actor": e.actor,
            }
            for e in events
        ],
    }


def order_timeline(session: Session, order_id: str) -> dict[str, Any]:
    """:func:`order_view` plus the order's parcels (``parcels``, as
    :func:`services.parcel_views.parcels_view` shows them) and its outbound status callbacks
    (``callbacks``: one entry per event, oldest first, with its delivery outcome; never the
    payload, which may carry payment secrets). Raises ``NotFound`` for an unknown order."""
    from services.callbacks import list_deliveries
    from services.parcel_views import parcels_view

    view = order_view(session, order_id)
    view["parcels"] = parcels_view(session, order_id)
    rows = list_deliveries(session, order_id=order_id, limit=10_000)
    view["callbacks"] = [
        {
            "event_id": d.event_id,
            "source": d.source,
            "order_status": d.order_status,
            "event_type": d.event_type,
            "parcel": d.parcel,
            "status": d.status,
            "attempts": d.attempts,
            "last_status_code": d.last_status_code,
            "last_error": d.last_error,
            "created_at": d.created_at.isoformat(),
            "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
        }
        for d in reversed(rows)
    ]
    return view


def status_counts(session: Session) -> dict[str, int]:
    rows = session.execute(select(Order.status, func.count()).group_by(Order.status))
    return {status: count for status, count in rows}


def ledger_sums() -> Subquery:
    """Per (sku, warehouse): the sums of the ledger's deltas — what the counters must equal."""
    return (
        select(
            StockMovement.sku,
            StockMovement.warehouse,
            func.sum(StockMovement.delta_on_hand).label("on_hand"),
            func.sum(StockMovement.delta_reserved).label("reserved"),
        )
        .group_by(StockMovement.sku, StockMovement.warehouse)
        .subquery()
    )


def stock_drift(session: Session) -> list[dict[str, Any]]:
    """Rows whose counters differ from the ledger sums (empty when all is consistent)."""
    ledger = ledger_sums()
    rows = session.execute(
        select(
            Stock.sku,
            Stock.warehouse,
            Stock.on_hand,
            Stock.reserved,
            func.coalesce(ledger.c.on_hand, 0),
            func.coalesce(ledger.c.reserved, 0),
        ).outerjoin(ledger, (ledger.c.sku == Stock.sku) & (ledger.c.warehouse == Stock.warehouse))
    )
    return [
        {
            "sku": sku,
            "warehouse": wh,
            "on_hand": on_hand,
            "reserved": reserved,
            "ledger_on_hand": int(l_on),
            "ledger_reserved": int(l_res),
        }
        for sku, wh, on_hand, reserved, l_on, l_res in rows
        if on_hand != l_on or reserved != l_res
    ]


def list_orders(
    session: Session,
    *,
    status: str | None = None,
    provider: str | None = None,
    created_before: datetime | None = None,
    limit: int = 50,
) -> list[Order]:
    """The newest orders first, each filter applied when given (``orderflow orders list``)."""
    stmt = select(Order).order_by(Order.created_at.desc()).limit(limit)
    if status:
        stmt = stmt.where(Order.status == status)
    if provider:
        stmt = stmt.where(Order.payment_provider == provider)
    if created_before is not None:
        stmt = stmt.where(Order.created_at < created_before)
    return list(session.scalars(stmt))
