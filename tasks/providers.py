"""Calling a provider from a task: circuit breaker, timing and the timeline entry.

No transaction is open while the provider is called (DESIGN.md §3.5).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from adapters.circuit import CircuitBreaker
from domain.errors import ProviderRejected, ProviderUnavailable
from observability import metrics
from services import timeline
from services.unit_of_work import unit_of_work
from settings import get_settings
from workers.connections import redis_client

T = TypeVar("T")


class CircuitOpen(ProviderUnavailable):
    """The provider's circuit is open: the call was not made. The order simply waits."""


def breaker(provider: str) -> CircuitBreaker:
    s = get_settings()
    return CircuitBreaker(
        redis_client(), provider, s.circuit_failure_threshold, s.circuit_cooldown_s
    )


def call(provider: str, operation: str, order_id: str, fn: Callable[[], T]) -> T:
    """Call ``fn()`` (one provider request) through the provider's circuit breaker.

    Raises :class:`CircuitOpen` without calling when the circuit is open. A transient failure
    is counted (and recorded on the order's timeline) and re-raised for the task to retry; a
    business rejection counts as the provider being up.
    """
    cb = breaker(provider)
    if not cb.allow():
        metrics.observe_provider_call(provider, operation, "circuit_open")
        raise CircuitOpen(provider, f"circuit open for {cb.retry_after_s():.1f}s")
    started = time.perf_counter()
    try:
        result = fn()
    except ProviderUnavailable as exc:
        metrics.observe_provider_call(provider, operation, "unavailable", _since(started))
        opened = cb.record_failure()
        _record(order_id, provider, operation, started, f"unavailable: {exc}", opened)
        raise
    except ProviderRejected as exc:
        metrics.observe_provider_call(provider, operation, "rejected", _since(started))
        cb.record_success()
        _record(order_id, provider, operation, started, f"rejected: {exc.code}", False)
        raise
    except Exception:
        metrics.observe_provider_call(provider, operation, "error", _since(started))
        raise
    metrics.observe_provider_call(provider, operation, "ok", _since(started))
    cb.record_success()
    return result


def _since(started: float) -> float:
    return time.perf_counter() - started


def _record(
    order_id: str, provider: str, operation: str, started: float, outcome: str, opened: bool
) -> None:
    detail = {
        "provider": provider,
        "operation": operation,
        "ms": round((time.perf_counter() - started) * 1000),
        "outcome": outcome[:200],
    }
    if opened:
        detail["circuit"] = "opened"
    with unit_of_work() as session:
        timeline.record(session, order_id, "provider_call", detail=detail)
