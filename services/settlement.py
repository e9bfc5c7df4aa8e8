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
2. :func:`~services.settlement_match.match` — the day's stored lines against the payments and
   refunds they name and those we expected on the day (:mod:`services.settlement_match`).
3. :func:`~services.settlement_report.report` — the day's figures (per provider and currency),
   files and differences (:mod:`services.settlement_report`).
4. :func:`~services.settlement_report.resolve` — a person closes a difference with their name
   and a note (once).

Days are calendar dates in the provider's bill time zone (:func:`domain.settlement.bill_zone`:
UTC for Stripe, China Standard Time for Alipay and WeChat Pay).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from adapters.payments.settlement import Bill, BillNotReady, BillRefused, SettlementSource
from models import SettlementFile, SettlementLine
from services.settlement_match import MatchResult, match
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
