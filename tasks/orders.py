"""Order-stage tasks: thin wrappers that call one service per transaction."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError as PydanticValidationError

from domain.errors import ValidationError
from domain.orders import OrderStatus
from producers.intake import accept_message
from services.ports import utcnow
from services.reservation import ReserveOutcome, reserve_order
from services.task_names import ORDERS_INTAKE, ORDERS_PROCESS, PAYMENTS_CREATE
from services.unit_of_work import unit_of_work
from settings import get_settings
from tasks.base import OrderflowTask, is_retryable
from workers.app import app
from workers.publish import enqueue


@app.task(name=ORDERS_PROCESS, base=OrderflowTask, bind=True, order_id_arg=0)
def process_order(self: OrderflowTask, order_id: str) -> str:
    """Reserve stock for a RECEIVED order (a no-op for any other status), then hand it to the
    payment stage."""
    try:
        outcome = _reserve(order_id)
    except Exception as exc:
        self.retry_or_fail(exc)
    return _after_reservation(outcome)


@app.task(name=ORDERS_INTAKE, base=OrderflowTask, bind=True)
def intake_message(self: OrderflowTask, message: dict[str, Any]) -> str:
    """An order published straight onto the broker by :class:`producers.client.OrderProducer`.

    Same idempotent insert as the HTTP path, then the reservation in the same task (one hop
    fewer; each step commits on its own). An invalid message is not retried: it becomes a dead
    letter with the field errors, so it is visible and never silently dropped.

    A transient failure of the in-line reservation (deadlock, lock timeout, lost connection)
    hands the stored order to ``orders.process`` with the first backoff, so it gets exactly the
    retries and the dead letter (with its order id) an order from the HTTP path gets. Retrying
    this task instead would redo the insert, and its dead letter would not name the order.
    """
    try:
        result = accept_message(message, channel="broker")
    except (PydanticValidationError, ValidationError) as exc:
        raise ValidationError("message", str(exc)) from exc
    except Exception as exc:
        self.retry_or_fail(exc)
    try:
        outcome = _reserve(result.order_id)
    except Exception as exc:
        if not is_retryable(exc):
            raise
        self.hand_off(exc, ORDERS_PROCESS, result.order_id)
        return OrderStatus.RECEIVED
    return _after_reservation(outcome)


def _reserve(order_id: str) -> ReserveOutcome:
    """The reservation stage in its own transaction (committed when this returns)."""
    s = get_settings()
    with unit_of_work() as session:
        return reserve_order(
            session, order_id, now=utcnow(), payment_window_s=s.payment_window_s,
            redrive_s=s.create_redrive_s,
        )  # fmt: skip


def _after_reservation(outcome: ReserveOutcome) -> str:
    if outcome.changed and outcome.status == OrderStatus.RESERVED:
        enqueue(PAYMENTS_CREATE, outcome.order_id)  # after the commit; the sweeper covers a loss
    return outcome.status
