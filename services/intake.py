"""Intake: store an order exactly once, whatever path it came by and however often it is sent.

``(source, external_id)`` is unique in the database. The insert uses ``ON CONFLICT DO NOTHING``:
the first arrival creates the order; a repeat with the same body returns the same order; a repeat
with a different body raises :class:`ConflictError`. Nothing is enqueued here: the caller
enqueues ``orders.process`` after the commit, and the sweeper re-drives the order if that
message is lost (``stage_deadline``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from domain.errors import ConflictError, ValidationError
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
                            stage_deadline)
        VALUES (:id, :source, :external_id, :body_hash, :user_id, :customer_ref, :status,
                :currency, 0, :payment_provider, :shipping_address, :stage_deadline)
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


def _existing(session: Session, order: NewOrder) -> IntakeResult:
    # The row exists (possibly committed a moment ago by a concurrent request: ON CONFLICT waited
    # for that transaction, so it is visible to this statement's snapshot in READ COMMITTED).
    row = session.execute(
        select(Order.id, Order.body_hash, Order.status).where(
            Order.source == order.source, Order.external_id == order.external_id
        )
    ).one()
    if row.body_hash != order.body_hash:
        raise ConflictError(
            f"order {order.source}/{order.external_id} already exists with a different body",
            field="external_id",
            reason="already used with a different body",
        )
    return IntakeResult(row.id, False, row.status)
