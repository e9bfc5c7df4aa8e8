"""Reconciliation: compare our payments with what the provider says, fix what is safe to fix,
and list the rest for an operator.

Checked: every payment not in a final state (CREATING, PENDING), plus a random sample of final
ones. Safe fixes are exactly the ones the normal confirmation path would make (a payment paid at
the provider but not here is applied through :func:`services.payments.apply_status`, which
moves the order on, or refunds it if the order is already over). Everything else — the provider
says unpaid while we recorded money, amounts that differ — is reported, never overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.payments.base import PaymentRef, PaymentState, TradeStatus
from domain.errors import ProviderError
from domain.money import Money
from domain.payments import CAPTURED, PaymentStatus
from models import Payment
from services import payments, timeline
from services.followup import Followup
from services.order_state import lock_order
from services.payments import Providers
from services.ports import Ports


@dataclass(frozen=True, slots=True)
class Finding:
    order_id: str
    provider: str
    out_trade_no: str
    ours: str
    theirs: str
    action: str  # "fixed: …", "ok", "report: …", "error: …"


@dataclass
class ReconcileReport:
    checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    followups: list[Followup] = field(default_factory=list)  # refunds to carry out

    @property
    def fixed(self) -> list[Finding]:
        return [f for f in self.findings if f.action.startswith("fixed")]

    @property
    def unresolved(self) -> list[Finding]:
        return [f for f in self.findings if f.action.startswith(("report", "error"))]


def select_candidates(session: Session, sample: int) -> list[tuple[int, str, str, PaymentRef]]:
    """(payment id, order id, provider, ref) for open payments plus a sample of final ones."""
    open_rows = session.execute(
        select(Payment.id, Payment.order_id, Payment.provider, Payment.out_trade_no,
               Payment.provider_ref)
        .where(Payment.status.in_([PaymentStatus.CREATING, PaymentStatus.PENDING]))
        .order_by(Payment.id)
    ).all()  # fmt: skip
    final_rows = session.execute(
        select(Payment.id, Payment.order_id, Payment.provider, Payment.out_trade_no,
               Payment.provider_ref)
        .where(Payment.status.notin_([PaymentStatus.CREATING, PaymentStatus.PENDING]))
        .order_by(func.random())
        .limit(sample)
    ).all()  # fmt: skip
    return [(r[0], r[1], r[2], PaymentRef(r[3], r[4])) for r in [*open_rows, *final_rows]]


def judge(
    session: Session, payment_id: int, theirs: TradeStatus, *, now: datetime
) -> tuple[str, list[Followup]]:
    """Compare one payment with the provider's view; apply safe fixes (rows locked for that)."""
    payment = session.get(Payment, payment_id)
    assert payment is not None
    ours = payment.status
    paid_there = theirs.state in (PaymentState.PAID, PaymentState.REFUNDED)
    if (
        paid_there
        and theirs.amount is not None
        and theirs.amount != Money(payment.amount, payment.currency)
    ):
        return f"report: provider amount {theirs.amount} differs from ours", []  # fmt: skip
    if paid_there and ours not in CAPTURED:
        order = lock_order(session, payment.order_id)
        payment = payments.lock_payment(session, payment.order_id)
        assert payment is not None
        followups = payments.apply_status(session, order, payment, theirs, now=now,
                                          source="reconcile")  # fmt: skip
        timeline.record(session, order.id, "reconcile", detail={"fixed": "paid at provider"})
        action = "fixed: recorded the payment" + (" and refunded it" if followups else "")
        return action, followups
    if ours in CAPTURED and not paid_there:
        return f"report: we recorded {ours}, provider says {theirs.state}", []
    return "ok", []


def reconcile(providers: Providers, ports: Ports, *, sample: int) -> ReconcileReport:
    """Run the whole reconciliation: each candidate is queried through the gate with no
    transaction open (an open circuit or a provider error is an ``error:`` finding, and the
    rest go on). The report's ``followups`` (refunds) are for the caller to publish."""
    report = ReconcileReport()
    with ports.uow() as session:
        candidates = select_candidates(session, sample)
    for payment_id, order_id, provider, ref in candidates:
        report.checked += 1
        with ports.uow() as session:
            ours = session.scalar(select(Payment.status).where(Payment.id == payment_id)) or "?"
        try:
            theirs = _query(providers, ports, provider, order_id, ref)
        except ProviderError as exc:
            report.findings.append(
                Finding(order_id, provider, ref.out_trade_no, ours, "?", f"error: {exc}")
            )
            continue
        with ports.uow() as session:
            action, followups = judge(session, payment_id, theirs, now=ports.clock())
        report.followups += followups
        if action != "ok":
            report.findings.append(
                Finding(order_id, provider, ref.out_trade_no, ours, str(theirs.state), action)
            )
    return report


def _query(
    providers: Providers, ports: Ports, provider: str, order_id: str, ref: PaymentRef
) -> TradeStatus:
    adapter = providers(provider)
    return ports.gate.call(provider, "reconcile", order_id, lambda: adapter.query(ref), request=ref)
