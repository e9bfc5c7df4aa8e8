"""Pure stock allocation: which warehouses serve which lines, or why none can.

Rules, in order, whatever the strategy:

1. Every SKU must be known and active, else ``unknown_sku`` / ``inactive_product``.
2. Repeated SKUs are merged into one line (:func:`merge_lines`).
3. All or nothing: if any line cannot be covered in full by all warehouses together, nothing
   is allocated (``out_of_stock``). Otherwise each line's allocations sum to its quantity, none
   takes more than its warehouse has free, and none is of zero units.
4. The strategy (``ALLOCATION_STRATEGY``, :class:`Strategy`) chooses the warehouses. "Units
   free of a set" below means the units its warehouses have free of the order's SKUs, summed.

   ``fewest_parcels`` (the default):

   a. Use the fewest warehouses (one parcel each) that together can fill every line: a single
      warehouse that can fill the whole order wins.
   b. Ties between sets of that size: the most units free wins, then the alphabetically first
      list of names (for a single warehouse, the rule orderflow always had).
   c. Within the set, each line takes from its warehouses largest availability first (ties:
      name), as orderflow always split.

   ``priority``:

   a. Each line takes from warehouses in rank order, as much as each has, until it is filled.
      Priority is never traded for fewer parcels: a higher-ranked warehouse that has part of a
      line ships that part.
   b. Rank: the configured priority, smallest number first; warehouses not configured come
      after every configured one (one tier). Within equal priority, fewer parcels is the
      tie-break: the warehouse that can fill more of the order's lines whole ranks first
      (the one that fills the whole order first of all), then the name.

   ``nearest``:

   a. A warehouse is near when its configured region equals the order's shipping region
      (case-insensitive, surrounding spaces ignored); every other one is far. With no shipping
      region, or none configured, all are far and this is ``fewest_parcels``. Countries are
      not modelled: a warehouse has one region, and the shipping country is not compared.
   b. Choose the set with the fewest far warehouses, then the fewest warehouses in all; ties
      as in ``fewest_parcels`` b. (A far parcel that must go anyway is not joined by a near
      one that only carries part of what the far one could.)
   c. Within the set, each line takes from near warehouses first, then far ones, each group
      largest availability first (ties: name).

5. The set search of ``fewest_parcels`` and ``nearest`` is exact (subsets in order of cost)
   when the order's candidate warehouses (those with a unit free of one of its SKUs) are at
   most :data:`MAX_EXACT_WAREHOUSES`, i.e. at most 1,024 subsets. Beyond that it is greedy:
   add the warehouse that fills the most units still missing (ties as 4b; for ``nearest``,
   near warehouses while one adds anything, then far ones) until every line is covered, which
   may use more parcels than the minimum.

Warehouses live only as names on stock rows; their priority and region come from the
``WAREHOUSES`` setting (:func:`parse_warehouses`), not from a table: the list is small, changes
with a deploy (a new site is a configuration change anyway), and a setting needs no migration,
admin path or cache. A warehouse absent from it gets :class:`Warehouse`'s defaults: lowest
priority, no region.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from itertools import combinations

from domain.errors import ReservationRefused
from domain.orders import RejectReason

#: Up to this many candidate warehouses the set search is exact (2**10 subsets at most).
MAX_EXACT_WAREHOUSES = 10


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


class Strategy(StrEnum):
    FEWEST_PARCELS = "fewest_parcels"
    PRIORITY = "priority"
    NEAREST = "nearest"


@dataclass(frozen=True, slots=True)
class Warehouse:
    """A warehouse's allocation settings. ``priority`` None: not configured, ranks after every
    configured warehouse; ``region`` None: near no shipping region."""

    name: str
    priority: int | None = None
    region: str | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    """The strategy and the configured warehouses (by name); the default is today's rules."""

    strategy: Strategy = Strategy.FEWEST_PARCELS
    warehouses: Mapping[str, Warehouse] = field(default_factory=dict)

    def warehouse(self, name: str) -> Warehouse:
        return self.warehouses.get(name) or Warehouse(name)


DEFAULT_POLICY = Policy()


def parse_warehouses(spec: str) -> dict[str, Warehouse]:
    """``name:priority[:region][,…]`` (the ``WAREHOUSES`` setting) as warehouses by name.

    The name is the stock rows' warehouse (1-64 characters, no ``:`` or ``,``); priority is a
    non-negative integer, smaller first; the region is free text compared with the shipping
    address's ``region``, empty or left out for none. Spaces around each part and blank
    entries are ignored. Raises
    :class:`ValueError` naming the setting and the entry for a bad name or priority, or a
    name given twice.
    """
    found: dict[str, Warehouse] = {}
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        parts = [p.strip() for p in entry.split(":", 2)]
        problem = _entry_problem(parts, found)
        if problem:
            raise ValueError(f"WAREHOUSES entry {entry!r}: {problem}; "
                             "expected name:priority[:region][,…]")  # fmt: skip
        region = parts[2] if len(parts) == 3 and parts[2] else None
        found[parts[0]] = Warehouse(parts[0], int(parts[1]), region)
    return found


def _entry_problem(parts: list[str], found: Mapping[str, Warehouse]) -> str | None:
    if len(parts) < 2:
        return "no priority"
    if not 1 <= len(parts[0]) <= 64:  # stock.warehouse is String(64)
        return "the name must be 1 to 64 characters"
    if not parts[1].isascii() or not parts[1].isdigit():
        return f"priority {parts[1]!r} is not a non-negative integer"
    if parts[0] in found:
        return "the warehouse is named twice"
    return None


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
    policy: Policy = DEFAULT_POLICY,
    region: str | None = None,
) -> list[Allocation]:
    """Allocate all lines by ``policy`` for an order shipping to ``region``, or raise
    :class:`ReservationRefused` with the reason (module docstring). Pure: no I/O."""
    merged = merge_lines(lines)
    for line in merged:
        if line.sku not in active:
            raise ReservationRefused(RejectReason.UNKNOWN_SKU, line.sku)
        if not active[line.sku]:
            raise ReservationRefused(RejectReason.INACTIVE_PRODUCT, line.sku)
    stock = _Stock(merged, available)
    for line in merged:
        short = line.quantity - sum(stock.free(line.sku, w) for w in stock.candidates)
        if short > 0:
            raise ReservationRefused(RejectReason.OUT_OF_STOCK, f"{line.sku} short by {short}")
    if policy.strategy is Strategy.PRIORITY:
        ranked = sorted(stock.candidates, key=_priority_rank(policy, stock))
        return _fill(stock, lambda _sku: ranked)
    near: set[str] = set()
    if policy.strategy is Strategy.NEAREST and region and region.strip():
        wanted = _region_key(region)
        near = {w for w in stock.candidates if _region_key(policy.warehouse(w).region) == wanted}
    chosen = _best_set(stock, near)

    def near_first(sku: str) -> list[str]:  # rule 4 fewest_parcels c / nearest c
        return sorted(chosen, key=lambda w: (w not in near, -stock.free(sku, w), w))

    return _fill(stock, near_first)


class _Stock:
    """The order's merged lines and the units each candidate warehouse has free for them."""

    def __init__(self, lines: list[Line], available: Availability) -> None:
        self.lines = lines
        # Only positive counts of the order's SKUs: the search reads these many times.
        self._free = {
            line.sku: {w: n for w, n in available.get(line.sku, {}).items() if n > 0}
            for line in lines
        }
        self.candidates = sorted({w for per in self._free.values() for w in per})

    def free(self, sku: str, warehouse: str) -> int:
        return self._free[sku].get(warehouse, 0)

    def units(self, warehouses: Iterable[str]) -> int:
        """Units free of the order's SKUs in ``warehouses`` (the tie-break of rule 4b)."""
        return sum(self.free(line.sku, w) for w in warehouses for line in self.lines)

    def covers(self, warehouses: Sequence[str]) -> bool:
        return all(
            sum(self.free(line.sku, w) for w in warehouses) >= line.quantity for line in self.lines
        )


def _region_key(region: str | None) -> str:
    return (region or "").strip().casefold()


def _priority_rank(policy: Policy, stock: _Stock) -> Callable[[str], tuple[int, int, int, str]]:
    """Rule 4 priority b: configured priority, not configured last, whole lines, name."""

    def rank(w: str) -> tuple[int, int, int, str]:
        priority = policy.warehouse(w).priority
        whole = sum(1 for line in stock.lines if stock.free(line.sku, w) >= line.quantity)
        return (priority is None, priority or 0, -whole, w)

    return rank


def _tie_key(stock: _Stock, warehouses: Sequence[str]) -> tuple[int, tuple[str, ...]]:
    """Rule 4 fewest_parcels b: most units free, then the first list of names."""
    return (-stock.units(warehouses), tuple(sorted(warehouses)))


def _best_set(stock: _Stock, near: set[str]) -> list[str]:
    """The set of rule 4 fewest_parcels a / nearest b (rule 5: exact or greedy); ``near``
    empty is fewest_parcels. The caller has checked that all candidates together cover."""
    if len(stock.candidates) == 1:  # the common case: one warehouse holds the order's SKUs
        return stock.candidates
    near_list = [w for w in stock.candidates if w in near]
    far_list = [w for w in stock.candidates if w not in near]
    if len(stock.candidates) > MAX_EXACT_WAREHOUSES:
        return _greedy_set(stock, near_list, far_list)
    for level in _levels(near_list, far_list):
        covering = [s for s in level if stock.covers(s)]
        if covering:
            return list(min(covering, key=partial(_tie_key, stock)))
    raise AssertionError("all candidates together cover the order")  # checked by allocate


def _levels(near: list[str], far: list[str]) -> Iterator[list[tuple[str, ...]]]:
    """Subsets grouped by cost, cheapest group first: fewest far, then fewest in all."""
    for r in range(len(far) + 1):
        for n in range(len(near) + 1):
            if r + n:
                yield [a + b for a in combinations(far, r) for b in combinations(near, n)]


def _greedy_set(stock: _Stock, near: list[str], far: list[str]) -> list[str]:
    """Rule 5's fallback: add the warehouse filling the most missing units, near ones first."""
    missing = {line.sku: line.quantity for line in stock.lines}
    chosen: list[str] = []
    for group in (near, far):
        pool = list(group)
        while pool and any(missing.values()):
            gains = {w: sum(min(stock.free(s, w), n) for s, n in missing.items()) for w in pool}
            best = min(pool, key=lambda w: (-gains[w], -stock.units([w]), w))
            if gains[best] == 0:
                break
            chosen.append(best)
            pool.remove(best)
            for sku in missing:
                missing[sku] -= min(stock.free(sku, best), missing[sku])
    return chosen


def _fill(stock: _Stock, order_for: Callable[[str], Sequence[str]]) -> list[Allocation]:
    """Each line takes from the warehouses ``order_for(sku)`` lists, in that order, as much as
    each has free, until it is filled (the caller guarantees that they can fill it)."""
    result: list[Allocation] = []
    for line in stock.lines:
        remaining = line.quantity
        for warehouse in order_for(line.sku):
            take = min(stock.free(line.sku, warehouse), remaining)
            if take > 0:
                result.append(Allocation(line.sku, warehouse, take))
                remaining -= take
        if remaining:  # unreachable when the caller's guarantee holds; never over-allocate
            raise ReservationRefused(RejectReason.OUT_OF_STOCK, f"{line.sku} short by {remaining}")
    return result
