"""Intake's view of a RabbitMQ alarm (workers/broker_blocked.py): while the broker says it is
blocked, 503 for all but one probe per Retry-After; a confirmed publish clears it."""

from __future__ import annotations

import time

import pytest

from workers import broker_blocked


@pytest.fixture(autouse=True)
def clock(monkeypatch) -> list[float]:
    broker_blocked.unblocked()
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


def test_a_failed_publish_alone_never_refuses_intake() -> None:
    broker_blocked.publish_failed()  # the broker unreachable: PostgreSQL keeps the orders
    assert broker_blocked.retry_in(5.0) is None


def test_while_blocked_one_probe_per_retry_after_goes_through(clock) -> None:
    broker_blocked.blocked("low on memory")
    broker_blocked.publish_failed()
    assert broker_blocked.retry_in(5.0) == pytest.approx(5.0)
    clock[0] += 4.0
    assert broker_blocked.retry_in(5.0) == pytest.approx(1.0)
    clock[0] += 1.5
    assert broker_blocked.retry_in(5.0) is None, "the probe tries to publish"
    clock[0] += 15.0  # the probe's publish is still waiting for its confirm
    assert broker_blocked.retry_in(5.0) == 5.0, "only one probe at a time"
    broker_blocked.publish_failed()  # still blocked: another window
    assert broker_blocked.retry_in(5.0) == pytest.approx(5.0)


def test_a_probe_that_never_reports_is_forgotten(clock) -> None:
    broker_blocked.blocked("low on memory")
    assert broker_blocked.retry_in(5.0) is None  # a probe (its order a repeat: no publish)
    clock[0] += broker_blocked.PROBE_EXPIRY_S + 1
    assert broker_blocked.retry_in(5.0) is None


def test_unblocked_or_a_confirmed_publish_ends_it() -> None:
    broker_blocked.blocked("low on memory")
    broker_blocked.publish_failed()
    broker_blocked.unblocked()
    assert broker_blocked.retry_in(5.0) is None
