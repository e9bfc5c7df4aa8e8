"""The Redis circuit breaker, against real Redis.

The breaker judges time by the Redis server's clock (``TIME`` in its script, so all workers
agree), which a test cannot move: cool-downs and windows are waited out by polling for the
condition (``wait_until``), never by pausing for a guessed time.
"""

from __future__ import annotations

import random

from adapters.circuit import CircuitBreaker, CircuitPolicy, CircuitState
from tests.conftest import redis_client, wait_until


def _breaker(name: str, **policy: float) -> CircuitBreaker:
    redis_client().delete(*(f"circuit:{name}:{k}" for k in ("window", "open", "probe")))
    return CircuitBreaker(redis_client(), name, CircuitPolicy(**policy))  # type: ignore[arg-type]


def _server_time() -> float:
    seconds, micros = redis_client().time()
    return seconds + micros / 1_000_000


def test_opens_on_failure_ratio_then_half_opens_after_cooldown(db):
    cb = _breaker("ratio", min_calls=4, failure_ratio=0.5, window_s=30, cooldown_s=0.5)
    assert cb.allow() and cb.state() is CircuitState.CLOSED
    cb.record_success()
    cb.record_success()
    assert cb.record_failure() is False  # 1 of 3: too few calls to judge
    assert cb.record_failure() is True  # 2 of 4 failed: open
    assert not cb.allow() and cb.state() is CircuitState.OPEN
    assert 0 < cb.retry_after_s() <= 0.5
    assert wait_until(cb.allow, timeout_s=30, every_s=0.02)  # half-open: calls may try again ...
    assert cb.record_failure() is True  # ... and the first failure opens it again at once
    wait_until(cb.allow, timeout_s=30, every_s=0.02)  # the second cool-down is over
    cb.record_success()  # closed, and the window starts empty
    assert [cb.record_failure() for _ in range(3)] == [False, False, True]  # 3 of 4 failed


def test_all_failures_below_min_calls_keep_it_closed(db):
    cb = _breaker("few", min_calls=10, failure_ratio=0.5, window_s=30, cooldown_s=5)
    assert not any(cb.record_failure() for _ in range(9))
    assert cb.allow()


def test_a_degraded_provider_failing_a_third_of_calls_is_not_shut_out(db):
    """Runs of 5+ consecutive failures occur at a 30 % failure rate; the ratio never opens."""
    cb = _breaker("degraded", min_calls=20, failure_ratio=0.5, window_s=30, cooldown_s=5)
    rng = random.Random(3)
    outcomes = [rng.random() < 0.3 for _ in range(600)]
    longest = max(len(run) for run in "".join("F" if f else "." for f in outcomes).split("."))
    assert longest >= 5  # the old consecutive-failure rule would have opened here
    for failed in outcomes:
        if failed:
            assert cb.record_failure() is False
        else:
            cb.record_success()
    assert cb.allow()


def test_old_outcomes_leave_the_window(db):
    cb = _breaker("window", min_calls=4, failure_ratio=0.5, window_s=0.4, cooldown_s=5)
    for _ in range(3):
        cb.record_failure()
    recorded = _server_time()  # after the three, by the clock the breaker reads
    # Those three are outside the window once it has passed on that clock.
    wait_until(lambda: _server_time() >= recorded + 0.4, timeout_s=30, every_s=0.02)
    cb.record_success()
    cb.record_success()
    cb.record_success()
    assert cb.record_failure() is False  # 1 of 4 inside the window
    assert cb.allow()


def test_shared_between_processes_via_redis(db):
    a = _breaker("shared", min_calls=2, failure_ratio=1.0, window_s=30, cooldown_s=5)
    b = CircuitBreaker(redis_client(), "shared", a.policy)
    a.record_failure()
    assert b.record_failure() is True
    assert not a.allow() and not b.allow()


def test_replayed_stored_failures_do_not_count_toward_the_circuit(db, monkeypatch):
    """A provider replaying the 500 it stored for an idempotency key is up; counting those
    replays re-opened a half-open circuit once per affected order."""
    import pytest

    from adapters.payments.base import REPLAYED_FAILURE
    from domain.errors import ProviderUnavailable
    from services.provider_calls import gate_for
    from settings import get_settings
    from workers.connections import redis_client

    monkeypatch.setenv("CIRCUIT_MIN_CALLS", "3")
    get_settings.cache_clear()
    _breaker("replaying")

    def replay() -> None:
        raise ProviderUnavailable("replaying", "HTTP 500 (replayed)", code=REPLAYED_FAILURE)

    def fail() -> None:
        raise ProviderUnavailable("replaying", "HTTP 503")

    order_id = "00000000-0000-0000-0000-000000000000"  # no such order: the timeline is skipped
    gate = gate_for(redis_client())
    for _ in range(10):
        with pytest.raises(ProviderUnavailable):
            gate.call("replaying", "create", order_id, replay)
    assert gate.breaker("replaying").allow()
    for _ in range(3):
        with pytest.raises(ProviderUnavailable):
            gate.call("replaying", "create", order_id, fail)
    assert not gate.breaker("replaying").allow()
    get_settings.cache_clear()
