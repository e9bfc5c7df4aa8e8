"""domain.parcels: the order's status from its parcels (exhaustive on small cases), planning,
booking keys, following one parcel's move, re-allocation, the cancel share and unplaced lines."""

from __future__ import annotations

import itertools

import pytest

from domain.allocation import Allocation, Line, Policy, Strategy, Warehouse
from domain.errors import ReservationRefused
from domain.orders import SHIPPING_LADDER, OrderStatus, can_transition
from domain.parcels import (
    REASON_MAX,
    Parcel,
    booking_key,
    climb,
    follow_parcels,
    is_unplaced,
    lines_amount,
    lines_share,
    order_progress,
    plan_parcels,
    reallocation,
    refused_reason,
    settled,
)
from domain.tracking import MOVING, ShipmentStatus, order_follows

S, T = OrderStatus, ShipmentStatus
OID = "8f0c1e4a-0000-4000-8000-000000000002"
#: A parcel not booked yet, or booked and in one of the tracking statuses.
STATES: list[tuple[bool, ShipmentStatus]] = [(False, T.PENDING)] + [(True, t) for t in T]


def parcels_of(states: tuple[tuple[bool, ShipmentStatus], ...]) -> list[Parcel]:
    return [Parcel(i + 1, f"w{i + 1}", booked, st) for i, (booked, st) in enumerate(states)]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_progress_over_every_combination_of_up_to_three_parcels(n: int) -> None:
    for states in itertools.product(STATES, repeat=n):
        parcels = parcels_of(states)
        got = order_progress(parcels)
        booked = [p for p in parcels if p.booked]
        delivered = [p for p in parcels if p.booked and p.status == T.DELIVERED]
        if not booked:
            assert got == S.PAID, states
        elif len(booked) < n:
            assert got == S.PARTIALLY_SHIPPED, states
        elif len(delivered) == n:
            assert got == S.DELIVERED, states
        elif delivered:
            assert got == S.PARTIALLY_DELIVERED, states
        elif any(p.status in MOVING for p in parcels):
            assert got == S.IN_TRANSIT, states
        else:
            assert got == S.SHIPPED, states
        # DELIVERED only when every parcel is; never a PARTIALLY_ status for one parcel.
        assert (got == S.DELIVERED) == (len(delivered) == n)
        if n == 1:
            assert not got.startswith("PARTIALLY_")


def test_progress_needs_a_parcel() -> None:
    with pytest.raises(ValueError):
        order_progress([])


def test_climbing_only_goes_up_the_ladder_and_stops_at_delivered() -> None:
    for cur, target in itertools.product(SHIPPING_LADDER, SHIPPING_LADDER):
        moves = climb(cur, target)
        if SHIPPING_LADDER.index(target) <= SHIPPING_LADDER.index(cur):
            assert moves == (), (cur, target)
            continue
        path = (cur, *moves)
        assert all(can_transition(a, b) for a, b in itertools.pairwise(path)), path
        assert moves[-1] == target and list(moves) == sorted(moves, key=SHIPPING_LADDER.index)
    assert climb(S.CANCELLED, S.SHIPPED) == ()
    assert climb(S.RECEIPT_CONFIRMED, S.DELIVERED) == ()
    assert climb(S.NEEDS_ATTENTION, S.DELIVERED) == (S.DELIVERED,)


@pytest.mark.parametrize("status", [T.IN_TRANSIT, T.OUT_FOR_DELIVERY, T.DELIVERED])
def test_one_parcel_orders_progress_as_they_always_followed_their_shipment(status) -> None:
    """A single parcel: the ladder the derivation gives is where order_follows leads."""
    for current in (S.SHIPPED, S.IN_TRANSIT):
        old = order_follows(current, None, status).moves
        new = climb(current, order_progress([Parcel(1, "w", True, status)]))
        assert new == old, (current, status)


def test_two_parcels_complete_only_when_both_are_delivered() -> None:
    a, b = Parcel(1, "north", True), Parcel(2, "south", True)
    step = follow_parcels(S.SHIPPED, None, [a, b.__class__(2, "south", True, T.IN_TRANSIT)],
                          Parcel(2, "south", True, T.IN_TRANSIT))  # fmt: skip
    assert step.moves == (S.IN_TRANSIT,)
    one = [Parcel(1, "north", True, T.DELIVERED), Parcel(2, "south", True, T.IN_TRANSIT)]
    assert follow_parcels(S.IN_TRANSIT, None, one, one[0]).moves == (S.PARTIALLY_DELIVERED,)
    both = [Parcel(1, "north", True, T.DELIVERED), Parcel(2, "south", True, T.DELIVERED)]
    assert follow_parcels(S.PARTIALLY_DELIVERED, None, both, both[1]).moves == (S.DELIVERED,)
    # A scan of the parcel still moving changes nothing once one is delivered.
    assert follow_parcels(S.PARTIALLY_DELIVERED, None, one, one[1]).moves == ()


def test_a_parcel_in_exception_flags_the_order_naming_it_and_resolving_moves_it_on() -> None:
    bad = Parcel(7, "south", True, T.EXCEPTION)
    parcels = [Parcel(6, "north", True, T.IN_TRANSIT), bad]
    flag = follow_parcels(S.IN_TRANSIT, None, parcels, bad, exception_text="破损").flag
    assert flag == "tracking_exception: parcel 7 (south): 破损"
    returned = follow_parcels(S.IN_TRANSIT, None, parcels, bad, returned=True).flag
    assert returned is not None and returned.startswith("tracking_returned: parcel 7 (south)")
    # The other parcel is delivered meanwhile: the order stays flagged.
    other = Parcel(6, "north", True, T.DELIVERED)
    assert follow_parcels(S.NEEDS_ATTENTION, flag, [other, bad], other).moves == ()
    # The carrier resolves the exception: the order moves on to what its parcels say.
    fixed = Parcel(7, "south", True, T.DELIVERED)
    assert follow_parcels(S.NEEDS_ATTENTION, flag, [other, fixed], fixed).moves == (S.DELIVERED,)
    # A flag for anything else (a return, a booking refusal) is left to a person.
    assert follow_parcels(S.NEEDS_ATTENTION, returned, [other, fixed], fixed).moves == ()
    expired = Parcel(7, "south", True, T.EXPIRED)
    assert follow_parcels(S.SHIPPED, None, [other, expired], expired).flag == (
        "tracking_expired: parcel 7 (south)"
    )


def test_a_partly_booked_order_does_not_move_on_a_scan_of_its_booked_parcel() -> None:
    parcels = [Parcel(1, "a", True, T.DELIVERED), Parcel(2, "b", False)]
    assert follow_parcels(S.PARTIALLY_SHIPPED, None, parcels, parcels[0]).moves == ()


def test_planning_groups_held_stock_by_warehouse_in_a_stable_order() -> None:
    held = [("B", "south", 1), ("A", "north", 2), ("A", "south", 1), ("B", "south", 2)]
    assert plan_parcels(held) == {"north": [("A", 2)], "south": [("A", 1), ("B", 3)]}
    assert plan_parcels(list(reversed(held))) == plan_parcels(held)
    assert plan_parcels([]) == {}


def test_booking_keys_are_per_order_warehouse_and_sequence() -> None:
    assert booking_key(OID, "north", 1) == "ship-8f0c1e4a000040008000000000000002-north-1"
    assert booking_key(OID, "north", 2) != booking_key(OID, "north", 1)
    assert booking_key(OID, None, 1) == "ship-8f0c1e4a000040008000000000000002"  # legacy
    odd = booking_key(OID, "上海 仓", 1)
    assert odd.startswith("ship-8f0c1e4a000040008000000000000002-w") and odd.endswith("-1")
    assert len(booking_key(OID, "x" * 64, 999)) <= 128


def test_reallocation_skips_excluded_warehouses_and_names_what_is_short() -> None:
    available = {"A": {"north": 5, "south": 5, "east": 1}}
    policy = Policy(Strategy.PRIORITY, {"east": Warehouse("east", 0)})
    got = reallocation([Line("A", 2)], available, {"A": True}, {"north"}, policy, None)
    assert got == [Allocation("A", "east", 1), Allocation("A", "south", 1)]
    with pytest.raises(ReservationRefused) as refused:
        reallocation([Line("A", 2)], available, {"A": True}, {"north", "south"}, policy, None)
    assert refused.value.reason == "out_of_stock" and "A short by 1" in refused.value.detail


def test_a_parcels_share_is_its_lines_amount() -> None:
    assert lines_amount([("A", 2), ("B", 1)], {"A": 150, "B": 99}) == 399
    with pytest.raises(KeyError):
        lines_amount([("C", 1)], {"A": 150})


def test_a_share_is_split_in_proportion_to_an_order_level_discount_rounding_down() -> None:
    prices = {"A": 1000, "B": 300}
    assert lines_share([("B", 2)], prices, list_total=2600, charged=2600) == 600
    assert lines_share([("B", 2)], prices, list_total=2600, charged=2700) == 600  # no surcharge
    assert lines_share([("B", 2)], prices, list_total=2600, charged=1300) == 300
    parts = [lines_share([x], prices, list_total=2600, charged=2599) for x in (("A", 2), ("B", 2))]
    assert parts == [1999, 599] and sum(parts) <= 2599  # never more than was charged


def test_unplaced_lines_are_marked_until_re_reserved_or_refunded() -> None:
    unplaced = refused_reason("out_of_stock", placed=False)
    assert unplaced == "refused:out_of_stock [unplaced]" and is_unplaced(unplaced)
    assert not is_unplaced(refused_reason("out_of_stock", placed=True))
    assert not is_unplaced("cancelled: [unplaced]") and not is_unplaced(None)
    for how in ("re-reserved", "refunded"):
        done = settled(unplaced, how)
        assert done == f"refused:out_of_stock [{how}]" and not is_unplaced(done)
    long = refused_reason("x" * 300, placed=False)
    assert len(long) == REASON_MAX and is_unplaced(long)
    assert len(settled(long, "re-reserved")) <= REASON_MAX
