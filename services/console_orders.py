"""The ops console's order list (``/console/orders``): orders newest first, filtered, one page at
a time.

Filters (each optional, combined with AND), read by :meth:`OrderFilter.parse`:

1. ``status``: one order status, in any case (``paid`` is PAID); an unknown one is refused.
2. ``reason``: a piece of the reason, in any case (``mismatch`` finds ``amount_mismatch``; a
   prefix is a piece too).
3. ``provider`` (payment provider) and ``source``: exact.
4. ``older_than``: the order was received more than this long ago, by the database's clock:
   ``90`` (minutes), ``45m``, ``2h``, ``1d``, ``30s``.

Pages are keyset pages on ``(created_at, id)``, so a page deep in the list costs what the first
does and an order arriving meanwhile shifts nothing. Each filter has an index that ends with
``created_at`` (migration 0011): a page walks one index newest first and stops after
:data:`PER_PAGE` rows that match. The total counts the filtered orders up to :data:`TOTAL_CAP`
(beyond it the page says "more than"): an exact count of millions of rows is a scan, and nobody
pages through ten thousand orders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, literal, or_, select
from sqlalchemy.orm import Session

from domain.errors import ValidationError
from domain.orders import OrderStatus
from models import Order

PER_PAGE = 50
TOTAL_CAP = 10_000
AGE_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_AGE = re.compile(r"(\d{1,7}(?:\.\d+)?)\s*(s|m|min|h|d)?", re.IGNORECASE)


def parse_age(value: str) -> float | None:
    """Seconds for an age such as ``90`` (minutes), ``45m``, ``2h``, ``1d``, ``30s``; None for
    a blank one. Raises :class:`ValidationError` (field ``older_than``) for anything else."""
    text = value.strip()
    if not text:
        return None
    match = _AGE.fullmatch(text)
    if match is None:
        raise ValidationError("older_than", f"{value!r} is not an age such as 90m, 2h or 1d")
    unit = (match.group(2) or "m").lower()
    return float(match.group(1)) * AGE_UNITS[unit]


@dataclass(frozen=True, slots=True)
class OrderFilter:
    status: str = ""
    reason: str = ""
    provider: str = ""
    source: str = ""
    older_than_s: float | None = None

    @classmethod
    def parse(
        cls, *, status: str = "", reason: str = "", provider: str = "", source: str = "",
        older_than: str = "",
    ) -> OrderFilter:  # fmt: skip
        """The filter an operator typed, trimmed; raises :class:`ValidationError` naming the
        field for an unknown status or an unreadable age."""
        wanted = status.strip().upper()
        if wanted and wanted not in OrderStatus.__members__:
            known = ", ".join(s.value for s in OrderStatus)
            raise ValidationError("status", f"unknown status {status.strip()!r} (one of {known})")
        return cls(wanted, reason.strip()[:200], provider.strip().lower()[:32],
                   source.strip()[:64], parse_age(older_than))  # fmt: skip

    def conditions(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.status:
            where.append(Order.status == self.status)
        if self.reason:
            # IS NOT NULL lets the planner use the partial ix_orders_reason_created_at.
            where += [
                Order.reason.is_not(None),
                Order.reason.icontains(self.reason, autoescape=True),
            ]
        if self.provider:
            where.append(Order.payment_provider == self.provider)
        if self.source:
            where.append(Order.source == self.source)
        if self.older_than_s is not None:
            where.append(Order.created_at < func.now() - timedelta(seconds=self.older_than_s))
        return where


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in the list: the (created_at, id) of a row shown."""

    created_at: datetime
    id: str

    def token(self) -> str:
        return f"{self.created_at.isoformat()}~{self.id}"

    @classmethod
    def parse(cls, token: str) -> Cursor:
        """The cursor :meth:`token` wrote; :class:`ValidationError` (field ``page``) if not."""
        at, sep, order_id = token.partition("~")
        try:
            created_at = datetime.fromisoformat(at)
        except ValueError:
            created_at = None
        if not sep or not order_id or created_at is None or created_at.tzinfo is None:
            raise ValidationError("page", "not a page of this list; start again from the top")
        return cls(created_at, order_id[:36])


@dataclass(frozen=True, slots=True)
class OrderList:
    """One page, newest first. ``older`` / ``newer`` are the cursors of the next pages (None at
    either end); ``total`` counts the filtered orders, at most :data:`TOTAL_CAP` (then
    ``total_capped``)."""

    rows: list[dict[str, Any]]
    total: int
    total_capped: bool
    older: str | None
    newer: str | None


def order_list(
    session: Session, f: OrderFilter, *, before: Cursor | None = None,
    after: Cursor | None = None, limit: int = PER_PAGE,
) -> OrderList:  # fmt: skip
    """The page of orders matching ``f`` just older than ``before`` (or just newer than
    ``after``, or the newest page when neither is given), with the capped total."""
    found = session.execute(page_statement(f, before=before, after=after, limit=limit)).all()
    more = len(found) > limit
    page = list(found[:limit])
    if after is not None:
        page.reverse()
    rows = [_row(r) for r in page]
    first, last = (_cursor(rows[0]), _cursor(rows[-1])) if rows else (None, None)
    if after is not None:
        newer, older = (first if more else None), last
    else:
        newer, older = (first if before is not None else None), (last if more else None)
    counted = (
        select(literal(1)).select_from(Order).where(*f.conditions()).limit(TOTAL_CAP + 1)
    ).subquery()
    total = int(session.scalar(select(func.count()).select_from(counted)) or 0)
    return OrderList(rows, min(total, TOTAL_CAP), total > TOTAL_CAP, older, newer)


def page_statement(
    f: OrderFilter, *, before: Cursor | None = None, after: Cursor | None = None,
    limit: int = PER_PAGE,
) -> Select[*tuple[Any, ...]]:  # fmt: skip
    """The SELECT of one page (``limit`` + 1 rows: the extra one says another page follows),
    newest first, or oldest first after ``after`` (:func:`order_list` turns those round)."""
    key = (Order.created_at, Order.id)
    stmt = select(Order.id, Order.external_id, Order.source, Order.status, Order.reason,
                  Order.total_amount, Order.currency, Order.payment_provider, Order.created_at,
                  (func.now() - Order.created_at).label("age")).where(*f.conditions())  # fmt: skip
    if after is not None:
        stmt = stmt.where(_newer_than(after)).order_by(*(c.asc() for c in key))
    else:
        if before is not None:
            stmt = stmt.where(_older_than(before))
        stmt = stmt.order_by(*(c.desc() for c in key))
    return stmt.limit(limit + 1)


def _older_than(c: Cursor) -> ColumnElement[bool]:
    # Spelled out (not a row comparison) so the index on (…, created_at) bounds the walk.
    return and_(Order.created_at <= c.created_at,
                or_(Order.created_at < c.created_at, Order.id < c.id))  # fmt: skip


def _newer_than(c: Cursor) -> ColumnElement[bool]:
    return and_(Order.created_at >= c.created_at,
                or_(Order.created_at > c.created_at, Order.id > c.id))  # fmt: skip


def _cursor(row: dict[str, Any]) -> str:
    return Cursor(row["created_at"], row["id"]).token()


def _row(r: Any) -> dict[str, Any]:
    age: timedelta = r.age
    return {
        "id": r.id, "external_id": r.external_id, "source": r.source, "status": r.status,
        "reason": r.reason or "", "total_amount": r.total_amount, "currency": r.currency,
        "provider": r.payment_provider, "created_at": r.created_at,
        "age_s": age.total_seconds(),
    }  # fmt: skip
