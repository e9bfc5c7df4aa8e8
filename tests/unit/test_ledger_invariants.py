"""The reliability checker's ledger rule (tests.reliability.invariants.ledger_violations):
per (order, sku, warehouse) reserve and its end (release or ship) alternate from a reserve,
and what the ledger still holds equals the ACTIVE reservations. A re-allocation that reserves
again where it released passes; a double reserve or double release is caught."""

from __future__ import annotations

from tests.reliability.invariants import ledger_violations

K = ("o1", "A", "north")


def rows(*moves: tuple[str, int]) -> list[tuple[str, str, str, str, int]]:
    return [(*K, kind, delta) for kind, delta in moves]


def test_reserving_again_where_the_order_released_before_passes() -> None:
    legit = rows(("reserve", 2), ("release", -2), ("reserve", 2), ("ship", -2))
    assert ledger_violations(legit, {}) == []
    held = rows(("reserve", 2), ("release", -2), ("reserve", 2))
    assert ledger_violations(held, {K: 2}) == []


def test_a_second_reserve_before_the_first_ended_is_caught() -> None:
    (problem, *_) = ledger_violations(rows(("reserve", 2), ("reserve", 2)), {K: 2})
    assert "reserved twice" in problem


def test_a_release_or_ship_of_nothing_held_is_caught() -> None:
    for end in ("release", "ship"):
        got = ledger_violations(rows(("reserve", 2), ("release", -2), (end, -2)), {})
        assert any(f"{end} with nothing reserved" in p for p in got), got
    assert ledger_violations(rows(("release", -1)), {})


def test_the_ledger_must_hold_what_the_active_reservations_hold() -> None:
    assert ledger_violations(rows(("reserve", 2)), {}) == [
        f"{K}: ledger holds 2, ACTIVE reservations 0"
    ]
    assert ledger_violations([], {K: 1}) == [f"{K}: ledger holds 0, ACTIVE reservations 1"]
    other = ("o2", "A", "north")  # keys are separate: o2 reserving does not end o1's hold
    mixed = [*rows(("reserve", 2)), (*other, "reserve", 1), (*other, "release", -1)]
    assert ledger_violations(mixed + rows(("ship", -2)), {}) == []


def test_a_part_given_back_before_shipping_stays_inside_its_reservation() -> None:
    part = rows(("reserve", 3), ("release_part", -1), ("ship", -2))
    assert ledger_violations(part, {}) == []
    assert ledger_violations(rows(("reserve", 3), ("release_part", -1)), {K: 2}) == []
    stray = ledger_violations(rows(("reserve", 3), ("ship", -3), ("release_part", -1)), {})
    assert any("release_part with nothing reserved" in p for p in stray), stray
