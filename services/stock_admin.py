"""Stock administration: receive, adjust with a reason, move between warehouses, and the drift
repair. Every counter change writes a ledger row (``stock_movements``) in the same transaction,
under the stock row lock taken in key order (:mod:`services.locks`).

Contracts:

* ``receive`` adds units on hand (creating the counter row); the product must exist.
* ``adjust`` changes on-hand by a signed ``delta`` with a mandatory reason; it may not take away
  reserved units (``on_hand + delta >= reserved``), so it can never break an order's hold.
* ``move`` takes available (unreserved) units from one warehouse to another: two ledger rows,
  one transaction, both rows locked in key order.

**Drift repair.** The counters should equal the ledger sums, and ``reserved`` should equal the
ACTIVE reservations. :func:`propose_repairs` lists every row where that is not so, with the
ledger row that would reconcile it; nothing is written. :func:`apply_repairs` writes those rows
(and the counter fixes) in the caller's one transaction, only when an operator asks. The target:

* ``reserved`` = the sum of ACTIVE reservations. Releases and shipments subtract exactly those
  quantities later, so any other value would break them (or the CHECK).
* ``on_hand`` = the counter (``trust="counters"``, the default: the counter is what every
  reservation was checked against, and a stock-take correction made by hand lands there), or
  the ledger sum (``trust="ledger"``: the counter was corrupted and the ledger is right).

The repair row (kind ``repair``) carries ``target - ledger`` as its deltas, the counters are set
to the target, and the reason records before and after. A row whose target breaks
``0 <= reserved <= on_hand``, or ledger rows without a counter row, are listed as *blocked*:
they need a person (count the shelf, then receive or adjust), never an automatic fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, func, insert, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from domain.errors import NotFound, ValidationError
from models import Product, Reservation, Stock, StockMovement
from services.catalog import check_room, receive_stock
from services.catalog_admin import check_code
from services.locks import lock_stock
from services.queries import ledger_sums

#: Largest single receipt, adjustment or move: a typo guard, far above any real delivery.
MAX_QUANTITY = 1_000_000
REASON_MAX = 200
Trust = Literal["counters", "ledger"]


@dataclass(frozen=True, slots=True)
class StockLevel:
    sku: str
    warehouse: str
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    def as_dict(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "warehouse": self.warehouse,
            "on_hand": self.on_hand,
            "reserved": self.reserved,
            "available": self.available,
        }


def _level(row: Stock) -> StockLevel:
    return StockLevel(row.sku, row.warehouse, row.on_hand, row.reserved)


def levels(session: Session, sku: str | None = None) -> list[StockLevel]:
    """Every (sku, warehouse) counter in key order; ``sku`` narrows to one product (a product
    nobody knows raises :class:`NotFound`; a known one without stock rows gives ``[]``)."""
    stmt = select(Stock).order_by(Stock.sku, Stock.warehouse)
    if sku is not None:
        _require_product(session, sku)
        stmt = stmt.where(Stock.sku == sku)
    return [_level(row) for row in session.scalars(stmt)]


def _quantity(value: int, field_name: str = "quantity") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_QUANTITY:
        raise ValidationError(field_name, f"must be an integer from 1 to {MAX_QUANTITY}")
    return value


def _reason(value: str | None, *, required: bool) -> str | None:
    text = (value or "").strip()
    if required and not text:
        raise ValidationError("reason", "is required")
    if len(text) > REASON_MAX:
        raise ValidationError("reason", f"must be at most {REASON_MAX} characters")
    return text or None


def _require_product(session: Session, sku: str) -> None:
    if session.scalar(select(Product.id).where(Product.sku == sku)) is None:
        raise NotFound(f"product {sku} not found", field="sku")


def _ledger(session: Session, **values: Any) -> None:
    session.execute(insert(StockMovement).values(**values))


def receive(
    session: Session,
    sku: str,
    warehouse: str,
    quantity: int,
    *,
    actor: str,
    reason: str | None = None,
) -> StockLevel:
    """Add ``quantity`` units on hand in ``warehouse`` (ledger kind ``receive``)."""
    sku, warehouse = check_code(sku, "sku"), check_code(warehouse, "warehouse")
    quantity = _quantity(quantity)
    note = _reason(reason, required=False)
    _require_product(session, sku)
    receive_stock(session, sku, warehouse, quantity, actor=actor, reason=note or "")
    session.flush()
    row = session.get(Stock, (sku, warehouse))
    assert row is not None
    return _level(row)


def adjust(
    session: Session, sku: str, warehouse: str, delta: int, *, reason: str, actor: str
) -> StockLevel:
    """Change on-hand by ``delta`` (either sign; ledger kind ``adjust``). Refused when the row
    does not exist (use receive) or when it would leave fewer on hand than are reserved."""
    sku, warehouse = check_code(sku, "sku"), check_code(warehouse, "warehouse")
    if isinstance(delta, bool) or not isinstance(delta, int) or delta == 0:
        raise ValidationError("delta", "must be a non-zero integer")
    _quantity(abs(delta), "delta")
    note = _reason(reason, required=True)
    row = lock_stock(session, [(sku, warehouse)]).get((sku, warehouse))
    if row is None:
        raise NotFound(
            f"no stock of {sku} in warehouse {warehouse}; receive it first", field="warehouse"
        )
    if row.on_hand + delta < row.reserved:
        raise ValidationError(
            "delta",
            f"at most {row.on_hand - row.reserved} units can be removed: "
            f"{row.on_hand} on hand, {row.reserved} reserved",
        )
    check_room(row.on_hand, delta, "delta")
    row.on_hand += delta
    _ledger(session, sku=sku, warehouse=warehouse, kind="adjust", delta_on_hand=delta,
            reason=note, actor=actor)  # fmt: skip
    session.flush()
    return _level(row)


def move(
    session: Session,
    sku: str,
    from_warehouse: str,
    to_warehouse: str,
    quantity: int,
    *,
    actor: str,
    reason: str | None = None,
) -> tuple[StockLevel, StockLevel]:
    """Move available units between warehouses; returns (source, destination) after the move."""
    sku = check_code(sku, "sku")
    source = check_code(from_warehouse, "from_warehouse")
    target = check_code(to_warehouse, "to_warehouse")
    if source == target:
        raise ValidationError("to_warehouse", "must differ from from_warehouse")
    quantity = _quantity(quantity)
    note = _reason(reason, required=False)
    _require_product(session, sku)
    # The destination row may not exist yet; create it before locking both in key order.
    session.execute(
        pg_insert(Stock)
        .values(sku=sku, warehouse=target, on_hand=0, reserved=0)
        .on_conflict_do_nothing()
    )
    rows = lock_stock(session, [(sku, source), (sku, target)])
    src, dst = rows.get((sku, source)), rows[(sku, target)]
    if src is None:
        raise NotFound(f"no stock of {sku} in warehouse {source}", field="from_warehouse")
    if src.on_hand - src.reserved < quantity:
        raise ValidationError(
            "quantity", f"only {src.on_hand - src.reserved} units of {sku} available in {source}"
        )
    check_room(dst.on_hand, quantity, "quantity")
    src.on_hand -= quantity
    dst.on_hand += quantity
    suffix = f": {note}" if note else ""
    _ledger(session, sku=sku, warehouse=source, kind="move", delta_on_hand=-quantity,
            reason=f"to {target}{suffix}"[:REASON_MAX], actor=actor)  # fmt: skip
    _ledger(session, sku=sku, warehouse=target, kind="move", delta_on_hand=quantity,
            reason=f"from {source}{suffix}"[:REASON_MAX], actor=actor)  # fmt: skip
    session.flush()
    return _level(src), _level(dst)


# --- drift repair ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RepairProposal:
    """One inconsistent (sku, warehouse) and what would reconcile it (see the module doc)."""

    sku: str
    warehouse: str
    counter_on_hand: int | None  # None: ledger rows exist but no counter row
    counter_reserved: int | None
    ledger_on_hand: int
    ledger_reserved: int
    active_reserved: int
    target_on_hand: int
    target_reserved: int
    blocked: str | None  # why a person must look; such a row is never applied

    @property
    def delta_on_hand(self) -> int:
        """The repair ledger row's ``delta_on_hand``."""
        return self.target_on_hand - self.ledger_on_hand

    @property
    def delta_reserved(self) -> int:
        return self.target_reserved - self.ledger_reserved

    @property
    def reason(self) -> str:
        return (
            f"drift repair: counters {self.counter_on_hand}/{self.counter_reserved}, "
            f"ledger {self.ledger_on_hand}/{self.ledger_reserved}, active reservations "
            f"{self.active_reserved} -> {self.target_on_hand}/{self.target_reserved}"
        )[:REASON_MAX]

    def as_dict(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "warehouse": self.warehouse,
            "counters": {"on_hand": self.counter_on_hand, "reserved": self.counter_reserved},
            "ledger": {"on_hand": self.ledger_on_hand, "reserved": self.ledger_reserved},
            "active_reservations": self.active_reserved,
            "ledger_row": {
                "kind": "repair",
                "delta_on_hand": self.delta_on_hand,
                "delta_reserved": self.delta_reserved,
            },
            "counters_after": {"on_hand": self.target_on_hand, "reserved": self.target_reserved},
            "blocked": self.blocked,
        }


def _inconsistent_rows(
    session: Session, keys: Iterable[tuple[str, str]] | None
) -> list[tuple[str, str, int | None, int | None, int, int, int]]:
    ledger = ledger_sums()
    held = (
        select(Reservation.sku, Reservation.warehouse, func.sum(Reservation.quantity).label("q"))
        .where(Reservation.status == "ACTIVE")
        .group_by(Reservation.sku, Reservation.warehouse)
        .subquery()
    )
    sku = func.coalesce(Stock.sku, ledger.c.sku)
    wh = func.coalesce(Stock.warehouse, ledger.c.warehouse)
    l_on, l_res = func.coalesce(ledger.c.on_hand, 0), func.coalesce(ledger.c.reserved, 0)
    q = func.coalesce(held.c.q, 0)
    stmt = (
        select(sku, wh, Stock.on_hand, Stock.reserved, l_on, l_res, q)
        .select_from(Stock)
        .join(
            ledger,
            and_(ledger.c.sku == Stock.sku, ledger.c.warehouse == Stock.warehouse),
            full=True,
        )
        .outerjoin(held, and_(held.c.sku == sku, held.c.warehouse == wh))
        .where(
            or_(
                and_(Stock.sku.is_(None), or_(l_on != 0, l_res != 0)),
                Stock.on_hand != l_on,
                Stock.reserved != l_res,
                Stock.reserved != q,
            )
        )
        .order_by(sku, wh)
    )
    if keys is not None:
        wanted = sorted(set(keys))
        if not wanted:
            return []
        stmt = stmt.where(tuple_(sku, wh).in_(wanted))
    return [
        (s, w, on, res, int(lon), int(lres), int(hq))
        for s, w, on, res, lon, lres, hq in session.execute(stmt)
    ]


def propose_repairs(
    session: Session,
    *,
    trust: Trust = "counters",
    keys: Iterable[tuple[str, str]] | None = None,
) -> list[RepairProposal]:
    """Every inconsistent row (or only ``keys``) with its reconciling ledger row. Read-only."""
    if trust not in ("counters", "ledger"):
        raise ValidationError("trust", "must be 'counters' or 'ledger'")
    proposals = []
    for sku, wh, c_on, c_res, l_on, l_res, held in _inconsistent_rows(session, keys):
        target_on = l_on if trust == "ledger" or c_on is None else c_on
        blocked = None
        if c_on is None:
            blocked = "ledger rows without a counter row"
        elif not 0 <= held <= target_on:
            blocked = f"{held} units are reserved but only {target_on} would be on hand"
        proposals.append(
            RepairProposal(sku, wh, c_on, c_res, l_on, l_res, held, target_on, held, blocked)
        )
    return proposals


def apply_repairs(
    session: Session, *, trust: Trust = "counters", actor: str
) -> list[RepairProposal]:
    """Lock the inconsistent rows, recompute their proposals under the lock (a transaction
    that committed meanwhile is taken into account), and write each unblocked one: a ``repair``
    ledger row plus the counter fix. Returns what was found; blocked rows are left alone."""
    first = propose_repairs(session, trust=trust)
    keys = [(p.sku, p.warehouse) for p in first if p.counter_on_hand is not None]
    lock_stock(session, keys)
    proposals = propose_repairs(session, trust=trust, keys=keys)
    proposals += [p for p in first if p.counter_on_hand is None]
    for p in proposals:
        if p.blocked is None:
            _ledger(session, sku=p.sku, warehouse=p.warehouse, kind="repair",
                    delta_on_hand=p.delta_on_hand, delta_reserved=p.delta_reserved,
                    reason=p.reason, actor=actor)  # fmt: skip
            session.execute(
                update(Stock)
                .where(Stock.sku == p.sku, Stock.warehouse == p.warehouse)
                .values(on_hand=p.target_on_hand, reserved=p.target_reserved)
            )
    return sorted(proposals, key=lambda p: (p.sku, p.warehouse))
