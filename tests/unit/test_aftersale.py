"""domain.aftersale: the return transition table (every pair, every kind), dispositions,
returnable quantities and request checks, line shares and refunds (hypothesis), cap, approval
and deadlines."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.aftersale import (
    FINAL_STATUSES,
    RETURN_TRANSITIONS,
    Disposition,
    EarlierLine,
    ReturnKind,
    ReturnStatus,
    after_receipt,
    auto_approve,
    can_move,
    cap_refund,
    check_request,
    holds_units,
    ledger_kind,
    line_shares,
    on_hand_delta,
    parcel_due,
    receipt_due,
    refund_for,
    returnable,
    settled_units,
    window_ends,
    within,
)
from domain.errors import ValidationError

K, S, D = ReturnKind, ReturnStatus, Disposition

#: Rule 1 written out by hand, independently of the module's table.
ALLOWED: dict[ReturnKind, set[tuple[ReturnStatus, ReturnStatus]]] = {
    K.REFUND_ONLY: {
        (S.REQUESTED, S.APPROVED), (S.REQUESTED, S.REJECTED), (S.REQUESTED, S.CLOSED),
        (S.APPROVED, S.REFUNDED),
    },
    K.RETURN_AND_REFUND: {
        (S.REQUESTED, S.APPROVED), (S.REQUESTED, S.REJECTED), (S.REQUESTED, S.CLOSED),
        (S.APPROVED, S.AWAITING_PARCEL),
        (S.AWAITING_PARCEL, S.RECEIVED), (S.AWAITING_PARCEL, S.CLOSED),
        (S.RECEIVED, S.REFUNDED), (S.RECEIVED, S.CLOSED),
    },
    K.EXCHANGE: {
        (S.REQUESTED, S.APPROVED), (S.REQUESTED, S.REJECTED), (S.REQUESTED, S.CLOSED),
        (S.APPROVED, S.AWAITING_PARCEL),
        (S.AWAITING_PARCEL, S.RECEIVED), (S.AWAITING_PARCEL, S.CLOSED),
        (S.RECEIVED, S.RESHIPPED), (S.RECEIVED, S.REFUNDED), (S.RECEIVED, S.CLOSED),
    },
}  # fmt: skip
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class TestTransitions:
    @pytest.mark.parametrize("kind", list(K))
    def test_every_pair_is_allowed_iff_listed(self, kind: ReturnKind) -> None:
        for current, target in itertools.product(S, repeat=2):
            expected = (current, target) in ALLOWED[kind]
            assert can_move(kind, current, target) is expected, (kind, current, target)
            assert can_move(kind.value, current.value, target.value) is expected

    @pytest.mark.parametrize("kind", list(K))
    def test_table_covers_every_status_and_finals_have_no_move(self, kind: ReturnKind) -> None:
        assert set(RETURN_TRANSITIONS[kind]) == set(S)
        for status in FINAL_STATUSES:
            assert not RETURN_TRANSITIONS[kind][status]
        # Every status a kind can reach either moves on or is final: nothing gets stuck.
        reachable = {S.REQUESTED} | {t for _, t in ALLOWED[kind]}
        for status in reachable - FINAL_STATUSES:
            assert RETURN_TRANSITIONS[kind][status], (kind, status)

    def test_refund_only_never_waits_for_a_parcel(self) -> None:
        assert not any(
            S.AWAITING_PARCEL in (a, b) or S.RECEIVED in (a, b) for a, b in ALLOWED[K.REFUND_ONLY]
        )

    def test_unknown_kind_or_status_is_an_error(self) -> None:
        with pytest.raises(ValueError):
            can_move("SWAP", S.REQUESTED, S.APPROVED)
        with pytest.raises(ValueError):
            can_move(K.EXCHANGE, "LIMBO", S.APPROVED)


class TestDispositions:
    def test_ledger_kinds_and_on_hand(self) -> None:
        assert ledger_kind(D.RESTOCK) == "return_restock"
        assert ledger_kind("DAMAGED") == "write_off"
        assert ledger_kind(D.LOST) is None
        assert on_hand_delta(D.RESTOCK, 3) == 3
        assert on_hand_delta(D.DAMAGED, 3) == 0
        assert on_hand_delta(D.LOST, 3) == 0

    def test_settled_units_leave_out_lost(self) -> None:
        received = [("a", D.RESTOCK, 2), ("a", D.DAMAGED, 1), ("a", D.LOST, 1), ("b", D.LOST, 4)]
        assert settled_units(received) == {"a": 3}

    def test_after_receipt(self) -> None:
        assert after_receipt(K.RETURN_AND_REFUND, 2) == S.REFUNDED
        assert after_receipt(K.EXCHANGE, 1) == S.RESHIPPED
        assert after_receipt(K.RETURN_AND_REFUND, 0) == S.CLOSED
        assert after_receipt(K.EXCHANGE, 0) == S.CLOSED
        for kind in (K.RETURN_AND_REFUND, K.EXCHANGE):
            for settled in (0, 1):
                assert can_move(kind, S.RECEIVED, after_receipt(kind, settled))
        with pytest.raises(ValueError):
            after_receipt(K.REFUND_ONLY, 1)


class TestReturnable:
    def test_holds_units_per_status(self) -> None:
        for status in S:
            assert holds_units(status, received=False) is (status not in (S.REJECTED, S.CLOSED))
            assert holds_units(status, received=True) is (status != S.REJECTED)

    def test_earlier_returns_subtract_unless_rejected_or_closed_unreceived(self) -> None:
        delivered = {"a": 5, "b": 2, "c": 1}
        earlier = [
            EarlierLine("a", 1, S.REQUESTED),
            EarlierLine("a", 1, S.REFUNDED),
            EarlierLine("a", 2, S.REJECTED),
            EarlierLine("a", 2, S.CLOSED),  # withdrawn or never shipped back
            EarlierLine("b", 2, S.CLOSED, received=True),  # received, nothing refunded
            EarlierLine("z", 9, S.REQUESTED),  # not a delivered line: ignored
        ]
        assert returnable(delivered, earlier) == {"a": 3, "b": 0, "c": 1}

    def test_never_below_zero(self) -> None:
        assert returnable({"a": 1}, [EarlierLine("a", 3, S.RECEIVED, True)]) == {"a": 0}


def _field(lines: list[tuple[str, int]], available: dict[str, int], **kw: str) -> ValidationError:
    with pytest.raises(ValidationError) as err:
        check_request(lines, available, **kw)
    assert err.value.reason and str(err.value).startswith(err.value.field)
    return err.value


class TestCheckRequest:
    AVAILABLE = {"a": 2, "b": 0, "c": 5}

    def test_a_good_request_passes(self) -> None:
        check_request([("a", 2), ("c", 1)], self.AVAILABLE)

    @pytest.mark.parametrize(
        ("lines", "field", "words"),
        [
            ([], "lines", "at least one"),
            ([("x", 1)], "lines.0.sku", "not a line"),
            ([("a", 1), ("a", 1)], "lines.1.sku", "already requested by lines.0"),
            ([("a", 0)], "lines.0.quantity", "at least 1"),
            ([("c", 1), ("a", -1)], "lines.1.quantity", "at least 1"),
            ([("a", True)], "lines.0.quantity", "whole number"),
            ([("a", 1.5)], "lines.0.quantity", "whole number"),
            ([("a", 3)], "lines.0.quantity", "more than the 2 left"),
            ([("c", 1), ("b", 1)], "lines.1.quantity", "more than the 0 left"),
        ],
    )
    def test_every_error_names_its_field(
        self, lines: list[tuple[str, int]], field: str, words: str
    ) -> None:
        err = _field(lines, self.AVAILABLE)
        assert err.field == field
        assert words in err.reason

    def test_key_field_names_the_line(self) -> None:
        assert _field([("x", 1)], self.AVAILABLE, key_field="line_no").field == "lines.0.line_no"

    def test_composes_with_returnable(self) -> None:
        available = returnable({"a": 3}, [EarlierLine("a", 2, S.AWAITING_PARCEL)])
        check_request([("a", 1)], available)
        assert _field([("a", 2)], available).field == "lines.0.quantity"


line_sets = st.lists(
    st.tuples(st.integers(0, 20), st.integers(0, 100_000)), min_size=1, max_size=8
).map(lambda ls: [(f"l{i}", q, u) for i, (q, u) in enumerate(ls)])


class TestLineShares:
    def test_three_lines_ten_percent_off(self) -> None:
        lines = [("a", 1, 10_000), ("b", 2, 2_500), ("c", 4, 1_250)]  # 100.00 + 50.00 + 50.00
        assert line_shares(lines, 18_000) == {"a": 9_000, "b": 4_500, "c": 4_500}

    def test_a_discount_that_does_not_divide_evenly(self) -> None:
        # 3 x 1.00 lines charged 2.00 (1.00 off): 66.67 each exactly, 200 to share.
        assert line_shares([("a", 1, 100), ("b", 1, 100), ("c", 1, 100)], 200) == {
            "a": 67,
            "b": 67,
            "c": 66,
        }
        # 10.00 / 20.00 / 30.00 charged 50.01: exact 8.335, 16.67, 25.005; remainders 0.5,
        # 0, 0.5: the tie goes to the larger list amount (c).
        shares = line_shares([("a", 1, 1000), ("b", 1, 2000), ("c", 1, 3000)], 5001)
        assert shares == {"a": 833, "b": 1667, "c": 2501}

    def test_no_discount_or_a_fee_leaves_list_amounts(self) -> None:
        lines = [("a", 2, 300), ("b", 1, 50)]
        assert line_shares(lines, 650) == {"a": 600, "b": 50}
        assert line_shares(lines, 700) == {"a": 600, "b": 50}

    def test_free_order_and_bad_input(self) -> None:
        assert line_shares([("a", 1, 0)], 0) == {"a": 0}
        assert line_shares([("a", 2, 100)], 0) == {"a": 0}
        with pytest.raises(ValueError):
            line_shares([("a", 1, 100), ("a", 1, 100)], 100)
        with pytest.raises(ValueError):
            line_shares([("a", -1, 100)], 0)
        with pytest.raises(ValueError):
            line_shares([("a", 1, 100)], -1)

    @given(line_sets, st.data())
    def test_sums_exactly_and_stays_proportional(
        self, lines: list[tuple[str, int, int]], data: st.DataObject
    ) -> None:
        list_total = sum(q * u for _, q, u in lines)
        charged = data.draw(st.integers(0, list_total + 100))
        shares = line_shares(lines, charged)
        assert list(shares) == [k for k, _, _ in lines]
        assert sum(shares.values()) == min(charged, list_total)
        paid = min(charged, list_total)
        for key, q, u in lines:
            exact = Fraction(q * u * paid, list_total) if list_total else Fraction(0)
            assert abs(shares[key] - exact) < 1, (key, shares[key], exact)
            assert 0 <= shares[key] <= q * u
        # Deterministic: the same input always gives the same split.
        assert line_shares(lines, charged) == shares


@st.composite
def partitions(draw: st.DrawFn) -> tuple[int, int, list[int]]:
    quantity = draw(st.integers(1, 50))
    share = draw(st.integers(0, 10**9))
    # Cut points (repeats make zero-unit steps, which must refund 0).
    cuts = sorted(draw(st.lists(st.integers(0, quantity), max_size=12)))
    bounds = [0, *cuts, quantity]
    return share, quantity, [b - a for a, b in itertools.pairwise(bounds)]


class TestRefundFor:
    def test_hand_example(self) -> None:
        # A line of 3 units charged 100: 33, 33, 34 one by one; 66 then 34 in two steps.
        assert [refund_for(100, 3, b, 1) for b in range(3)] == [33, 33, 34]
        assert refund_for(100, 3, 0, 2) + refund_for(100, 3, 2, 1) == 100
        assert refund_for(100, 3, 0, 3) == 100

    @given(partitions())
    def test_any_partition_refunds_exactly_the_share(
        self, case: tuple[int, int, list[int]]
    ) -> None:
        share, quantity, steps = case
        total, before = 0, 0
        for step in steps:
            refund = refund_for(share, quantity, before, step)
            assert refund >= 0
            total += refund
            before += step
            assert total <= share
            assert total == share * before // quantity  # never ahead of the units returned
        assert total == share

    def test_refuses_more_units_than_the_line(self) -> None:
        with pytest.raises(ValueError):
            refund_for(100, 3, 2, 2)
        with pytest.raises(ValueError):
            refund_for(100, 3, -1, 1)
        with pytest.raises(ValueError):
            refund_for(100, 0, 0, 0)


class TestCap:
    def test_fits(self) -> None:
        assert cap_refund(300, 1000, 700) == 300
        assert cap_refund(0, 0, 0) == 0

    def test_beyond_captured_is_refused_naming_amount(self) -> None:
        with pytest.raises(ValidationError) as err:
            cap_refund(301, 1000, 700)
        assert err.value.field == "amount"
        assert "300 left" in err.value.reason

    def test_clamp_cuts_to_what_is_left(self) -> None:
        assert cap_refund(301, 1000, 700, clamp=True) == 300
        assert cap_refund(5, 1000, 1200, clamp=True) == 0

    def test_negative_is_refused_even_when_clamping(self) -> None:
        with pytest.raises(ValidationError) as err:
            cap_refund(-1, 1000, 0, clamp=True)
        assert err.value.field == "amount"

    @given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))
    def test_never_past_captured(self, amount: int, captured: int, refunded: int) -> None:
        got = cap_refund(amount, captured, refunded, clamp=True)
        assert 0 <= got <= amount
        assert refunded + got <= max(captured, refunded)


class TestAutoApprove:
    @pytest.mark.parametrize("kind", list(K))
    def test_every_condition_is_needed(self, kind: ReturnKind) -> None:
        def ok(amount: int, flags: list[bool]) -> bool:
            return auto_approve(kind, amount, flags, within_window=True, threshold=5000)

        assert ok(5000, [True, True])
        assert not ok(5001, [True, True])
        assert not ok(100, [True, False])
        assert not ok(100, [])
        assert not auto_approve(kind, 100, [True], within_window=False, threshold=5000)
        assert not auto_approve(kind, 0, [True], within_window=True, threshold=None)

    def test_unknown_kind_is_an_error(self) -> None:
        with pytest.raises(ValueError):
            auto_approve("SWAP", 1, [True], within_window=True, threshold=10)


class TestDeadlines:
    def test_offsets(self) -> None:
        week = 7 * 24 * 3600
        assert receipt_due(T0, week) == T0 + timedelta(days=7)
        assert window_ends(T0, week) == T0 + timedelta(days=7)
        assert parcel_due(T0, 3600) == T0 + timedelta(hours=1)

    def test_naive_times_and_negative_delays_are_refused(self) -> None:
        with pytest.raises(ValueError):
            receipt_due(datetime(2024, 5, 1), 10)
        with pytest.raises(ValueError):
            parcel_due(T0, -1)

    def test_the_deadline_itself_is_past(self) -> None:
        ends = window_ends(T0, 60)
        assert within(ends - timedelta(microseconds=1), ends)
        assert not within(ends, ends)
