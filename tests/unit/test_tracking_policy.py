"""Pure tracking policy: forward-only shipment statuses and the adaptive polling cadence."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.tracking import (
    FINAL,
    Cadence,
    ShipmentStatus,
    can_advance,
    next_poll_delay,
    plan_chunks,
)

S = ShipmentStatus
ALL = list(S)
NON_FINAL = [s for s in ALL if s not in FINAL]
LADDER = [S.PENDING, S.INFO_RECEIVED, S.IN_TRANSIT]
LAST_MILE = [S.OUT_FOR_DELIVERY, S.AVAILABLE_FOR_PICKUP, S.ATTEMPT_FAIL]
H = 3600.0
CADENCE = Cadence()

# Every legal move, written out by hand (not derived from the implementation).
ALLOWED: set[tuple[S, S]] = {
    # up the ladder
    *((a, b) for i, a in enumerate(LADDER) for b in [*LADDER[i + 1 :], *LAST_MILE, S.DELIVERED]),
    # sideways on the last mile (a second attempt, then the locker) and on to delivery
    *((a, b) for a in LAST_MILE for b in [*LAST_MILE, S.DELIVERED] if a != b),
    # trouble and the end of tracking can happen at any time before the end
    *((a, S.EXCEPTION) for a in NON_FINAL if a != S.EXCEPTION),
    *((a, S.EXPIRED) for a in NON_FINAL),
    # the carrier resolves the problem
    *((S.EXCEPTION, b) for b in [S.IN_TRANSIT, *LAST_MILE, S.DELIVERED]),
}


def delay(status, *, age=0.0, push=False, failures=0, cadence=CADENCE):
    return next_poll_delay(
        status, last_event_age_s=age, has_push=push, failures=failures, cadence=cadence
    )


class TestCanAdvance:
    def test_the_adapters_report_the_domain_vocabulary(self):
        import typing

        from adapters.logistics.base import TrackingEvent, TrackingResult

        for dto in (TrackingResult, TrackingEvent):
            assert typing.get_type_hints(dto)["status"] is ShipmentStatus

    @pytest.mark.parametrize(("current", "new"), list(itertools.product(ALL, ALL)))
    def test_table(self, current, new):
        assert can_advance(current, new) is ((current, new) in ALLOWED)

    def test_accepts_plain_strings_and_the_enum(self):
        assert can_advance("IN_TRANSIT", S.DELIVERED)
        assert not can_advance("DELIVERED", "IN_TRANSIT")
        with pytest.raises(ValueError):
            can_advance("IN_TRANSIT", "LOST")

    def test_nothing_leaves_a_final_status(self):
        for final, new in itertools.product(FINAL, ALL):
            assert not can_advance(final, new)

    def test_exception_is_left_only_for_a_carrier_status(self):
        assert not can_advance(S.EXCEPTION, S.PENDING)
        assert not can_advance(S.EXCEPTION, S.INFO_RECEIVED)
        assert can_advance(S.EXCEPTION, S.IN_TRANSIT)
        assert can_advance(S.EXCEPTION, S.DELIVERED)

    @given(st.lists(st.sampled_from(ALL), max_size=40))
    def test_any_report_stream_only_moves_forward(self, reports):
        rank = {S.PENDING: 0, S.INFO_RECEIVED: 1, S.IN_TRANSIT: 2, S.DELIVERED: 4}
        rank |= dict.fromkeys(LAST_MILE, 3)
        status, ended = S.PENDING, False
        for new in reports:
            if not can_advance(status, new):
                continue
            assert not ended, f"left final {status} for {new}"
            if status in rank and new in rank:
                assert rank[new] >= rank[status]
            if status == S.EXCEPTION and new != S.EXPIRED:
                assert rank[new] >= rank[S.IN_TRANSIT]
            status, ended = new, new in FINAL


class TestNextPollDelay:
    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (S.PENDING, 2 * H),
            (S.INFO_RECEIVED, 2 * H),
            (S.IN_TRANSIT, 4 * H),
            (S.OUT_FOR_DELIVERY, 1 * H),
            (S.AVAILABLE_FOR_PICKUP, 1 * H),
            (S.ATTEMPT_FAIL, 1 * H),
            (S.EXCEPTION, 1 * H),
            (S.DELIVERED, None),
            (S.EXPIRED, None),
        ],
    )
    def test_every_status(self, status, expected):
        assert delay(status) == expected

    def test_quiet_shipments_are_polled_less(self):
        two_days = 2 * 86400
        assert delay(S.IN_TRANSIT, age=two_days - 1) == 4 * H
        assert delay(S.IN_TRANSIT, age=two_days) == 12 * H
        assert delay(S.PENDING, age=3 * 86400) == 12 * H
        assert delay(S.OUT_FOR_DELIVERY, age=5 * 86400) == 12 * H

    def test_exception_stays_escalated_even_when_quiet(self):
        assert delay(S.EXCEPTION, age=10 * 86400) == 1 * H
        assert delay(S.EXCEPTION) < delay(S.IN_TRANSIT)

    def test_unknown_age_is_not_quiet(self):
        d = next_poll_delay(
            S.IN_TRANSIT, last_event_age_s=None, has_push=False, failures=0, cadence=CADENCE
        )
        assert d == 4 * H

    def test_push_makes_polling_a_fallback(self):
        assert delay(S.IN_TRANSIT, push=True) == 12 * H
        assert delay(S.OUT_FOR_DELIVERY, push=True) == 3 * H
        assert delay(S.EXCEPTION, push=True) == 3 * H
        assert delay(S.IN_TRANSIT, age=3 * 86400, push=True) == 36 * H

    def test_error_backoff_doubles_and_is_capped(self):
        got = [delay(S.IN_TRANSIT, failures=n) for n in range(1, 10)]
        assert got == [0.5 * H, 1 * H, 2 * H, 4 * H, 8 * H, 16 * H, 24 * H, 24 * H, 24 * H]
        assert delay(S.IN_TRANSIT, failures=10_000) == 24 * H  # a long outage: no overflow

    def test_backoff_ignores_push_and_status_but_not_finality(self):
        assert delay(S.EXCEPTION, failures=3, push=True) == 2 * H
        assert delay(S.DELIVERED, failures=3) is None

    def test_never_below_min_interval(self):
        fast = Cadence(new=60, in_transit=60, last_mile=60, exception=60, error_base=10)
        for status in NON_FINAL:
            assert delay(status, cadence=fast) == 1800
            assert delay(status, cadence=fast, failures=1) == 1800
        custom = replace(fast, min_interval=900)
        assert delay(S.EXCEPTION, cadence=custom) == 900

    def test_cadence_validates_and_scales(self):
        with pytest.raises(ValueError):
            Cadence(min_interval=0)
        with pytest.raises(ValueError):
            Cadence(push_multiplier=0.5)
        fast = CADENCE.scaled(3600)
        assert (fast.in_transit, fast.min_interval, fast.quiet_after) == (4, 0.5, 48)
        assert fast.push_multiplier == CADENCE.push_multiplier
        assert delay(S.IN_TRANSIT, cadence=fast) == 4


positive = st.floats(min_value=1, max_value=10 * 86400, allow_nan=False)
cadences = st.builds(
    Cadence,
    new=positive,
    in_transit=positive,
    last_mile=positive,
    quiet=positive,
    quiet_after=positive,
    exception=positive,
    push_multiplier=st.floats(min_value=1, max_value=10),
    error_base=positive,
    error_cap=positive,
    min_interval=positive,
)
ages = st.one_of(st.none(), st.floats(min_value=0, max_value=365 * 86400))


class TestDelayProperties:
    @given(st.sampled_from(ALL), ages, st.booleans(), st.integers(0, 200), cadences)
    def test_contract(self, status, age, push, failures, cadence):
        d = next_poll_delay(
            status, last_event_age_s=age, has_push=push, failures=failures, cadence=cadence
        )
        if status in FINAL:
            assert d is None
            return
        assert d is not None and d >= cadence.min_interval
        if failures:
            assert d <= max(cadence.error_cap, cadence.min_interval)
        else:
            longest = max(
                cadence.new, cadence.in_transit, cadence.last_mile, cadence.exception, cadence.quiet
            )
            stretch = cadence.push_multiplier if push else 1
            assert d <= max(longest * stretch, cadence.min_interval) * (1 + 1e-12)

    @given(st.sampled_from(NON_FINAL), ages, st.booleans(), st.integers(1, 100), cadences)
    def test_backoff_never_shrinks_with_more_failures(self, status, age, push, failures, cadence):
        def d(n):
            return next_poll_delay(
                status, last_event_age_s=age, has_push=push, failures=n, cadence=cadence
            )

        assert d(failures + 1) >= d(failures)

    @given(st.sampled_from(NON_FINAL), ages, st.integers(0, 100), cadences)
    def test_push_never_polls_more_often(self, status, age, failures, cadence):
        def d(push):
            return next_poll_delay(
                status, last_event_age_s=age, has_push=push, failures=failures, cadence=cadence
            )

        assert d(True) >= d(False)

    @given(st.sampled_from(NON_FINAL), st.floats(0, 365 * 86400), st.booleans(), cadences)
    def test_older_silence_never_polls_more_often_except_exception(self, status, age, push, c):
        def d(a):
            return next_poll_delay(status, last_event_age_s=a, has_push=push, failures=0, cadence=c)

        assert d(age + c.quiet_after) >= d(age)


# -- poll chunks ------------------------------------------------------------------------------


def _at(seconds: float) -> datetime:
    return datetime(2026, 11, 2, 8, 0, tzinfo=UTC) + timedelta(seconds=seconds)


def test_chunks_follow_due_order_and_start_when_their_last_member_is_due():
    claimed = [(3, _at(0.4)), (1, _at(0.0)), (2, _at(0.2)), (4, _at(0.6))]
    chunks = plan_chunks(claimed, size=2, window_s=1.0)
    assert [c.shipment_ids for c in chunks] == [(1, 2), (3, 4)]
    assert [c.not_before for c in chunks] == [_at(0.2), _at(0.6)]


def test_a_chunk_closes_when_its_due_times_spread_past_the_window():
    # Nobody waits more than the window past its own due time for the rest of its chunk.
    claimed = [(i, _at(i * 0.4)) for i in range(10)]  # due every 0.4 s over 3.6 s
    chunks = plan_chunks(claimed, size=20, window_s=1.0)
    assert [c.shipment_ids for c in chunks] == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9,)]
    due = dict(claimed)
    for chunk in chunks:
        assert all(due[sid] <= chunk.not_before for sid in chunk.shipment_ids)  # never early
        assert all(
            (chunk.not_before - due[sid]).total_seconds() <= 1.0 for sid in chunk.shipment_ids
        )


def test_no_claims_no_chunks():
    assert plan_chunks([], size=20, window_s=1.0) == []


def test_pace_spreads_a_backlog_at_the_quota_rate_and_never_moves_a_poll_earlier():
    from domain.tracking import pace

    now = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    backlog = [(i, now - timedelta(seconds=30)) for i in range(1, 8)]
    later = (99, now + timedelta(seconds=10))
    paced = dict(pace([*backlog, later], now=now, rate_per_s=2.0, burst=3))
    # Three at once (the burst), then one every half second; the late one keeps its time.
    assert [(paced[i] - now).total_seconds() for i in range(1, 8)] == [0, 0, 0, 0.5, 1, 1.5, 2]
    assert paced[99] == later[1]
    with pytest.raises(ValueError):
        pace(backlog, now=now, rate_per_s=0, burst=1)
