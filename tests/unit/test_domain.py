"""Pure domain: money, the order transition table and allocation."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.allocation import Line, allocate, merge_lines
from domain.errors import InvalidTransition, ReservationRefused
from domain.money import Money, MoneyError
from domain.orders import FINAL_STATUSES, TRANSITIONS, OrderStatus, ensure_transition


class TestMoney:
    def test_major_string_round_trip(self):
        assert Money(1234, "CNY").to_major_str() == "12.34"
        assert Money(5, "USD").to_major_str() == "0.05"
        assert Money(500, "JPY").to_major_str() == "500"
        assert Money.from_major_str("12.34", "CNY") == Money(1234, "CNY")

    def test_refuses_inexact_and_float(self):
        with pytest.raises(MoneyError):
            Money.from_major_str("12.345", "CNY")
        with pytest.raises(MoneyError):
            Money(12.5, "CNY")  # type: ignore[arg-type]
        with pytest.raises(MoneyError):
            Money(100, "XXX")

    def test_currency_mismatch(self):
        with pytest.raises(MoneyError):
            Money(1, "CNY") + Money(1, "USD")
        assert Money(150, "CNY") * 3 == Money(450, "CNY")

    @given(st.integers(min_value=0, max_value=10**15), st.sampled_from(["CNY", "USD", "JPY"]))
    def test_round_trip_property(self, amount, currency):
        m = Money(amount, currency)
        assert Money.from_major_str(m.to_major_str(), currency) == m


class TestTransitions:
    def test_happy_path_is_legal(self):
        path = ["RECEIVED", "RESERVED", "AWAITING_PAYMENT", "PAID", "SHIPPED", "IN_TRANSIT",
                "DELIVERED", "RECEIPT_CONFIRMED", "COMPLETED"]  # fmt: skip
        for a, b in itertools.pairwise(path):
            assert ensure_transition(a, b) == OrderStatus(b)

    def test_backwards_and_from_final_refused(self):
        with pytest.raises(InvalidTransition):
            ensure_transition("PAID", "RESERVED")
        for final in FINAL_STATUSES:
            for target in OrderStatus:
                with pytest.raises(InvalidTransition):
                    ensure_transition(final, target)

    def test_every_status_has_a_row(self):
        assert set(TRANSITIONS) == set(OrderStatus)
        assert {"REJECTED", "EXPIRED", "CANCELLED", "COMPLETED"} == set(FINAL_STATUSES)

    def test_a_delivered_order_completes_only_through_receipt(self):
        with pytest.raises(InvalidTransition):
            ensure_transition("DELIVERED", "COMPLETED")
        assert ensure_transition("DELIVERED", "RECEIPT_CONFIRMED") == "RECEIPT_CONFIRMED"
        with pytest.raises(InvalidTransition):  # received goods are returned, not re-flagged
            ensure_transition("RECEIPT_CONFIRMED", "NEEDS_ATTENTION")


class TestAllocation:
    def test_prefers_one_warehouse(self):
        got = allocate(
            [Line("A", 2), Line("B", 1)],
            {"A": {"east": 5, "west": 2}, "B": {"east": 0, "west": 1}},
            {"A": True, "B": True},
        )
        assert {(a.sku, a.warehouse, a.quantity) for a in got} == {
            ("A", "west", 2),
            ("B", "west", 1),
        }

    def test_splits_when_needed(self):
        got = allocate([Line("A", 6)], {"A": {"east": 4, "west": 3}}, {"A": True})
        assert [(a.warehouse, a.quantity) for a in got] == [("east", 4), ("west", 2)]

    def test_reasons(self):
        with pytest.raises(ReservationRefused) as e:
            allocate([Line("A", 6)], {"A": {"east": 5}}, {"A": True})
        assert e.value.reason == "out_of_stock"
        with pytest.raises(ReservationRefused) as e:
            allocate([Line("Z", 1)], {}, {"A": True})
        assert e.value.reason == "unknown_sku"
        with pytest.raises(ReservationRefused) as e:
            allocate([Line("A", 1)], {"A": {"east": 5}}, {"A": False})
        assert e.value.reason == "inactive_product"

    def test_merges_repeated_skus(self):
        assert merge_lines([Line("B", 1), Line("A", 2), Line("B", 3)]) == [
            Line("A", 2),
            Line("B", 4),
        ]

    @given(
        st.lists(st.tuples(st.sampled_from("ABCD"), st.integers(1, 20)), min_size=1, max_size=6),
        st.dictionaries(
            st.sampled_from("ABCD"),
            st.dictionaries(st.sampled_from(["e", "w", "n"]), st.integers(0, 30), max_size=3),
        ),
    )
    def test_never_over_allocates(self, lines, available):
        active = {s: True for s in "ABCD"}
        try:
            got = allocate([Line(s, q) for s, q in lines], available, active)
        except ReservationRefused:
            needed = merge_lines([Line(s, q) for s, q in lines])
            assert any(sum(available.get(n.sku, {}).values()) < n.quantity for n in needed)
            return
        for line in merge_lines([Line(s, q) for s, q in lines]):
            assert sum(a.quantity for a in got if a.sku == line.sku) == line.quantity
        for a in got:
            assert 0 < a.quantity <= available[a.sku][a.warehouse]
