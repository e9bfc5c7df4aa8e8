"""Payment-stage tasks. Each one: prepare (transaction), call the provider (no transaction),
finish (transaction), enqueue follow-ups after the commit. See :mod:`services.payments`."""

from __future__ import annotations

import logging

from adapters.payments.base import REPLAYED_FAILURE, SETTLED_ON_CREATE, PaymentRef
from adapters.payments.base import PaymentStatus as ProviderStatus
from adapters.registry import payment_provider
from domain.errors import ProviderRejected, ProviderUnavailable
from services import payments, reconcile
from services.task_names import (
    MAINTENANCE_POLL_PAYMENTS,
    MAINTENANCE_RECONCILE,
    PAYMENTS_CLOSE,
    PAYMENTS_CREATE,
    PAYMENTS_EXPIRE,
    PAYMENTS_QUERY,
    PAYMENTS_REFUND,
)
from services.unit_of_work import unit_of_work
from settings import get_settings
from tasks.base import OrderflowTask, utcnow
from tasks.providers import CircuitOpen, call
from workers.app import app
from workers.publish import enqueue_followups

log = logging.getLogger(__name__)


@app.task(name=PAYMENTS_CREATE, base=OrderflowTask, bind=True, order_id_arg=0)
def create_payment(self: OrderflowTask, order_id: str) -> str:
    """Create the payment at the provider; RESERVED -> AWAITING_PAYMENT."""
    s = get_settings()
    try:
        with unit_of_work() as session:
            plan = payments.prepare_create(
                session, order_id, now=utcnow(), notify_base_url=s.public_base_url,
                redrive_s=s.create_redrive_s,
            )  # fmt: skip
        if plan is None:
            return "noop"
        try:
            created = call(
                plan.provider,
                "create",
                order_id,
                lambda: payment_provider(plan.provider).create(plan.request),
                request=plan.request,
            )
        except CircuitOpen:
            return "circuit_open"  # the sweeper re-drives it at the stage deadline
        except ProviderRejected as exc:
            if exc.code in SETTLED_ON_CREATE:
                with unit_of_work() as session:
                    followup = payments.settled_on_create(session, order_id, exc, now=utcnow())
                enqueue_followups([followup] if followup else [])
                return "settled_at_provider"
            with unit_of_work() as session:
                payments.fail_create(session, order_id, exc)
            return "rejected"
        except ProviderUnavailable as exc:
            if exc.code == REPLAYED_FAILURE:
                with unit_of_work() as session:
                    payments.rotate_create_key(session, order_id)
            raise
        with unit_of_work() as session:
            payments.finish_create(
                session, order_id, created, now=utcnow(), first_query_s=s.payment_query_first_s
            )
    except Exception as exc:
        self.retry_or_fail(exc)
    return "created"


@app.task(name=PAYMENTS_QUERY, base=OrderflowTask, bind=True)
def query_payment(self: OrderflowTask, payment_id: int) -> str:
    """Poll the provider for a pending payment (the fallback when no notification came)."""
    try:
        with unit_of_work() as session:
            plan = payments.prepare_query(session, payment_id)
        if plan is None:
            return "noop"
        try:
            status = call(
                plan.provider,
                "query",
                plan.order_id,
                lambda: payment_provider(plan.provider).query(plan.request),
                request=plan.request,
            )
        except CircuitOpen:
            return "circuit_open"  # next poll tick tries again
        with unit_of_work() as session:
            followups = payments.finish_query(session, plan.order_id, status, now=utcnow())
    except Exception as exc:
        self.retry_or_fail(exc)
    enqueue_followups(followups)
    return str(status.state)


def _close(task: OrderflowTask, order_id: str) -> str:
    try:
        with unit_of_work() as session:
            plan = payments.prepare_close(
                session, order_id, now=utcnow(), notify_base_url=get_settings().public_base_url
            )
        if plan is None:
            return "noop"
        try:
            result = call(
                plan.provider,
                "close",
                order_id,
                lambda: payment_provider(plan.provider).close(plan.request),
                request=plan.request,
            )
        except CircuitOpen:
            return "circuit_open"  # the sweeper comes back after the lease
        with unit_of_work() as session:
            followups = payments.finish_close(session, order_id, plan.request, result, now=utcnow())
    except Exception as exc:
        task.retry_or_fail(exc)
    enqueue_followups(followups)
    return "closed" if result.closed else "paid"


@app.task(name=PAYMENTS_EXPIRE, base=OrderflowTask, bind=True, order_id_arg=0)
def expire_payment(self: OrderflowTask, order_id: str) -> str:
    """At the payment deadline: close the trade, then expire (or accept it if it was paid)."""
    return _close(self, order_id)


@app.task(name=PAYMENTS_CLOSE, base=OrderflowTask, bind=True, order_id_arg=0)
def close_payment(self: OrderflowTask, order_id: str) -> str:
    """After a cancel: close the trade (a trade found paid is refunded)."""
    return _close(self, order_id)


@app.task(name=PAYMENTS_REFUND, base=OrderflowTask, bind=True)
def refund(self: OrderflowTask, refund_id: int) -> str:
    """Carry out a requested refund, or check on one the provider accepted as pending (then it
    is queried, never sent again); the refund number makes repeats harmless."""
    try:
        with unit_of_work() as session:
            plan = payments.prepare_refund(session, refund_id)
        if plan is None:
            return "noop"
        req = plan.request
        adapter = payment_provider(plan.provider)
        if plan.query_only:
            operation, fn = "query_refund", lambda: adapter.query_refund(req.ref, req.refund_no)
        else:
            operation, fn = "refund", lambda: adapter.refund(req)
        try:
            result = call(plan.provider, operation, plan.order_id, fn, request=req)
        except CircuitOpen:
            return "circuit_open"  # the poll job re-drives it
        with unit_of_work() as session:
            payments.finish_refund(session, plan.order_id, req.refund_no, result, now=utcnow())
    except Exception as exc:
        self.retry_or_fail(exc)
    return str(result.state)


@app.task(name=MAINTENANCE_POLL_PAYMENTS, base=OrderflowTask, bind=True)
def poll_payments(self: OrderflowTask) -> int:
    """Beat: enqueue status queries for pending payments and re-drive unfinished refunds."""
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


def run_reconcile(sample: int) -> reconcile.ReconcileReport:
    """Reconcile through the circuit breakers; refunds it creates are enqueued after commit."""

    def query(provider: str, order_id: str, ref: PaymentRef) -> ProviderStatus:
        adapter = payment_provider(provider)
        return call(provider, "reconcile", order_id, lambda: adapter.query(ref), request=ref)

    report = reconcile.reconcile(unit_of_work, query, now=utcnow(), sample=sample)
    enqueue_followups(report.followups)
    return report


@app.task(name=MAINTENANCE_RECONCILE, base=OrderflowTask, bind=True)
def reconcile_payments(self: OrderflowTask) -> dict[str, int]:
    """Beat (daily): reconcile payments with the providers; the summary is logged."""
    try:
        report = run_reconcile(get_settings().reconcile_sample)
    except Exception as exc:
        self.retry_or_fail(exc)
    summary = {"checked": report.checked, "fixed": len(report.fixed),
               "unresolved": len(report.unresolved)}  # fmt: skip
    for finding in report.unresolved:
        log.warning("reconcile: %s", finding)
    return summary
