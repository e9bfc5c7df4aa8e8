"""Allocation strategies (domain/allocation.py), checked exhaustively on small orders against
brute-force oracles, plus one readable example per rule and tie.

The exhaustive part walks every stock level 0..2 of every (SKU, warehouse) cell and every
quantity 1..2 of every line, for up to 3 warehouses and 2-3 SKUs. The oracles do not reuse the
module's search: they enumerate every subset of warehouses (fewest parcels, nearest) or every
way of splitting a line (priority) and keep the best by the strategy's stated objective.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from functools import cache

import pytest
from pydantic import ValidationError

from domain.allocation import (
    MAX_EXACT_WAREHOUSES,
    Allocation,
    Line,
    Policy,
    Strategy,
    Warehouse,
    allocate,
    parse_warehouses,
)
from domain.errors import ReservationRefused
from settings import Settings

Stock = dict[str, dict[str, int]]
FEWEST, PRIORITY, NEAREST = Strategy.FEWEST_PARCELS, Strategy.PRIORITY, Strategy.NEAREST


def run(
    lines: Sequence[tuple[str, int]],
    stock: Stock,
    strategy: Strategy = FEWEST,
    warehouses: str = "",
    region: str | None = None,
) -> list[tuple[str, str, int]]:
    policy = Policy(strategy, parse_warehouses(warehouses))
    active = {sku: True for sku, _ in lines}
    got = allocate([Line(s, q) for s, q in lines], stock, active, policy, region)
    return [(a.sku, a.warehouse, a.quantity) for a in got]


# --- the exhaustive cases ----------------------------------------------------------------------


def cases(n_wh: int, n_sku: int, levels: range = range(3)) -> Iterator[tuple[list[Line], Stock]]:
    """Every stock table over warehouses a.. and SKUs X.. (cells in ``levels``) with every
    quantity 1..2 per line."""
    whs, skus = "abc"[:n_wh], "XYZ"[:n_sku]
    cells = [(s, w) for s in skus for w in whs]
    for units in itertools.product(levels, repeat=len(cells)):
        stock: Stock = {s: {} for s in skus}
        for (s, w), n in zip(cells, units, strict=True):
            stock[s][w] = n
        for qtys in itertools.product((1, 2), repeat=n_sku):
            yield [Line(s, q) for s, q in zip(skus, qtys, strict=True)], stock


def covers(ws: Sequence[str], lines: Sequence[Line], stock: Stock) -> bool:
    return all(sum(stock[ln.sku].get(w, 0) for w in ws) >= ln.quantity for ln in lines)


def covering_sets(lines: Sequence[Line], stock: Stock) -> list[tuple[str, ...]]:
    whs = sorted({w for per in stock.values() for w in per})
    every = (c for k in range(1, len(whs) + 1) for c in itertools.combinations(whs, k))
    return [c for c in every if covers(c, lines, stock)]


def decide(lines: list[Line], stock: Stock, policy: Policy, region: str | None = None):
    """The allocation, or None when refused; refusals other than out_of_stock fail."""
    try:
        return allocate(lines, stock, {ln.sku: True for ln in lines}, policy, region)
    except ReservationRefused as exc:
        assert exc.reason == "out_of_stock"
        return None


def check_invariants(
    got: list[Allocation] | None, lines: list[Line], stock: Stock, sets: list[tuple[str, ...]]
) -> None:
    """All or nothing (``sets``: every covering set), coverage, never more than free, no
    empty allocation."""
    possible = bool(sets)
    assert (got is not None) == possible, (lines, stock, got)
    if got is None:
        return
    for ln in lines:
        assert sum(a.quantity for a in got if a.sku == ln.sku) == ln.quantity
    assert len({(a.sku, a.warehouse) for a in got}) == len(got)  # one row per (sku, warehouse)
    for a in got:
        assert 0 < a.quantity <= stock[a.sku][a.warehouse]


def parcels(got: list[Allocation]) -> set[str]:
    return {a.warehouse for a in got}


def units(ws: Sequence[str], lines: Sequence[Line], stock: Stock) -> int:
    return sum(stock[ln.sku].get(w, 0) for w in ws for ln in lines)


SHAPES = [(1, 2), (1, 3), (2, 2), (2, 3), (3, 2)]
# 3 warehouses x 3 SKUs at 0..2 is 157,464 orders per strategy, too slow for the unit suite:
# that shape runs at stock 0..1 (every quantity still 1..2).
SHAPES_SMALL_STOCK = [(3, 3)]
Case = tuple[list[Line], Stock, list[tuple[str, ...]]]


@cache
def all_cases() -> list[Case]:
    """Every case of every shape (13,420), with its covering sets (computed once per run)."""
    found = [c for n_wh, n_sku in SHAPES for c in cases(n_wh, n_sku)]
    found += [c for n_wh, n_sku in SHAPES_SMALL_STOCK for c in cases(n_wh, n_sku, range(2))]
    return [(lines, stock, covering_sets(lines, stock)) for lines, stock in found]


def test_exhaustive_fewest_parcels_uses_the_minimum_and_breaks_ties_as_documented():
    refused = 0
    for lines, stock, sets in all_cases():
        got = decide(lines, stock, Policy(FEWEST))
        check_invariants(got, lines, stock, sets)
        if got is None:
            refused += 1
            continue
        fewest = min(len(s) for s in sets)
        assert len(parcels(got)) == fewest, (lines, stock, got)
        best = min(
            (s for s in sets if len(s) == fewest), key=lambda s: (-units(s, lines, stock), s)
        )
        assert parcels(got) == set(best), (lines, stock, got)
    assert 0 < refused < len(all_cases())  # both outcomes were exercised


# Against name order; b first and a, c unconfigured (one tier); a tie between b and c.
PRIORITY_CONFIGS = ["c:1,b:2,a:3", "b:1", "a:2,b:1,c:1"]


def priority_oracle(lines: list[Line], stock: Stock, config: str) -> dict[str, dict[str, int]]:
    """Per line: of every way to split it within what each warehouse has free, the one taking
    the most from the first-ranked warehouse, then the second, ... (rank as documented)."""
    conf = parse_warehouses(config)
    whs = sorted({w for per in stock.values() for w in per})

    def rank(w: str) -> tuple[bool, int, int, str]:
        prio = conf[w].priority if w in conf else None
        whole = sum(stock[ln.sku].get(w, 0) >= ln.quantity for ln in lines)
        return (prio is None, prio or 0, -whole, w)

    ranked = sorted(whs, key=rank)
    out: dict[str, dict[str, int]] = {}
    for ln in lines:
        ranges = [range(min(stock[ln.sku].get(w, 0), ln.quantity) + 1) for w in ranked]
        splits = [v for v in itertools.product(*ranges) if sum(v) == ln.quantity]
        best = max(splits)
        out[ln.sku] = {w: n for w, n in zip(ranked, best, strict=True) if n}
    return out


@pytest.mark.parametrize("config", PRIORITY_CONFIGS)
def test_exhaustive_priority_takes_from_the_highest_ranked_warehouse_first(config):
    policy = Policy(PRIORITY, parse_warehouses(config))
    for lines, stock, sets in all_cases():
        got = decide(lines, stock, policy)
        check_invariants(got, lines, stock, sets)
        if got is None:
            continue
        taken = {ln.sku: {a.warehouse: a.quantity for a in got if a.sku == ln.sku} for ln in lines}
        assert taken == priority_oracle(lines, stock, config), (lines, stock, got)


# Which of a, b, c sit in the shipping region "North" (the others are elsewhere or unset).
NEAR_PATTERNS = ["", "b", "a,c"]


def nearest_config(near: str) -> str:
    """a and b in north or south; c in " NORTH " (spaces and case ignored) or not configured."""
    entries = [f"{w}:1:{'north' if w in near else 'south'}" for w in "ab"]
    return ",".join(entries + (["c:1: NORTH "] if "c" in near else []))


@pytest.mark.parametrize("near", NEAR_PATTERNS)
def test_exhaustive_nearest_minimises_far_parcels_then_all_parcels(near):
    policy = Policy(NEAREST, parse_warehouses(nearest_config(near)))
    for lines, stock, sets in all_cases():
        got = decide(lines, stock, policy, region=" North")
        check_invariants(got, lines, stock, sets)
        if got is None:
            continue

        def cost(ws: Sequence[str]) -> tuple[int, int]:
            return (sum(w not in near for w in ws), len(ws))

        best = min(sets, key=lambda s: (cost(s), -units(s, lines, stock), s))  # ties as fewest
        assert parcels(got) == set(best), (near, lines, stock, got)
        for a in got:  # near warehouses of the set are drawn on before far ones
            if a.warehouse not in near:
                local = [w for w in parcels(got) if w in near]
                assert sum(stock[a.sku][w] for w in local) < next(
                    ln.quantity for ln in lines if ln.sku == a.sku
                )


@pytest.mark.parametrize("strategy", list(Strategy))
def test_exhaustive_the_result_does_not_depend_on_the_order_stock_is_listed_in(strategy):
    policy = Policy(strategy, parse_warehouses("c:1:north,a:2"))
    for lines, stock in cases(3, 2):
        flipped = {s: dict(reversed(per.items())) for s, per in reversed(stock.items())}
        got = decide(lines, stock, policy, "north")
        assert decide(list(reversed(lines)), flipped, policy, "north") == got


# --- fewest_parcels, by example ----------------------------------------------------------------


def test_fewest_a_single_warehouse_that_fills_the_order_wins():
    stock = {"X": {"a": 5, "b": 2}, "Y": {"a": 0, "b": 1}}
    assert run([("X", 2), ("Y", 1)], stock) == [("X", "b", 2), ("Y", "b", 1)]


def test_fewest_single_warehouse_tie_goes_to_most_units_then_name():
    stock = {"X": {"a": 1, "b": 3, "c": 3}}
    assert run([("X", 1)], stock) == [("X", "b", 1)]


def test_fewest_finds_two_parcels_where_splitting_line_by_line_needed_three():
    # Line by line, X would take a's 2 and Y needs b and c: three parcels. b + c serve both.
    stock = {"X": {"a": 2, "b": 1, "c": 1}, "Y": {"a": 0, "b": 1, "c": 1}}
    assert run([("X", 2), ("Y", 2)], stock) == [
        ("X", "b", 1), ("X", "c", 1), ("Y", "b", 1), ("Y", "c", 1),
    ]  # fmt: skip


def test_fewest_ties_between_pairs_go_to_most_units_then_names():
    # {a, b}, {a, c} and {b, c} each cover X:3; {b, c} has the most units free.
    stock = {"X": {"a": 2, "b": 2, "c": 2}, "Y": {"a": 0, "b": 1, "c": 1}}
    assert run([("X", 3)], stock) == [("X", "a", 2), ("X", "b", 1)]  # equal units: names
    assert run([("X", 3), ("Y", 1)], stock) == [("X", "b", 2), ("X", "c", 1), ("Y", "b", 1)]


def test_fewest_splits_largest_first_as_before():
    assert run([("X", 6)], {"X": {"east": 4, "west": 3}}) == [("X", "east", 4), ("X", "west", 2)]


def test_fewest_is_exact_up_to_the_bound_then_greedy():
    """Classic greedy trap: g has 4 of the 6 SKUs, but p and q together have all six. With
    fillers (one unit of A each) up to the bound the search is exact: 2 parcels; one filler
    more and the greedy fallback takes g first and needs 3 parcels (still complete)."""
    lines = [(s, 1) for s in "ABCDEF"]

    def stock_with(fillers: int) -> Stock:
        stock: Stock = {s: {"p": int(s in "ABC"), "q": int(s in "DEF"), "g": int(s in "ABDE")}
                        for s in "ABCDEF"}  # fmt: skip
        for i in range(fillers):
            stock["A"][f"f{i:02}"] = 1
        return stock

    exact = run(lines, stock_with(MAX_EXACT_WAREHOUSES - 3))
    greedy = run(lines, stock_with(MAX_EXACT_WAREHOUSES - 2))
    assert {w for _, w, _ in exact} == {"p", "q"}
    assert {w for _, w, _ in greedy} == {"g", "p", "q"}
    assert sorted((s, n) for s, _, n in greedy) == lines


def test_every_strategy_is_all_or_nothing():
    stock = {"X": {"a": 5}, "Y": {"a": 1, "b": 1}}
    for strategy in Strategy:
        with pytest.raises(ReservationRefused) as refused:
            run([("X", 1), ("Y", 3)], stock, strategy, "a:1:n", "n")
        assert (refused.value.reason, refused.value.detail) == ("out_of_stock", "Y short by 1")


# --- priority, by example ----------------------------------------------------------------------


def test_priority_fills_from_the_first_warehouse_even_at_the_cost_of_a_parcel():
    stock = {"X": {"a": 1, "b": 5}, "Y": {"a": 0, "b": 5}}
    got = run([("X", 2), ("Y", 1)], stock, PRIORITY, "a:1,b:2")
    assert got == [("X", "a", 1), ("X", "b", 1), ("Y", "b", 1)]
    assert run([("X", 2), ("Y", 1)], stock) == [("X", "b", 2), ("Y", "b", 1)]  # fewest: one


def test_priority_unconfigured_warehouses_come_last():
    stock = {"X": {"a": 2, "b": 2, "z": 2}}
    assert run([("X", 3)], stock, PRIORITY, "z:7") == [("X", "z", 2), ("X", "a", 1)]


def test_priority_equal_priority_prefers_the_warehouse_filling_more_lines_whole():
    stock = {"X": {"a": 1, "b": 1}, "Y": {"a": 0, "b": 1}}
    assert run([("X", 1), ("Y", 1)], stock, PRIORITY, "a:1,b:1") == [("X", "b", 1), ("Y", "b", 1)]
    assert run([("X", 1)], stock, PRIORITY, "a:1,b:1") == [("X", "a", 1)]  # equal: by name


# --- nearest, by example -----------------------------------------------------------------------


def test_nearest_prefers_the_shipping_region_over_more_stock_elsewhere():
    stock = {"X": {"sh": 1, "bj": 9}}
    conf = "sh:1:Shanghai,bj:2:Beijing"
    assert run([("X", 1)], stock, NEAREST, conf, "shanghai") == [("X", "sh", 1)]
    assert run([("X", 1)], stock, NEAREST, conf, "Beijing") == [("X", "bj", 1)]
    assert run([("X", 1)], stock, NEAREST, conf, None) == [("X", "bj", 1)]  # fewest's tie


def test_nearest_two_local_parcels_beat_one_from_afar():
    stock = {"X": {"n1": 1, "n2": 1, "far": 2}}
    conf = "n1:1:north,n2:1:north,far:1:south"
    assert run([("X", 2)], stock, NEAREST, conf, "north") == [("X", "n1", 1), ("X", "n2", 1)]


def test_nearest_a_far_parcel_that_must_go_is_not_joined_by_a_partial_local_one():
    stock = {"X": {"near": 1, "far": 2}, "Y": {"near": 0, "far": 1}}
    got = run([("X", 2), ("Y", 1)], stock, NEAREST, "near:1:north", "north")
    assert got == [("X", "far", 2), ("Y", "far", 1)]


def test_nearest_draws_on_local_stock_first_within_the_set():
    stock = {"X": {"near": 1, "far": 5}, "Y": {"near": 1, "far": 1}}
    got = run([("X", 3), ("Y", 2)], stock, NEAREST, "near:1:north", "north")
    assert got == [("X", "near", 1), ("X", "far", 2), ("Y", "near", 1), ("Y", "far", 1)]


# --- the WAREHOUSES setting --------------------------------------------------------------------


def test_parse_warehouses():
    assert parse_warehouses(" east:1:Zhejiang , west:2 ,, north:0: ,") == {
        "east": Warehouse("east", 1, "Zhejiang"),
        "west": Warehouse("west", 2, None),
        "north": Warehouse("north", 0, None),
    }
    assert parse_warehouses("") == {}
    assert Policy().warehouse("nowhere") == Warehouse("nowhere", None, None)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("east", "no priority"),
        ("east:first", "priority 'first' is not a non-negative integer"),
        ("east:-1", "not a non-negative integer"),
        (":1", "the name must be 1 to 64 characters"),
        ("a:1,a:2", "named twice"),
    ],
)
def test_a_bad_warehouses_setting_stops_start_naming_it(spec: str, problem: str):
    with pytest.raises(ValidationError) as refused:
        Settings(warehouses=spec)
    assert "WAREHOUSES entry" in str(refused.value) and problem in str(refused.value)


def test_allocation_strategy_setting():
    assert Settings().allocation_strategy == "fewest_parcels"
    assert Strategy(Settings(allocation_strategy="nearest").allocation_strategy) is NEAREST
    with pytest.raises(ValidationError, match="allocation_strategy"):
        Settings(allocation_strategy="closest")
