"""The one intake path shared by the HTTP API, the broker task and the JSONL importer."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from producers.schema import OrderMessage, parse_message
from services.intake import IntakeResult, NewOrder, accept_order, accept_orders
from services.unit_of_work import unit_of_work
from settings import get_settings


def to_new_order(msg: OrderMessage) -> NewOrder:
    return NewOrder(
        source=msg.source,
        external_id=msg.external_id,
        body_hash=msg.body_hash(),
        currency=msg.currency,
        payment_provider=msg.payment_provider,
        lines=[(line.sku, line.quantity) for line in msg.lines],
        shipping_address=msg.shipping_address.model_dump(mode="json"),
        customer_ref=msg.customer_ref,
        user_id=msg.user_id,
        discount=msg.discount,
    )


def accept(msg: OrderMessage, *, channel: str) -> IntakeResult:
    """Store the order in its own transaction (committed when this returns)."""
    with unit_of_work() as session:
        return accept_order(
            session,
            to_new_order(msg),
            now=datetime.now(UTC),
            redrive_after_s=get_settings().intake_redrive_s,
            channel=channel,
        )


def accept_many(msgs: Sequence[OrderMessage], *, channel: str) -> list[IntakeResult | Exception]:
    """Store the orders in one transaction, a savepoint each (committed when this returns):
    per message its result or the error it alone raised (:func:`services.intake.accept_orders`).
    Raises when the transaction as a whole fails (the database unreachable)."""
    with unit_of_work() as session:
        return accept_orders(
            session,
            [to_new_order(msg) for msg in msgs],
            now=datetime.now(UTC),
            redrive_after_s=get_settings().intake_redrive_s,
            channel=channel,
        )


def accept_message(data: Any, *, channel: str) -> IntakeResult:
    """Validate then store (raises pydantic's ValidationError or ConflictError)."""
    return accept(parse_message(data), channel=channel)
