"""Payment-stage tasks: ids in, one service step (:mod:`services.payments`), publish its
follow-ups. Errors go to :meth:`OrderflowTask.retry_or_fail` (transient ones are retried)."""

from __future__ import annotations

import logging

from adapters.registry import payment_provider
from services import payments, reconcile
from services.payments import provider_refunds
from services.ports import Outcome, utcnow
from services.task_names import (
    MAINTENANCE_POLL_PAYMENTS,
    MAINTENANCE_RECONCILE,
    PAYMENTS_CLOSE,
    PAYMENTS_CREATE,
    PAYMENTS_EXPIRE,
    PAYMENTS_LOOKUP_REFUNDS,
    PAYMENTS_QUERY,
    PAYMENTS_REFUND,
)
from services.unit_of_work import unit_of_work
from settings import get_settings
from tasks.base import OrderflowTask
from workers.app import app
from workers.ports import payment_config, ports
from workers.publish import enqueue_followups

log = logging.getLogger(__name__)


def _published(outcome: Outcome) -> str:
    enqueue_followups(outcome.followups)
    return outcome.result


@app.task(name=PAYMENTS_CREATE, base=OrderflowTask, bind=True, order_id_arg=0)
def create_payment(self: OrderflowTask, order_id: str) -> str:
    """Create the payment at the provider; RESERVED -> AWAITING_PAYMENT."""
    try:
        outcome = payments.create(order_id, payment_provider, ports(), payment_config())
    except Exception as exc:
        self.retry_or_fail(exc)
    return _published(outcome)


@app.task(name=PAYMENTS_QUERY, base=OrderflowTask, bind=True)
def query_payment(self: OrderflowTask, payment_id: int) -> str:
    """Poll the provider for a pending payment (the fallback when no notification came)."""
    try:
        outcome = payments.query(payment_id, payment_provider, ports())
    except Exception as exc:
        self.retry_or_fail(exc)
    return _published(outcome)


@app.task(name=PAYMENTS_EXPIRE, base=OrderflowTask, bind=True, order_id_arg=0)
def expire_payment(self: OrderflowTask, order_id: str) -> str:
    """At the payment deadline: close the trade, then expire (or accept it if it was paid)."""
    try:
        outcome = payments.close(order_id, payment_provider, ports(), payment_config())
    except Exception as exc:
        self.retry_or_fail(exc)
    return _published(outcome)


@app.task(name=PAYMENTS_CLOSE, base=OrderflowTask, bind=True, order_id_arg=0)
def close_payment(self: OrderflowTask, order_id: str) -> str:
    """After a cancel: close the trade (a trade found paid is refunded)."""
    try:
        outcome = payments.close(order_id, payment_provider, ports(), payment_config())
    except Exception as exc:
        self.retry_or_fail(exc)
    return _published(outcome)


@app.task(name=PAYMENTS_REFUND, base=OrderflowTask, bind=True)
def refund(self: OrderflowTask, refund_id: int) -> str:
    """Carry out a requested refund, or check on one the provider accepted as pending."""
    try:
        outcome = payments.refund(refund_id, payment_provider, ports())
    except Exception as exc:
        self.retry_or_fail(exc)
    return _published(outcome)


@app.task(name=PAYMENTS_LOOKUP_REFUNDS, base=OrderflowTask, bind=True)
def lookup_refunds(self: OrderflowTask, arg: str) -> str:
    """Ask the provider about refunds a notification did not describe in full (a Stripe
    ``charge.refunded`` without its refund list, an Alipay refund we did not make)."""
    try:
        outcome = provider_refunds.lookup_refunds(arg, payment_provider, ports())
    except Exception as exc:
        self.retry_or_fail(exc)
    return _published(outcome)


@app.task(name=MAINTENANCE_POLL_PAYMENTS, base=OrderflowTask, bind=True)
def poll_payments(self: OrderflowTask) -> int:
    """Beat: enqueue status queries for pending payments and re-drive unfinished refunds and
    owed refund look-ups (a ``payments.lookup_refunds`` message lost after its commit)."""
    s = get_settings()
    try:
        with unit_of_work() as session:
            followups = payments.claim_due(
                session, now=utcnow(), limit=s.sweep_batch, first_s=s.payment_query_first_s,
                max_s=s.payment_query_max_s,
            )  # fmt: skip
    except Exception as exc:
        self.retry_or_fail(exc)
    return enqueue_followups(followups)


@app.task(name=MAINTENANCE_RECONCILE, base=OrderflowTask, bind=True)
def reconcile_payments(self: OrderflowTask) -> dict[str, int]:
    """Beat (daily): reconcile payments with the providers; the summary is logged."""
    try:
        report = reconcile.reconcile(
            payment_provider, ports(), sample=get_settings().reconcile_sample
        )
    except Exception as exc:
        self.retry_or_fail(exc)
    enqueue_followups(report.followups)
    for finding in report.unresolved:
        log.warning("reconcile: %s", finding)
    return {"checked": report.checked, "fixed": len(report.fixed),
            "unresolved": len(report.unresolved)}  # fmt: skip
