"""Calling a provider: the circuit breaker, timing, metrics and the order's timeline entry.

A service's provider step runs prepare (transaction) -> :meth:`Gate.call` (no transaction open,
DESIGN.md §3.5) -> record (new transaction). The gate is a port too: services receive it, the
task layer builds the real one (:func:`gate_for`, breakers shared through Redis) and unit tests
pass :class:`tests.fakes.FakeGate`.

:meth:`Gate.call_noted` is the same call for a step that records its result anyway: the call's
timeline row is written in the record transaction (:meth:`CallNote.recorded`) instead of one
of its own, one transaction less per provider call.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import redis
from sqlalchemy.orm import Session

from adapters.circuit import CircuitBreaker, breaker_for
from adapters.payments.base import REPLAYED_FAILURE
from domain.errors import ProviderRejected, ProviderUnavailable
from observability import metrics
from observability.redact import redact
from services import timeline
from services.unit_of_work import UnitOfWork, unit_of_work

T = TypeVar("T")


class CircuitOpen(ProviderUnavailable):
    """The provider's circuit is open: the call was not made. The order simply waits."""


class ProviderGate(Protocol):
    """What a service calls a provider through (see :meth:`Gate.call` for the contract)."""

    def call(
        self, provider: str, operation: str, order_id: str, fn: Callable[[], T], *,
        request: Any = None,
    ) -> T: ...  # fmt: skip

    def call_noted(
        self, provider: str, operation: str, order_id: str, fn: Callable[[], T], *,
        request: Any = None,
    ) -> tuple[T, CallNote]: ...  # fmt: skip


@dataclass(frozen=True, slots=True)
class CallNote:
    """One call's ``provider_call`` timeline row, not yet written."""

    order_id: str
    detail: dict[str, Any]

    def write(self, session: Session) -> None:
        timeline.record(session, self.order_id, "provider_call", detail=self.detail)

    def write_alone(self, uow: UnitOfWork) -> None:
        """Write the row in a transaction of its own (best effort: the call happened whether
        or not the row lands)."""
        with contextlib.suppress(Exception), uow() as session:
            self.write(session)

    @contextlib.contextmanager
    def recorded(self, uow: UnitOfWork) -> Iterator[Session]:
        """``uow()`` with the row written in it. If the block fails the row is written alone,
        so a call that was made is on the timeline whatever its recording did."""
        try:
            with uow() as session:
                self.write(session)
                yield session
        except BaseException:
            self.write_alone(uow)
            raise


class Gate:
    """The real gate: one :class:`CircuitBreaker` per provider name, calls on the timeline."""

    def __init__(
        self, breaker: Callable[[str], CircuitBreaker], uow: UnitOfWork = unit_of_work
    ) -> None:
        self.breaker, self.uow = breaker, uow

    def call(
        self, provider: str, operation: str, order_id: str, fn: Callable[[], T], *,
        request: Any = None,
    ) -> T:  # fmt: skip
        """Call ``fn()`` (one provider request) through the provider's circuit breaker.

        Raises :class:`CircuitOpen` without calling when the circuit is open (the skipped call
        is a ``provider_wait`` on the order's timeline, with the cool-down left). Every call
        that is made lands on the order's timeline (``provider_call``: operation, outcome,
        latency, and the request and response with secrets and personal data redacted). A
        transient failure is counted toward the circuit (except a replayed stored failure) and
        re-raised for the task to retry; a business rejection counts as the provider being up.
        """
        result, note = self.call_noted(provider, operation, order_id, fn, request=request)
        note.write_alone(self.uow)
        return result

    def call_noted(
        self, provider: str, operation: str, order_id: str, fn: Callable[[], T], *,
        request: Any = None,
    ) -> tuple[T, CallNote]:  # fmt: skip
        """:meth:`call`, but a successful call's timeline row is returned, for the caller to
        write in its record transaction (:meth:`CallNote.recorded`). Failures and skipped
        calls are on the timeline at once, as with :meth:`call`."""
        cb = self.breaker(provider)
        if not cb.allow():
            retry_after_s = round(cb.retry_after_s(), 1)
            metrics.observe_provider_call(provider, operation, "circuit_open")
            self._record_wait(order_id, provider, operation, retry_after_s)
            raise CircuitOpen(provider, f"circuit open for {retry_after_s:.1f}s")
        record = _CallRecord(order_id, provider, operation, request)
        try:
            result = fn()
        except ProviderUnavailable as exc:
            # A replayed failure is the provider answering with the result it stored for our
            # key: it says nothing about the provider's health now, so the circuit does not
            # count it. Counted, one such order re-opened a half-open circuit every cool-down.
            opened = exc.code != REPLAYED_FAILURE and cb.record_failure()
            record.done("unavailable", error=str(exc), opened=opened).write_alone(self.uow)
            raise
        except ProviderRejected as exc:
            cb.record_success()
            record.done("rejected", error=f"{exc.code}: {exc}").write_alone(self.uow)
            raise
        except Exception as exc:
            record.done("error", error=repr(exc)).write_alone(self.uow)
            raise
        cb.record_success()
        return result, record.done("ok", response=result)

    def _record_wait(
        self, order_id: str, provider: str, operation: str, retry_after_s: float
    ) -> None:
        """Note on the order's timeline that a call was skipped because the circuit is open:
        the order is waiting, not failing, and the timeline says why (best effort)."""
        detail = {"provider": provider, "operation": operation, "circuit": "open",
                  "outcome": "skipped: circuit open", "retry_after_s": retry_after_s}  # fmt: skip
        with contextlib.suppress(Exception), self.uow() as session:
            timeline.record(session, order_id, "provider_wait", detail=detail)


def gate_for(client: redis.Redis) -> Gate:
    """The gate with breakers shared through ``client`` (every worker process agrees)."""
    return Gate(lambda provider: breaker_for(client, provider))


class _CallRecord:
    """Times one provider call, then records it in the metrics and notes its timeline row."""

    def __init__(self, order_id: str, provider: str, operation: str, request: Any) -> None:
        self.order_id, self.provider, self.operation = order_id, provider, operation
        self.request = request
        self.started = time.perf_counter()

    def done(
        self, outcome: str, *, response: Any = None, error: str | None = None, opened: bool = False
    ) -> CallNote:
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
        return CallNote(self.order_id, detail)
