"""Settlement matching (use case 2 of :mod:`services.settlement`): a day's stored bill lines
against our payments and refunds.

:func:`match` — the day's stored lines against the payments and refunds they name and those we
expected on the day (:func:`domain.settlement.match_day`): lines get our payment and refund
ids, differences are inserted once (unique per provider, account, date, kind and reference:
matching twice changes nothing), the files get ``matched_at``. Nothing is written to payments
or refunds: a difference is for a person.

Days are calendar dates in the provider's bill time zone (:func:`domain.settlement.bill_zone`:
UTC for Stripe, China Standard Time for Alipay and WeChat Pay). "Expected on the day": payments
of the provider captured with ``paid_at`` in the day, refunds created in the day and SUCCEEDED
or PENDING. The boundary is not smoothed over: a payment captured a moment before midnight whose
charge the provider books just after it is ``missing_there`` on its own day (a person resolves
it with a note), while the next day's charge line still finds it by reference (no
``missing_here``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeAlias

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import InstrumentedAttribute, Session

from domain.errors import NotFound
from domain.settlement import (
    BOOKED_REFUND_STATUSES,
    CAPTURED_STATUSES,
    BillLine,
    LineKind,
    OurPayment,
    OurRefund,
    bill_zone,
    day_bounds,
    match_day,
)
from models import Payment, Refund, SettlementDifference, SettlementFile, SettlementLine
from services.payments.provider_refunds import provider_refund_no

_Column: TypeAlias = InstrumentedAttribute[Any]


@dataclass(frozen=True, slots=True)
class MatchResult:
    provider: str
    account: str
    day: date
    lines: int
    new_differences: int
    differences: int


# -- match ----------------------------------------------------------------------------------------
def match(
    session: Session, provider: str, account: str, day: date, *, now: datetime
) -> MatchResult:
    """Match ``day``'s stored bill lines and record the differences (see the module docstring).
    Raises :class:`NotFound` when no bill of the day is stored."""
    files = list(
        session.scalars(
            select(SettlementFile)
            .where(
                SettlementFile.provider == provider, SettlementFile.account == account,
                SettlementFile.bill_date == day, SettlementFile.status == "stored",
            )
            .with_for_update()
        )
    )  # fmt: skip
    if not files:
        raise NotFound(
            f"no stored {provider} bill for {day}: run 'orderflow settlement fetch' first",
            field="date",
        )
    rows = list(
        session.scalars(
            select(SettlementLine)
            .where(SettlementLine.file_id.in_([f.id for f in files]))
            .order_by(SettlementLine.file_id, SettlementLine.line_no)
        )
    )
    lines = [bill_line(row) for row in rows]
    decided = match_day(
        lines,
        payments := _our_payments(session, provider, day, lines),
        _our_refunds(session, provider, day, lines, payments),
    )
    for row in rows:
        found = decided.matches.get(row.line_id)
        if found and (row.payment_id, row.refund_id) != (found.payment_id, found.refund_id):
            row.payment_id, row.refund_id = found.payment_id, found.refund_id
    new = 0
    for d in decided.differences:
        inserted = session.execute(
            insert(SettlementDifference)
            .values(
                provider=provider, account=account, bill_date=day, kind=d.kind.value, ref=d.ref,
                currency=d.currency, ours=d.ours, theirs=d.theirs, detail=d.detail[:300],
                line_id=d.line_id, payment_id=d.payment_id, refund_id=d.refund_id,
            )
            .on_conflict_do_nothing(
                index_elements=["provider", "account", "bill_date", "kind", "ref"]
            )
            .returning(SettlementDifference.id)
        ).scalar()  # fmt: skip
        new += inserted is not None
    for f in files:
        f.matched_at = now
    total = session.scalar(
        select(func.count()).where(
            SettlementDifference.provider == provider, SettlementDifference.account == account,
            SettlementDifference.bill_date == day,
        )
    )  # fmt: skip
    return MatchResult(provider, account, day, len(rows), new, int(total or 0))


def bill_line(row: SettlementLine) -> BillLine:
    """A stored bill line as :mod:`domain.settlement` sees it."""
    return BillLine(
        line_id=row.line_id, kind=LineKind(row.kind), raw_type=row.raw_type,
        source_ref=row.source_ref, payment_ref=row.payment_ref, refund_ref=row.refund_ref,
        amount=row.amount, fee=row.fee, net=row.net, currency=row.currency,
        occurred_at=row.occurred_at, merchant_payment_ref=row.merchant_payment_ref,
        merchant_refund_ref=row.merchant_refund_ref,
    )  # fmt: skip


def _named_or_expected(
    provider: str, day: date, status: _Column, statuses: frozenset[str], at: _Column,
    named: Iterable[tuple[_Column, Iterable[str | None]]],
) -> tuple[ColumnElement[bool], ColumnElement[bool]]:  # fmt: skip
    """``(expected, wanted)`` for a lookup of our payments or refunds: expected, a ``status``
    in ``statuses`` with ``at`` in the provider's bill day; wanted, that or a row whose column
    holds one of the (non-empty) values the lines give for it, per ``named`` pair."""
    start, end = day_bounds(day, bill_zone(provider))
    expected = status.in_(sorted(statuses)) & (at >= start) & (at < end)
    by_name = [column.in_(sorted({v for v in values if v})) for column, values in named]
    return expected, or_(*by_name, expected)


def _our_payments(
    session: Session, provider: str, day: date, lines: Iterable[BillLine]
) -> list[OurPayment]:
    lines = list(lines)
    expected, wanted = _named_or_expected(
        provider, day, Payment.status, CAPTURED_STATUSES, Payment.paid_at,
        [(Payment.provider_ref, [line.payment_ref for line in lines]),
         (Payment.out_trade_no, [line.merchant_payment_ref for line in lines])],
    )  # fmt: skip
    rows = session.execute(
        select(Payment.id, Payment.provider_ref, Payment.out_trade_no, Payment.amount,
               Payment.currency, Payment.captured_amount, Payment.captured_currency,
               Payment.status, expected.label("expected"))
        .where(Payment.provider == provider, wanted)
    )  # fmt: skip
    return [
        OurPayment(
            id=r.id,
            provider_ref=r.provider_ref,
            out_trade_no=r.out_trade_no,
            amount=r.amount if r.captured_amount is None else r.captured_amount,
            currency=r.captured_currency or r.currency,
            status=r.status,
            expected=bool(r.expected),
        )
        for r in rows
    ]


def _our_refunds(
    session: Session, provider: str, day: date, lines: Iterable[BillLine],
    payments: Iterable[OurPayment],
) -> list[OurRefund]:  # fmt: skip
    """Our refunds the lines name (by the provider's reference or our refund number) and those
    expected on the day. A refund made at the provider is stored under
    :func:`~services.payments.provider_refunds.provider_refund_no` (``provider-<payment
    id>-<their number>``) while the bill names it by their number (Alipay's ``out_request_no``
    of a console refund): it is looked up by that exact number, through the payment the line
    names, and offered to matching under the bill's number."""
    lines = list(lines)
    made_there = _provider_made_numbers(lines, payments)
    expected, wanted = _named_or_expected(
        provider, day, Refund.status, BOOKED_REFUND_STATUSES, Refund.created_at,
        [(Refund.provider_refund_ref, [line.refund_ref for line in lines]),
         (Refund.refund_no, [*(line.merchant_refund_ref for line in lines), *made_there])],
    )  # fmt: skip
    rows = session.execute(
        select(Refund.id, Refund.payment_id, Refund.provider_refund_ref, Refund.refund_no,
               Refund.amount, Refund.currency, Refund.status, expected.label("expected"))
        .join(Payment, Payment.id == Refund.payment_id)
        .where(Payment.provider == provider, wanted)
    )  # fmt: skip
    return [
        OurRefund(
            id=r.id,
            payment_id=r.payment_id,
            provider_ref=r.provider_refund_ref,  # None at Alipay: it names no refund
            refund_no=made_there.get(r.refund_no, r.refund_no),
            amount=r.amount,
            currency=r.currency,
            status=r.status,
            expected=bool(r.expected),
        )
        for r in rows
    ]


def _provider_made_numbers(
    lines: Iterable[BillLine], payments: Iterable[OurPayment]
) -> dict[str, str]:
    """``provider_refund_no(payment, n) → n`` for each refund line naming its payment and a
    refund number ``n``."""
    by_ref = {p.provider_ref: p.id for p in payments if p.provider_ref}
    by_no = {p.out_trade_no: p.id for p in payments if p.out_trade_no}
    found: dict[str, str] = {}
    for line in lines:
        number = line.merchant_refund_ref
        if line.kind not in (LineKind.REFUND, LineKind.REFUND_FAILURE) or not number:
            continue
        payment_id = by_ref.get(line.payment_ref or "") or by_no.get(
            line.merchant_payment_ref or ""
        )
        if payment_id is not None:
            found[provider_refund_no(payment_id, number)] = number
    return found
