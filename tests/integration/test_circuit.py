"""The Redis circuit breaker, against real Redis."""

from __future__ import annotations

import time

from adapters.circuit import CircuitBreaker, CircuitState
from tests.conftest import redis_client


def test_opens_after_threshold_and_half_opens_after_cooldown(db):
    cb = CircuitBreaker(redis_client(), "testprov", threshold=3, cooldown_s=0.5)
    assert cb.allow() and cb.state() is CircuitState.CLOSED
    assert cb.record_failure() is False
    cb.record_success()  # a success resets the run of failures
    assert [cb.record_failure() for _ in range(3)] == [False, False, True]
    assert not cb.allow() and cb.state() is CircuitState.OPEN
    assert 0 < cb.retry_after_s() <= 0.5
    time.sleep(0.6)
    assert cb.allow()  # half-open: one call may try
    assert cb.record_failure() is True  # ... and one failure opens it again at once
    time.sleep(0.6)
    cb.record_success()
    assert cb.record_failure() is False  # closed again: the count started over


def test_shared_between_processes_via_redis(db):
    a = CircuitBreaker(redis_client(), "shared", threshold=2, cooldown_s=5)
    b = CircuitBreaker(redis_client(), "shared", threshold=2, cooldown_s=5)
    a.record_failure()
    b.record_failure()
    assert not a.allow() and not b.allow()
