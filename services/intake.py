"""Intake: store an order exactly once, whatever path it came by and however often it is sent.

``(source, external_id)`` is unique in the database. The insert uses ``ON CONFLICT DO NOTHING``:
the first arrival creates the order; a repeat with the same body returns the same order; a repeat
with a different body raises :class:`ConflictError`. Nothing is enqueued here: the caller
enqueues ``orders.process`` after the commit, and the sweeper re-drives the order if that
message is lost (``stage_deadline``).

:func:`accept_order` stores one order (the broker task, the CLI); :func:`accept_orders` stores
many in the caller's one transaction, each in its own SAVEPOINT (the HTTP intake's group
commit), so one refused order fails alone and the rest commit together.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, text, tuple_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from domain.errors import ConflictError, OrderflowError, ValidationError
from domain.orders import OrderStatus
from models import Order, User
from services import callbacks, timeline


@dataclass(frozen=True, slots=True)
class NewOrder:
    source: str
    external_id: str
    body_hash: str
    currency: str
    payment_provider: str
    lines: Sequence[tuple[str, int]]  # (sku, quantity) in the order given
    shipping_address: Mapping[str, Any]
    customer_ref: str | None = None
    user_id: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    discount: int = 0  # minor units off the lines' total (applied at reservation)


@dataclass(frozen=True, slots=True)
class IntakeResult:
    order_id: str
    created: bool
    status: str


# The whole insert in one round trip (a hot path): the order, its lines and the RECEIVED event,
# the lines and the event only when the order row was inserted (ON CONFLICT gave a row back).
_INSERT_ORDER = text(
    """
    WITH new_order AS (
        INSERT INTO orders (id, source, external_id, body_hash, user_id, customer_ref, status,
                            currency, total_amount, payment_provider, shipping_address,
                            stage_deadline, discount_amount)
        VALUES (:id, :source, :external_id, :body_hash, :user_id, :customer_ref, :status,
                :currency, 0, :payment_provider, :shipping_address, :stage_deadline, :discount)
        ON CONFLICT ON CONSTRAINT uq_orders_source_external_id DO NOTHING
        RETURNING id),
    new_lines AS (
        INSERT INTO order_lines (order_id, line_no, sku, quantity)
        SELECT new_order.id, l.line_no, l.sku, l.quantity
        FROM new_order, unnest(CAST(:skus AS text[]), CAST(:quantities AS int[]))
             WITH ORDINALITY AS l(sku, quantity, line_no)),
    received AS (
        INSERT INTO order_events (order_id, kind, to_status, detail, actor)
        SELECT new_order.id, 'transition', :status, :event_detail, 'system' FROM new_order)
    SELECT id FROM new_order
    """
).bindparams(bindparam("shipping_address", type_=JSONB), bindparam("event_detail", type_=JSONB))


def accept_order(
    session: Session, order: NewOrder, *, now: datetime, redrive_after_s: int, channel: str
) -> IntakeResult:
    """Insert the order (status RECEIVED) or return the existing one with the same key.

    Raises :class:`ValidationError` (field ``user_id``) for a user that does not exist.
    """
    if order.user_id is not None and session.get(User, order.user_id) is None:
        raise ValidationError("user_id", f"no user with id {order.user_id}")
    order_id = str(uuid.uuid4())
    params = {
        "id": order_id,
        "source": order.source,
        "external_id": order.external_id,
        "body_hash": order.body_hash,
        "user_id": order.user_id,
        "customer_ref": order.customer_ref,
        "discount": order.discount,
        "status": OrderStatus.RECEIVED.value,
        "currency": order.currency,
        "payment_provider": order.payment_provider,
        "shipping_address": dict(order.shipping_address),
        "stage_deadline": now + timedelta(seconds=redrive_after_s),
        "skus": [sku for sku, _ in order.lines],
        "quantities": [qty for _, qty in order.lines],
        "event_detail": timeline.with_task(
            {"channel": channel, "source": order.source, "external_id": order.external_id}
        ),
    }
    inserted = session.connection().execute(_INSERT_ORDER, params).scalar_one_or_none()
    if inserted is None:
        return _existing(session, order)
    callbacks.record_status_change(
        session,
        callbacks.OrderSnapshot(order_id, order.source, order.external_id, order.currency),
        None,
        OrderStatus.RECEIVED,
    )
    return IntakeResult(order_id, True, OrderStatus.RECEIVED)


def accept_orders(
    session: Session,
    orders: Sequence[NewOrder],
    *,
    now: datetime,
    redrive_after_s: int,
    channel: str,
) -> list[IntakeResult | Exception]:
    """Accept each order as :func:`accept_order` would, in the caller's one transaction: the
    result for each order, in the order given, is its :class:`IntakeResult` or the error it
    alone raised (an unknown ``user_id``: :class:`ValidationError`; the key reused with a
    different body: :class:`ConflictError`).

    * The batch is stored by one statement (:data:`_INSERT_ORDERS`: orders, lines and RECEIVED
      events for every order at once), the repeats read back by one more: the round trips do
      not grow with the batch. Orders go in ``(source, external_id)`` order, stable for equal
      keys, so two batches in two processes never wait on each other's keys in opposite orders
      (no deadlock), and a key sent twice in one batch behaves as it does sent twice in a row:
      the first is created, the second is a repeat (same body) or a conflict.
    * Should that statement fail on a value the database refuses (``DataError``,
      ``IntegrityError``: too long for its column, out of range), it is rolled back to its
      savepoint and the orders are stored one by one, each in its own savepoint, so the one at
      fault fails alone with that error.
    * Any other database error (a lost connection, a broken statement) is raised: nothing of
      the batch commits.
    """
    results: list[IntakeResult | Exception | None] = [None] * len(orders)
    for i in _unknown_users(session, orders):
        results[i] = ValidationError("user_id", f"no user with id {orders[i].user_id}")
    todo = sorted(
        (i for i in range(len(orders)) if results[i] is None),
        key=lambda i: (orders[i].source, orders[i].external_id),
    )
    try:
        with session.begin_nested():
            created = _insert_all(session, [(i, orders[i]) for i in todo], now, redrive_after_s,
                                  channel)  # fmt: skip
    except _REFUSED_VALUE:
        for i in todo:
            results[i] = _accept_alone(session, orders[i], now, redrive_after_s, channel)
        return [r for r in results if r is not None]
    for i, order_id in created.items():
        results[i] = IntakeResult(order_id, True, OrderStatus.RECEIVED)
    repeats = [i for i in todo if i not in created]
    for i, result in zip(repeats, _repeats(session, [orders[i] for i in repeats]), strict=True):
        results[i] = result
    _announce(session, [(created[i], orders[i]) for i in todo if i in created])
    return [r for r in results if r is not None]


# The batch in one round trip: one row per order from parallel arrays, the lines from flattened
# arrays keyed by the order's id; lines and events only for the orders ON CONFLICT inserted.
_INSERT_ORDERS = text(
    """
    WITH input AS (
        SELECT * FROM unnest(
            CAST(:ids AS text[]), CAST(:sources AS text[]), CAST(:external_ids AS text[]),
            CAST(:body_hashes AS text[]), CAST(:user_ids AS bigint[]),
            CAST(:customer_refs AS text[]), CAST(:currencies AS text[]),
            CAST(:providers AS text[]), CAST(:addresses AS text[]), CAST(:details AS text[]),
            CAST(:discounts AS bigint[]))
            WITH ORDINALITY AS i(id, source, external_id, body_hash, user_id, customer_ref,
                                 currency, payment_provider, address, detail, discount, n)),
    new_order AS (
        INSERT INTO orders (id, source, external_id, body_hash, user_id, customer_ref, status,
                            currency, total_amount, payment_provider, shipping_address,
                            stage_deadline, discount_amount)
        SELECT id, source, external_id, body_hash, user_id, customer_ref, :status, currency, 0,
               payment_provider, CAST(address AS jsonb), :stage_deadline, discount
        FROM input ORDER BY n
        ON CONFLICT ON CONSTRAINT uq_orders_source_external_id DO NOTHING
        RETURNING id),
    new_lines AS (
        INSERT INTO order_lines (order_id, line_no, sku, quantity)
        SELECT l.order_id, l.line_no, l.sku, l.quantity
        FROM unnest(CAST(:line_orders AS text[]), CAST(:line_nos AS int[]),
                    CAST(:skus AS text[]), CAST(:quantities AS int[]))
             AS l(order_id, line_no, sku, quantity)
        JOIN new_order ON new_order.id = l.order_id),
    received AS (
        INSERT INTO order_events (order_id, kind, to_status, detail, actor)
        SELECT input.id, 'transition', :status, CAST(input.detail AS jsonb), 'system'
        FROM input JOIN new_order USING (id))
    SELECT id FROM new_order
    """
)


def _insert_all(
    session: Session,
    batch: Sequence[tuple[int, NewOrder]],
    now: datetime,
    redrive_after_s: int,
    channel: str,
) -> dict[int, str]:
    """Insert the batch (index, order) in its order; index -> new id of each order created."""
    ids = {i: str(uuid.uuid4()) for i, _ in batch}
    orders = [o for _, o in batch]
    lines = [(ids[i], n, sku, qty) for i, o in batch for n, (sku, qty) in enumerate(o.lines, 1)]
    params = {
        "ids": [ids[i] for i, _ in batch],
        "sources": [o.source for o in orders],
        "external_ids": [o.external_id for o in orders],
        "body_hashes": [o.body_hash for o in orders],
        "user_ids": [o.user_id for o in orders],
        "customer_refs": [o.customer_ref for o in orders],
        "discounts": [o.discount for o in orders],
        "currencies": [o.currency for o in orders],
        "providers": [o.payment_provider for o in orders],
        "addresses": [json.dumps(dict(o.shipping_address)) for o in orders],
        "details": [json.dumps(_received_detail(o, channel)) for o in orders],
        "line_orders": [line[0] for line in lines],
        "line_nos": [line[1] for line in lines],
        "skus": [line[2] for line in lines],
        "quantities": [line[3] for line in lines],
        "status": OrderStatus.RECEIVED.value,
        "stage_deadline": now + timedelta(seconds=redrive_after_s),
    }
    inserted = set(session.connection().execute(_INSERT_ORDERS, params).scalars())
    return {i: ids[i] for i, _ in batch if ids[i] in inserted}


def _received_detail(order: NewOrder, channel: str) -> dict[str, Any] | None:
    return timeline.with_task(
        {"channel": channel, "source": order.source, "external_id": order.external_id}
    )


def _unknown_users(session: Session, orders: Sequence[NewOrder]) -> list[int]:
    """Indexes of the orders naming a user that does not exist (one query, none without users)."""
    wanted = {o.user_id for o in orders if o.user_id is not None}
    if not wanted:
        return []
    known = set(session.scalars(select(User.id).where(User.id.in_(wanted))))
    return [i for i, o in enumerate(orders) if o.user_id is not None and o.user_id not in known]


def _repeats(session: Session, orders: Sequence[NewOrder]) -> list[IntakeResult | Exception]:
    """Each order's stored twin (ON CONFLICT left it alone): a repeat, or a conflict if the
    body differs. One query for all of them."""
    if not orders:
        return []
    keys = {(o.source, o.external_id) for o in orders}
    rows = session.execute(
        select(Order.source, Order.external_id, Order.id, Order.body_hash, Order.status).where(
            tuple_(Order.source, Order.external_id).in_(keys)
        )
    ).all()
    stored = {(r.source, r.external_id): r for r in rows}
    return [_repeat_of(stored[(o.source, o.external_id)], o) for o in orders]


def _announce(session: Session, created: Sequence[tuple[str, NewOrder]]) -> None:
    snapshots = [
        callbacks.OrderSnapshot(order_id, order.source, order.external_id, order.currency)
        for order_id, order in created
    ]
    callbacks.record_status_changes(session, snapshots, None, OrderStatus.RECEIVED)


def _accept_alone(
    session: Session, order: NewOrder, now: datetime, redrive_after_s: int, channel: str
) -> IntakeResult | Exception:
    """One order in its own savepoint: its result, or the error it alone raised."""
    try:
        with session.begin_nested():
            return accept_order(
                session, order, now=now, redrive_after_s=redrive_after_s, channel=channel
            )
    except (*_REFUSED_VALUE, OrderflowError) as exc:
        return exc


#: A value of one order that the database refuses (too long for its column, out of range, a
#: constraint): that order's fault. Anything else (a lost connection, a bug in a statement) is
#: the whole batch's and is raised.
_REFUSED_VALUE = (DataError, IntegrityError)


def _existing(session: Session, order: NewOrder) -> IntakeResult:
    # The row exists (possibly committed a moment ago by a concurrent request: ON CONFLICT waited
    # for that transaction, so it is visible to this statement's snapshot in READ COMMITTED).
    row = session.execute(
        select(Order.id, Order.body_hash, Order.status).where(
            Order.source == order.source, Order.external_id == order.external_id
        )
    ).one()
    result = _repeat_of(row, order)
    if isinstance(result, ConflictError):
        raise result
    return result


def _repeat_of(row: Any, order: NewOrder) -> IntakeResult | ConflictError:
    """The answer to ``order`` sent again: the stored ``row`` if the body is the same."""
    if row.body_hash != order.body_hash:
        return ConflictError(
            f"order {order.source}/{order.external_id} already exists with a different body",
            field="external_id",
            reason="already used with a different body",
        )
    return IntakeResult(row.id, False, row.status)
