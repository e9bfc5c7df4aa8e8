"""Settlement report and resolve (use cases 3 and 4 of :mod:`services.settlement`).

:func:`report` — per provider and currency: gross, refunds, fees, adjustments, net (from the
stored lines), the files' state, and every difference of the day.

:func:`resolve` — a person closes a difference with their name and a note (once).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from domain.errors import ConflictError, NotFound, ValidationError
from domain.settlement import day_totals
from models import SettlementDifference, SettlementFile, SettlementLine
from services.settlement_match import bill_line


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
        for currency, t in sorted(day_totals(bill_line(r) for r in rows).items()):
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
