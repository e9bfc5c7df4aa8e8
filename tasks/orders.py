"""Order-stage tasks: thin wrappers that call one service per transaction.

Reservation and payment creation run in one task (one hop fewer per order, DESIGN.md §4): once
the reservation has committed (no lock held), each newly RESERVED order's payment is created by
the payment stage's own step, :func:`services.payments.create`, exactly as ``payments.create``
would. An error there, transient or not, hands that order to ``payments.create`` on its queue
(the normal retries and dead letters) and the loop goes on with the next order.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from adapters.registry import payment_provider
from domain.errors import ValidationError
from domain.orders import OrderStatus
from producers.intake import accept_message
from services import payments
from services.followup import Followup
from services.ports import utcnow
from services.reservation import ReserveOutcome, reserve_batch, reserve_order
from services.task_names import (
    ORDERS_INTAKE,
    ORDERS_PROCESS,
    ORDERS_RESERVE_BATCH,
    PAYMENTS_CREATE,
)
from services.unit_of_work import unit_of_work
from settings import get_settings
from tasks.base import OrderflowTask, is_retryable
from workers.app import app
from workers.ports import allocation_policy, payment_config, ports
from workers.publish import enqueue_followups, enqueue_many

log = logging.getLogger(__name__)


class BatchTask(OrderflowTask):
    """A task whose first argument is a list of order ids.

    It never becomes one dead letter for the whole list: a batch that exhausted its retries,
    failed for good or kept killing its worker (the poison counter) is split, each order handed
    to ``orders.process``, which retries, counts deliveries and dead-letters it with its own
    id (so ``orderflow dlq`` and the sweeper's hold see the order that fails, and the others
    go through). Only if that publish fails is the batch itself dead-lettered.
    """

    abstract = True

    def _dead_letter(
        self, exc: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        order_ids = [str(i) for i in (args[0] if args else kwargs.get("order_ids", []))]
        log.warning("task %s split into %d orders.process after %r", self.name,
                    len(order_ids), exc)  # fmt: skip
        if enqueue_many((ORDERS_PROCESS, i) for i in order_ids) < len(order_ids):
            super()._dead_letter(exc, args, kwargs)


@app.task(name=ORDERS_RESERVE_BATCH, base=BatchTask, bind=True)
def reserve_orders(self: OrderflowTask, order_ids: list[str]) -> dict[str, int]:
    """Reserve up to ``RESERVE_BATCH_MAX`` orders in one transaction (a savepoint each), then
    create the payment of each one reserved. An order whose savepoint failed is handed to
    ``orders.process`` on its own. Returns how many orders ended in each status."""
    try:
        outcomes = _reserve_many(order_ids)
    except Exception as exc:
        self.retry_or_fail(exc)
    for failed in (o for o in outcomes if o.error is not None):
        self.hand_off(failed.error, ORDERS_PROCESS, failed.order_id)
    _create_payments(self, [o for o in outcomes if _newly_reserved(o)])
    return dict(Counter(o.status for o in outcomes))


@app.task(name=ORDERS_PROCESS, base=OrderflowTask, bind=True, order_id_arg=0)
def process_order(self: OrderflowTask, order_id: str) -> str:
    """Reserve stock for a RECEIVED order (a no-op for any other status), then create its
    payment."""
    try:
        outcome = _reserve(order_id)
    except Exception as exc:
        self.retry_or_fail(exc)
    return _after_reservation(self, outcome)


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
    return _after_reservation(self, outcome)


def _reserve(order_id: str) -> ReserveOutcome:
    """The reservation stage in its own transaction (committed when this returns)."""
    s = get_settings()
    with unit_of_work() as session:
        return reserve_order(
            session, order_id, now=utcnow(), payment_window_s=s.payment_window_s,
            redrive_s=s.create_redrive_s, policy=allocation_policy(),
        )  # fmt: skip


def _reserve_many(order_ids: Sequence[str]) -> list[ReserveOutcome]:
    """The batch's reservations in one transaction (committed when this returns)."""
    s = get_settings()
    with unit_of_work() as session:
        return reserve_batch(
            session, [str(i) for i in order_ids], now=utcnow(),
            payment_window_s=s.payment_window_s, redrive_s=s.create_redrive_s,
            policy=allocation_policy(),
        )  # fmt: skip


def _newly_reserved(outcome: ReserveOutcome) -> bool:
    # A duplicate (unchanged) RESERVED order is not created here: its first run did that, or
    # the sweeper re-drives payments.create at the stage deadline the reservation set.
    return outcome.changed and outcome.status == OrderStatus.RESERVED


def _after_reservation(task: OrderflowTask, outcome: ReserveOutcome) -> str:
    if _newly_reserved(outcome):
        _create_payments(task, [outcome])
    return outcome.status


#: Payment creates run side by side (provider calls wait on the network, not the CPU).
_CREATE_THREADS = 8


def _create_payments(task: OrderflowTask, reserved: list[ReserveOutcome]) -> None:
    """The payment stage in-line, after the reservation's commit: ``payments.create``'s step
    for each order (up to :data:`_CREATE_THREADS` at once, each in its own transaction, as on
    the payments worker's threads), the follow-ups published at the end. A failing order is
    handed to ``payments.create``. Published to it as plain hops (as before fusion) are: every
    order when ``PAYMENT_CREATE_INLINE`` is off, orders whose provider this worker has no
    configuration for (credentials may live on the payments
    workers only; the step would take "not configured" for a refusal and the order would need
    attention), and, past half the soft time limit, those not started, so that slow providers
    cannot push the task into its limit."""
    if not reserved:
        return
    step_ports, config = ports(), payment_config()
    budget_end = time.monotonic() + get_settings().task_soft_time_limit_s / 2

    inline = get_settings().payment_create_inline

    def create(order: ReserveOutcome) -> list[Followup]:
        if not inline or time.monotonic() > budget_end or not _configured(order.provider):
            return [Followup(PAYMENTS_CREATE, order.order_id)]
        try:
            return list(payments.create(order.order_id, payment_provider, step_ports, config)
                        .followups)  # fmt: skip
        except Exception as exc:  # the order waits RESERVED; payments.create takes over
            task.hand_off(exc, PAYMENTS_CREATE, order.order_id)
            return []

    if len(reserved) == 1:
        followups = create(reserved[0])
    else:  # each thread runs in a copy of this context: timeline rows name this task
        with ThreadPoolExecutor(min(len(reserved), _CREATE_THREADS)) as pool:
            runs = [pool.submit(contextvars.copy_context().run, create, o) for o in reserved]
            followups = [f for run in runs for f in run.result()]
    enqueue_followups(followups)


def _configured(provider: str | None) -> bool:
    """Whether this process can build ``provider``'s adapter (built once, then cached)."""
    try:
        payment_provider(provider or "")
    except Exception:  # not configured here, unknown, an unreadable key: not in-line
        return False
    return True
