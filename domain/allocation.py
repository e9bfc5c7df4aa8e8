"""Pure stock allocation: which warehouses serve which lines, or why none can.

Rules, in order:

1. Every SKU must be known and active, else ``unknown_sku`` / ``inactive_product``.
2. Prefer a single warehouse that can serve every line (one parcel). Among those, the one with
   the most total availability wins; ties go to the smaller warehouse name (deterministic).
3. Otherwise split: each line takes from warehouses in order of availability (largest first).
4. If any line cannot be covered in full, nothing is allocated (``out_of_stock``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from domain.errors import ReservationRefused
from domain.orders import RejectReason


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Allocation:
    sku: str
    warehouse: str
    quantity: int


Availability = Mapping[str, Mapping[str, int]]  # sku -> warehouse -> available units


def merge_lines(lines: Sequence[Line]) -> list[Line]:
    """Sum quantities of repeated SKUs, sorted by SKU (the lock order)."""
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.sku] = totals.get(line.sku, 0) + line.quantity
    return [Line(sku, qty) for sku, qty in sorted(totals.items())]


def allocate(
    lines: Sequence[Line],
    available: Availability,
    active: Mapping[str, bool],
) -> list[Allocation]:
    """Allocate all lines or raise :class:`ReservationRefused` with the reason. Pure: no I/O."""
    merged = merge_lines(lines)
    for line in merged:
        if line.sku not in active:
            raise ReservationRefused(RejectReason.UNKNOWN_SKU, line.sku)
        if not active[line.sku]:
            raise ReservationRefused(RejectReason.INACTIVE_PRODUCT, line.sku)
    single = _single_warehouse(merged, available)
    if single is not None:
        return [Allocation(line.sku, single, line.quantity) for line in merged]
    result: list[Allocation] = []
    for line in merged:
        result.extend(_split_line(line, available.get(line.sku, {})))
    return result


def _single_warehouse(lines: Sequence[Line], available: Availability) -> str | None:
    candidates: set[str] | None = None
    for line in lines:
        able = {w for w, n in available.get(line.sku, {}).items() if n >= line.quantity}
        candidates = able if candidates is None else candidates & able
    if not candidates:
        return None

    def score(w: str) -> tuple[int, str]:
        return (-sum(available[line.sku][w] for line in lines), w)

    return min(candidates, key=score)


def _split_line(line: Line, per_warehouse: Mapping[str, int]) -> list[Allocation]:
    remaining = line.quantity
    taken: list[Allocation] = []
    for warehouse, units in sorted(per_warehouse.items(), key=lambda kv: (-kv[1], kv[0])):
        if remaining == 0:
            break
        take = min(units, remaining)
        if take > 0:
            taken.append(Allocation(line.sku, warehouse, take))
            remaining -= take
    if remaining:
        raise ReservationRefused(RejectReason.OUT_OF_STOCK, f"{line.sku} short by {remaining}")
    return taken
