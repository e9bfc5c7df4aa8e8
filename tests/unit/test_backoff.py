"""The one retry-delay rule (domain.backoff) and the two places that use it."""

from __future__ import annotations

import random

import pytest

from domain.backoff import ceiling_s, equal_jitter_s


@pytest.mark.parametrize(
    ("failures", "ceiling"), [(0, 10.0), (1, 10.0), (2, 20.0), (3, 40.0), (5, 100.0), (60, 100.0)]
)
def test_the_ceiling_doubles_per_failure_up_to_the_cap(failures, ceiling):
    assert ceiling_s(failures, first_s=10, cap_s=100) == ceiling


@pytest.mark.parametrize("failures", [1, 2, 3, 4, 9])
def test_equal_jitter_draws_from_the_upper_half_of_the_ceiling(failures):
    rng = random.Random(7)
    ceiling = ceiling_s(failures, first_s=1, cap_s=8)
    draws = [equal_jitter_s(failures, first_s=1, cap_s=8, rng=rng) for _ in range(2000)]
    assert ceiling / 2 <= min(draws) and max(draws) <= ceiling
    # Spread over the whole half, not bunched at one end (equal jitter, not a fixed delay).
    assert min(draws) < ceiling * 0.52 and max(draws) > ceiling * 0.98


def test_a_seeded_rng_gives_the_same_delays():
    first = [equal_jitter_s(3, first_s=1, cap_s=60, rng=random.Random(3)) for _ in range(3)]
    again = [equal_jitter_s(3, first_s=1, cap_s=60, rng=random.Random(3)) for _ in range(3)]
    assert first == again


def test_task_retries_and_callbacks_use_it():
    from services.callbacks import RetryPolicy
    from tasks.base import BACKOFF_BASE_S, BACKOFF_CAP_S, backoff_s

    for retries in range(12):  # a task's retry n waits as after failure n + 1
        c = ceiling_s(retries + 1, first_s=BACKOFF_BASE_S, cap_s=BACKOFF_CAP_S)
        assert all(c / 2 <= backoff_s(retries) <= c for _ in range(50))
    policy = RetryPolicy(backoff_first_s=2, backoff_cap_s=30)
    for failures in range(1, 8):
        c = ceiling_s(failures, first_s=2, cap_s=30)
        assert all(c / 2 <= policy.backoff_s(failures) <= c for _ in range(50))


def test_the_ceiling_stays_the_cap_however_many_failures():
    """A task retries through an outage for as long as it lasts (tasks/base.py): at the 60 s
    cap a day is about 1,440 failures, past where 2.0 ** n overflows a float."""
    assert ceiling_s(5_000, first_s=1, cap_s=60) == 60
    assert 30 <= equal_jitter_s(100_000, first_s=1, cap_s=60) <= 60
