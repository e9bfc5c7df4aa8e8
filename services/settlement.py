"""Settlement reconciliation: fetch a provider's daily bill, match it against our payments and
refunds, report the day's figures and differences, and let a person resolve each difference.

Use cases (the CLI's ``orderflow settlement fetch|match|report|resolve``, and the beat job
:func:`run_due`):

1. :func:`fetch` — per bill type of the source: a bill already ``stored`` is not fetched again
   (idempotent per provider, account, date and bill type). Otherwise the source is called with
   no transaction open, then one transaction stores the file (raw content, SHA-256, size) and
   all its lines, or nothing. A bill not ready yet stores nothing (``not_ready``, asked again
   later); a refused bill (truncated, hash mismatch, unknown line type, another merchant's)
   stores only its reason on a ``refused`` file row, no content and no lines, and is fetched
   again next time. Network and provider errors propagate (the task retries them).
   Settlement calls do not go through the order-centric provider gate: no order is involved,
   and the daily job retries by itself.
2. :func:`match` — the day's stored lines against the payments and refunds they name and those
   we expected on the day (:func:`domain.settlement.match_day`): lines get our payment and
   refund ids, differences are inserted once (unique per provider, account, date, kind and
   reference: matching twice changes nothing), the files get ``matched_at``. Nothing is
   written to payments or refunds: a difference is for a person.
3. :func:`report` — per provider and currency: gross, refunds, fees, adjustments, net (from the
   stored lines), the files' state, and every difference of the day.
4. :func:`resolve` — a person closes a difference with their name and a note (once).

Days are calendar dates in the provider's bill time zone (:func:`domain.settlement.bill_zone`:
UTC for Stripe, China Standard Time for Alipay and WeChat Pay). "Expected on the day": payments
of the provider captured with ``paid_at`` in the day, refunds created in the day and SUCCEEDED
or PENDING. The boundary is not smoothed over: a payment captured a moment before midnight whose
charge the provider books just after it is ``missing_there`` on its own day (a person resolves
it with a note), while the next day's charge line still finds it by reference (no
``missing_here``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from adapters.payments.settlement import Bill, BillNotReady, BillRefused, SettlementSource
from domain.errors import ConflictError, NotFound, ValidationError
from domain.settlement import (
    BOOKED_REFUND_STATUSES,
    CAPTURED_STATUSES,
    BillLine,
    LineKind,
    OurPayment,
    OurRefund,
    bill_zone,
    day_bounds,
    day_totals,
    match_day,
    refunds_have_own_ref,
)
from models import Payment, Refund, SettlementDifference, SettlementFile, SettlementLine
from services.payments.provider_refunds import provider_refund_no
from services.unit_of_work import UnitOfWork, unit_of_work

Sources = Callable[[str], SettlementSource]
_ERROR_LEN = 500


@dataclass(frozen=True, slots=True)
class FetchResult:
    provider: str
    account: str
    day: date
    bill_type: str
    status: str  # stored | already_stored | not_ready | refused
    detail: str = ""
    lines: int = 0


@dataclass(frozen=True, slots=True)
class MatchResult:
    provider: str
    account: str
    day: date
    lines: int
    new_differences: int
    differences: int


# -- fetch ----------------------------------------------------------------------------------------
def fetch(
    source: SettlementSource, day: date, *, now: datetime, uow: UnitOfWork = unit_of_work
) -> list[FetchResult]:
    """Fetch and store each bill type of ``day`` not stored yet (see the module docstring)."""
    return [_fetch_one(source, day, bill_type, now, uow) for bill_type in source.bill_types]


def _fetch_one(
    source: SettlementSource, day: date, bill_type: str, now: datetime, uow: UnitOfWork
) -> FetchResult:
    def result(status: str, detail: str = "", lines: int = 0) -> FetchResult:
        return FetchResult(source.name, source.account, day, bill_type, status, detail, lines)

    with uow() as session:
        stored = session.scalar(
            select(SettlementFile.line_count).where(
                *_file_key(source.name, source.account, day, bill_type),
                SettlementFile.status == "stored",
            )
        )
    if stored is not None:
        return result("already_stored", lines=stored)
    try:
        bill = source.fetch_bill(day, bill_type, now=now)
    except BillNotReady as exc:
        return result("not_ready", str(exc))
    except BillRefused as exc:
        with uow() as session:
            _record_refused(session, source, day, bill_type, str(exc), now)
        return result("refused", str(exc))
    if (bill.provider, bill.account, bill.day, bill.bill_type) != (
        source.name, source.account, day, bill_type,
    ):  # fmt: skip
        raise AssertionError(f"{source.name} returned the bill of another day or account")
    with uow() as session:
        if not _store(session, bill, now):
            return result("already_stored", lines=len(bill.lines))
    return result("stored", lines=len(bill.lines))


def _file_key(provider: str, account: str, day: date, bill_type: str) -> tuple[Any, ...]:
    return (
        SettlementFile.provider == provider,
        SettlementFile.account == account,
        SettlementFile.bill_date == day,
        SettlementFile.bill_type == bill_type,
    )


_KEY_COLUMNS = ["provider", "account", "bill_date", "bill_type"]


def _record_refused(
    session: Session, source: SettlementSource, day: date, bill_type: str, error: str,
    now: datetime,
) -> None:  # fmt: skip
    """A refused file row (its reason, no content); a stored file is never turned back."""
    values = {
        "provider": source.name, "account": source.account, "bill_date": day,
        "bill_type": bill_type, "status": "refused", "error": error[:_ERROR_LEN],
        "fetched_at": now,
    }  # fmt: skip
    stmt = insert(SettlementFile).values(values)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=_KEY_COLUMNS,
            set_={
                "error": stmt.excluded.error,
                "fetched_at": now,
                "attempts": SettlementFile.attempts + 1,
                "updated_at": func.now(),
            },
            where=SettlementFile.status == "refused",
        )
    )


def _store(session: Session, bill: Bill, now: datetime) -> bool:
    """Insert the file (or turn a refused row into it) and all its lines; False when another
    fetch stored it first (then nothing is written)."""
    values = {
        "provider": bill.provider, "account": bill.account, "bill_date": bill.day,
        "bill_type": bill.bill_type, "status": "stored", "sha256": bill.sha256,
        "size": len(bill.raw), "content": bill.raw, "line_count": len(bill.lines),
        "error": None, "fetched_at": now,
    }  # fmt: skip
    stmt = insert(SettlementFile).values(values)
    file_id = session.scalar(
        stmt.on_conflict_do_update(
            index_elements=_KEY_COLUMNS,
            set_={**{k: stmt.excluded[k] for k in ("status", "sha256", "size", "content",
                                                    "line_count", "error", "fetched_at")},
                  "attempts": SettlementFile.attempts + 1, "updated_at": func.now()},
            where=SettlementFile.status == "refused",
        ).returning(SettlementFile.id)
    )  # fmt: skip
    if file_id is None:
        return False
    if bill.lines:
        session.execute(
            insert(SettlementLine),
            [
                {"file_id": file_id, "line_no": n, "line_id": line.line_id,
                 "kind": line.kind.value, "raw_type": line.raw_type,
                 "source_ref": line.source_ref, "payment_ref": line.payment_ref,
                 "refund_ref": line.refund_ref,
                 "merchant_payment_ref": line.merchant_payment_ref,
                 "merchant_refund_ref": line.merchant_refund_ref,
                 "amount": line.amount, "fee": line.fee,
                 "net": line.net, "currency": line.currency, "occurred_at": line.occurred_at}
                for n, line in enumerate(bill.lines, start=1)
            ],
        )  # fmt: skip
    return True


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
    lines = [_bill_line(row) for row in rows]
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


def _bill_line(row: SettlementLine) -> BillLine:
    return BillLine(
        line_id=row.line_id, kind=LineKind(row.kind), raw_type=row.raw_type,
        source_ref=row.source_ref, payment_ref=row.payment_ref, refund_ref=row.refund_ref,
        amount=row.amount, fee=row.fee, net=row.net, currency=row.currency,
        occurred_at=row.occurred_at, merchant_payment_ref=row.merchant_payment_ref,
        merchant_refund_ref=row.merchant_refund_ref,
    )  # fmt: skip


def _our_payments(
    session: Session, provider: str, day: date, lines: Iterable[BillLine]
) -> list[OurPayment]:
    start, end = day_bounds(day, bill_zone(provider))
    refs = {line.payment_ref for line in lines if line.payment_ref}
    numbers = {line.merchant_payment_ref for line in lines if line.merchant_payment_ref}
    expected = (
        Payment.status.in_(sorted(CAPTURED_STATUSES))
        & (Payment.paid_at >= start)
        & (Payment.paid_at < end)
    )
    rows = session.execute(
        select(Payment.id, Payment.provider_ref, Payment.out_trade_no, Payment.amount,
               Payment.currency, Payment.captured_amount, Payment.captured_currency,
               Payment.status, expected.label("expected"))
        .where(Payment.provider == provider)
        .where(Payment.provider_ref.in_(sorted(refs)) | Payment.out_trade_no.in_(sorted(numbers))
               | expected)
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
    start, end = day_bounds(day, bill_zone(provider))
    refs = {line.refund_ref for line in lines if line.refund_ref}
    numbers = {line.merchant_refund_ref for line in lines if line.merchant_refund_ref}
    made_there = _provider_made_numbers(lines, payments)
    expected = Refund.status.in_(sorted(BOOKED_REFUND_STATUSES)) & (
        Refund.created_at >= start
    ) & (Refund.created_at < end)  # fmt: skip
    wanted = numbers | set(made_there)
    rows = session.execute(
        select(Refund.id, Refund.payment_id, Refund.provider_refund_ref, Refund.refund_no,
               Refund.amount, Refund.currency, Refund.status, expected.label("expected"))
        .join(Payment, Payment.id == Refund.payment_id)
        .where(Payment.provider == provider)
        .where(Refund.provider_refund_ref.in_(sorted(refs)) | Refund.refund_no.in_(sorted(wanted))
               | expected)
    )  # fmt: skip
    return [
        OurRefund(
            id=r.id,
            payment_id=r.payment_id,
            provider_ref=None if not refunds_have_own_ref(provider) else r.provider_refund_ref,
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


# -- report and resolve ---------------------------------------------------------------------------
def report(session: Session, day: date, provider: str | None = None) -> dict[str, Any]:
    """The day's files, figures (per provider and currency) and differences, as plain data."""
    file_q = select(SettlementFile).where(SettlementFile.bill_date == day)
    diff_q = select(SettlementDifference).where(SettlementDifference.bill_date == day)
    if provider:
        file_q = file_q.where(SettlementFile.provider == provider)
        diff_q = diff_q.where(SettlementDifference.provider == provider)
    files = list(session.scalars(file_q.order_by(SettlementFile.provider, SettlementFile.id)))
    figures: list[dict[str, Any]] = []
    for f in files:
        if f.status != "stored":
            continue
        rows = session.scalars(select(SettlementLine).where(SettlementLine.file_id == f.id))
        for currency, t in sorted(day_totals(_bill_line(r) for r in rows).items()):
            figures.append(
                {"provider": f.provider, "account": f.account, "bill_type": f.bill_type,
                 "currency": currency, "gross": t.gross, "refunds": t.refunds, "fees": t.fees,
                 "adjustments": t.adjustments, "net": t.net, "lines": t.lines}
            )  # fmt: skip
    return {
        "date": day.isoformat(),
        "files": [
            {
                "provider": f.provider,
                "account": f.account,
                "bill_type": f.bill_type,
                "status": f.status,
                "sha256": f.sha256,
                "size": f.size,
                "lines": f.line_count,
                "fetched_at": f.fetched_at,
                "matched_at": f.matched_at,
                "error": f.error,
            }
            for f in files
        ],
        "figures": figures,
        "differences": [
            _difference(d) for d in session.scalars(diff_q.order_by(SettlementDifference.id))
        ],
    }


def _difference(d: SettlementDifference) -> dict[str, Any]:
    return {
        "id": d.id, "provider": d.provider, "account": d.account,
        "date": d.bill_date.isoformat(), "kind": d.kind, "ref": d.ref, "currency": d.currency,
        "ours": d.ours, "theirs": d.theirs, "detail": d.detail, "payment_id": d.payment_id,
        "refund_id": d.refund_id, "created_at": d.created_at, "resolved_at": d.resolved_at,
        "resolved_by": d.resolved_by, "resolution_note": d.resolution_note,
    }  # fmt: skip


def resolve(
    session: Session, difference_id: int, *, actor: str, note: str, now: datetime
) -> dict[str, Any]:
    """Close a difference with who and why; a resolved one cannot be resolved again."""
    note = note.strip()
    if not note:
        raise ValidationError("note", "say what was done (it is kept with the difference)")
    if len(note) > 500:
        raise ValidationError("note", "at most 500 characters")
    row = session.get(SettlementDifference, difference_id, with_for_update=True)
    if row is None:
        raise NotFound(f"no settlement difference {difference_id}", field="id")
    if row.resolved_at is not None:
        raise ConflictError(
            f"difference {difference_id} was resolved by {row.resolved_by} at "
            f"{row.resolved_at:%Y-%m-%d %H:%M}",
            field="id",
        )
    session.execute(
        update(SettlementDifference)
        .where(SettlementDifference.id == difference_id)
        .values(resolved_at=now, resolved_by=actor, resolution_note=note)
    )
    session.refresh(row)
    return _difference(row)


# -- the daily job --------------------------------------------------------------------------------
def run_due(
    sources: Sources, providers: Iterable[str], *, now: datetime, lookback_days: int,
    uow: UnitOfWork = unit_of_work,
) -> list[FetchResult | MatchResult]:  # fmt: skip
    """The beat job: for each of the ``lookback_days`` days before today, fetch the bills not
    stored yet (not ready or refused ones are asked again on the next run) and match the days
    with a stored file not matched yet. Harmless when it runs twice at once (both steps are
    idempotent)."""
    done: list[FetchResult | MatchResult] = []
    today = now.date()
    for provider in providers:
        source = sources(provider)
        for back in range(lookback_days, 0, -1):
            day = today - timedelta(days=back)
            done.extend(fetch(source, day, now=now, uow=uow))
            with uow() as session:
                unmatched = session.scalar(
                    select(func.count()).where(
                        SettlementFile.provider == provider,
                        SettlementFile.account == source.account,
                        SettlementFile.bill_date == day, SettlementFile.status == "stored",
                        SettlementFile.matched_at.is_(None),
                    )
                )  # fmt: skip
                if unmatched:
                    done.append(match(session, provider, source.account, day, now=now))
    return done
