"""Calling a provider from a task: circuit breaker, timing and the timeline entry.

No transaction is open while the provider is called (DESIGN.md §3.5).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

from adapters.circuit import CircuitBreaker, breaker_for
from adapters.payments.base import REPLAYED_FAILURE
from domain.errors import ProviderRejected, ProviderUnavailable
from observability import metrics
from observability.redact import redact
from services import timeline
from services.unit_of_work import unit_of_work
from workers.connections import redis_client

T = TypeVar("T")


class CircuitOpen(ProviderUnavailable):
    """The provider's circuit is open: the call was not made. The order simply waits."""


def breaker(provider: str) -> CircuitBreaker:
    return breaker_for(redis_client(), provider)


def call(
    provider: str, operation: str, order_id: str, fn: Callable[[], T], *, request: Any = None
) -> T:
    """Call ``fn()`` (one provider request) through the provider's circuit breaker.

    Raises :class:`CircuitOpen` without calling when the circuit is open (the skipped call is a
    ``provider_wait`` on the order's timeline, with the cool-down left). Every call that is
    made lands on the order's timeline (``provider_call``: operation, outcome, latency, and the
    request and response with secrets and personal data redacted). A transient failure is
    counted toward the circuit (except a replayed stored failure) and re-raised for the task to
    retry; a business rejection counts as the provider being up.
    """
    cb = breaker(provider)
    if not cb.allow():
        retry_after_s = round(cb.retry_after_s(), 1)
        metrics.observe_provider_call(provider, operation, "circuit_open")
        _record_wait(order_id, provider, operation, retry_after_s)
        raise CircuitOpen(provider, f"circuit open for {retry_after_s:.1f}s")
    call_record = _CallRecord(order_id, provider, operation, request)
    try:
        result = fn()
    except ProviderUnavailable as exc:
        # A replayed failure is the provider answering with the result it stored for our key:
        # it says nothing about the provider's health now, so the circuit does not count it.
        # Counted, one such order re-opened a half-open circuit on every cool-down.
        opened = exc.code != REPLAYED_FAILURE and cb.record_failure()
        call_record.done("unavailable", error=str(exc), opened=opened)
        raise
    except ProviderRejected as exc:
        cb.record_success()
        call_record.done("rejected", error=f"{exc.code}: {exc}")
        raise
    except Exception as exc:
        call_record.done("error", error=repr(exc))
        raise
    cb.record_success()
    call_record.done("ok", response=result)
    return result


def _record_wait(order_id: str, provider: str, operation: str, retry_after_s: float) -> None:
    """Note on the order's timeline that a call was skipped because the circuit is open: the
    order is waiting, not failing, and the timeline says why (best effort, like every call)."""
    detail = {"provider": provider, "operation": operation, "circuit": "open",
              "outcome": "skipped: circuit open", "retry_after_s": retry_after_s}  # fmt: skip
    with contextlib.suppress(Exception), unit_of_work() as session:
        timeline.record(session, order_id, "provider_wait", detail=detail)


class _CallRecord:
    """Times one provider call, then records it in the metrics and on the order's timeline."""

    def __init__(self, order_id: str, provider: str, operation: str, request: Any) -> None:
        self.order_id, self.provider, self.operation = order_id, provider, operation
        self.request = request
        self.started = time.perf_counter()

    def done(
        self, outcome: str, *, response: Any = None, error: str | None = None, opened: bool = False
    ) -> None:
        seconds = time.perf_counter() - self.started
        metrics.observe_provider_call(self.provider, self.operation, outcome, seconds)
        detail: dict[str, Any] = {
            "provider": self.provider,
            "operation": self.operation,
            "ms": round(seconds * 1000),
            "outcome": outcome if error is None else f"{outcome}: {error}"[:200],
            "request": redact(self.request),
        }
        if response is not None:
            detail["response"] = redact(response)
        if opened:
            detail["circuit"] = "opened"
        # The timeline is best effort here: the call happened whether or not this row lands.
        with contextlib.suppress(Exception), unit_of_work() as session:
            timeline.record(session, self.order_id, "provider_call", detail=detail)
