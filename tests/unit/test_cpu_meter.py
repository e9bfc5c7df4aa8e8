"""bench.common.cpu_used: CPU per part between two samples, exited processes included."""

from __future__ import annotations

import pytest

from bench.common import ProcCpu, cpu_used

POSTMASTER, BACKEND, BENCH, WORKER = 100, 101, 1, 200


def test_a_process_in_both_samples_counts_its_growth() -> None:
    before = {(BACKEND, 1.0): ProcCpu("postgres", POSTMASTER, 2.0)}
    after = {(BACKEND, 1.0): ProcCpu("postgres", POSTMASTER, 2.5)}
    assert cpu_used(before, after, reapers=set()) == pytest.approx({"postgres": 0.5})


def test_a_process_born_in_between_counts_all_it_used() -> None:
    after = {(WORKER, 9.0): ProcCpu("worker", BENCH, 0.7)}
    assert cpu_used({}, after, reapers=set()) == pytest.approx({"worker": 0.7})


def test_a_backend_that_exited_counts_only_what_it_used_after_the_first_sample() -> None:
    # The backend had used 2.0 s when sampled and 3.0 s when it exited; the postmaster reaped
    # it, so its whole lifetime (3.0 s) shows in the postmaster's reaped CPU.
    before = {
        (POSTMASTER, 0.5): ProcCpu("postgres", 1, 10.0, reaped=4.0),
        (BACKEND, 1.0): ProcCpu("postgres", POSTMASTER, 2.0),
    }
    after = {(POSTMASTER, 0.5): ProcCpu("postgres", 1, 10.1, reaped=7.0)}
    used = cpu_used(before, after, reapers={POSTMASTER})
    assert used == pytest.approx({"postgres": 0.1 + 3.0 - 2.0})


def test_a_backend_born_and_gone_in_between_counts_its_whole_lifetime() -> None:
    before = {(POSTMASTER, 0.5): ProcCpu("postgres", 1, 10.0, reaped=4.0)}
    after = {(POSTMASTER, 0.5): ProcCpu("postgres", 1, 10.0, reaped=4.6)}
    assert cpu_used(before, after, reapers={POSTMASTER}) == pytest.approx({"postgres": 0.6})


def test_reaped_children_count_only_for_reapers() -> None:
    # The bench process reaps the processes it started (stopped workers): that CPU is theirs,
    # not the load generator's, and it is left out rather than misattributed.
    before = {(BENCH, 0.1): ProcCpu("bench", 1, 1.0, reaped=0.0)}
    after = {(BENCH, 0.1): ProcCpu("bench", 1, 1.5, reaped=30.0)}
    assert cpu_used(before, after, reapers=set()) == pytest.approx({"bench": 0.5})


def test_a_gone_child_of_a_non_reaper_takes_nothing_off() -> None:
    before = {
        (BENCH, 0.1): ProcCpu("bench", 1, 1.0),
        (WORKER, 2.0): ProcCpu("worker", BENCH, 5.0),
    }
    after = {(BENCH, 0.1): ProcCpu("bench", 1, 1.2)}
    assert cpu_used(before, after, reapers=set()) == pytest.approx({"bench": 0.2})


def test_a_reused_pid_is_another_process() -> None:
    before = {(BACKEND, 1.0): ProcCpu("postgres", POSTMASTER, 5.0)}
    after = {(BACKEND, 8.0): ProcCpu("postgres", POSTMASTER, 0.3)}
    # The old backend exited (its parent is not sampled, so it is not accounted); the new one
    # counts all of its 0.3 s instead of a negative difference.
    assert cpu_used(before, after, reapers=set()) == pytest.approx({"postgres": 0.3})
