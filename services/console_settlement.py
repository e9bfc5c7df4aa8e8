"""What the ops console's Settlement page reads (``/console/settlement``), one bill date at a
time. Reads only: resolving a difference is :func:`services.settlement_report.resolve`.

* :func:`day_page` — :func:`services.settlement_report.report` of the day (the figures per
  provider, bill type and currency, the files' states and every difference: the CLI's ``orderflow
  settlement report``), with each difference's order when its payment or refund is known
  (``order_id``, one query for the day) and the differences open first, then oldest first.
* :func:`recent_days` — the last bill dates that have a file of any provider and in any state,
  newest first, with how many files, refused files and open differences each has. Two grouped
  queries over small tables (a few file rows per provider and day).
* :func:`open_differences` — how many differences are unresolved in all and the oldest bill
  date among them (the Attention page links to it); the unresolved set is what the partial index
  ``ix_settlement_differences_open`` holds, so this stays cheap however old the table grows.

Days are the providers' bill dates as stored (:func:`domain.settlement.bill_zone`: a UTC day
for Stripe, a Beijing day for Alipay and WeChat Pay); the page does not convert them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import Payment, Refund, SettlementDifference, SettlementFile
from services import settlement_report

RECENT_DAYS = 14


@dataclass(frozen=True, slots=True)
class DaySummary:
    day: date
    files: int
    refused: int
    open_differences: int


@dataclass(frozen=True, slots=True)
class OpenDifferences:
    count: int
    oldest_day: date | None


def day_page(session: Session, day: date) -> dict[str, Any]:
    """The report of ``day`` (see :func:`services.settlement_report.report`); its
    ``differences`` are sorted open first and each carries ``order_id`` (None when no payment or
    refund of ours is known); ``open`` counts the unresolved ones."""
    data = settlement_report.report(session, day)
    differences: list[dict[str, Any]] = data["differences"]
    orders = _orders_of(session, differences)
    for d in differences:
        d["order_id"] = orders.get(("payment", d["payment_id"])) or orders.get(
            ("refund", d["refund_id"])
        )
    differences.sort(key=lambda d: (d["resolved_at"] is not None, d["id"]))
    data["open"] = sum(d["resolved_at"] is None for d in differences)
    return data


def _orders_of(session: Session, differences: list[dict[str, Any]]) -> dict[tuple[str, int], str]:
    """``("payment"|"refund", id) → order id`` for the payments and refunds the differences
    name."""
    payment_ids = {d["payment_id"] for d in differences if d["payment_id"] is not None}
    refund_ids = {d["refund_id"] for d in differences if d["refund_id"] is not None}
    found: dict[tuple[str, int], str] = {}
    if payment_ids:
        rows = session.execute(
            select(Payment.id, Payment.order_id).where(Payment.id.in_(sorted(payment_ids)))
        )
        found.update({("payment", r.id): r.order_id for r in rows})
    if refund_ids:
        rows = session.execute(
            select(Refund.id, Refund.order_id).where(Refund.id.in_(sorted(refund_ids)))
        )
        found.update({("refund", r.id): r.order_id for r in rows})
    return found


def recent_days(session: Session, limit: int = RECENT_DAYS) -> list[DaySummary]:
    """The ``limit`` latest bill dates with at least one file, newest first."""
    days = session.execute(
        select(
            SettlementFile.bill_date,
            func.count().label("files"),
            func.count().filter(SettlementFile.status == "refused").label("refused"),
        )
        .group_by(SettlementFile.bill_date)
        .order_by(SettlementFile.bill_date.desc())
        .limit(limit)
    ).all()
    if not days:
        return []
    open_by_day = dict(
        session.execute(
            select(SettlementDifference.bill_date, func.count())
            .where(
                SettlementDifference.resolved_at.is_(None),
                SettlementDifference.bill_date.in_([r.bill_date for r in days]),
            )
            .group_by(SettlementDifference.bill_date)
        )
        .tuples()
        .all()
    )
    return [
        DaySummary(r.bill_date, r.files, r.refused, open_by_day.get(r.bill_date, 0)) for r in days
    ]


def open_differences(session: Session) -> OpenDifferences:
    """How many differences are unresolved, and the oldest bill date among them."""
    count, oldest = session.execute(
        select(func.count(), func.min(SettlementDifference.bill_date)).where(
            SettlementDifference.resolved_at.is_(None)
        )
    ).one()
    return OpenDifferences(int(count), oldest)


def order_of(session: Session, difference: dict[str, Any]) -> str | None:
    """The order a difference (as :func:`services.settlement_report.resolve` returns it)
    concerns, when its payment or refund is known."""
    found = _orders_of(session, [difference])
    return found.get(("payment", difference["payment_id"])) or found.get(
        ("refund", difference["refund_id"])
    )
