"""What every fake shares: the manual clock, the gate and sender fakes, scripted faults and
signatures."""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from adapters.callbacks import PostResult
from domain.errors import ProviderError, ProviderRejected, ProviderUnavailable, SignatureInvalid

R = TypeVar("R")
Clock = Callable[[], datetime]


class ManualClock:
    """A clock that moves only when told: ``clock()`` is now (aware, UTC)."""

    def __init__(self, start: datetime = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeGate:
    """Calls straight through and keeps each call's ``(provider, operation, order_id)`` in
    ``calls``; while ``open`` is set it raises ``CircuitOpen`` without calling, as the real
    gate does for an open circuit."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.open: set[str] = set()

    def call(
        self, provider: str, operation: str, order_id: str, fn: Callable[[], R], *,
        request: Any = None,
    ) -> R:  # fmt: skip
        from services.provider_calls import CircuitOpen

        if provider in self.open:
            raise CircuitOpen(provider, "circuit open (fake)")
        self.calls.append((provider, operation, order_id))
        return fn()

    def call_noted(
        self, provider: str, operation: str, order_id: str, fn: Callable[[], R], *,
        request: Any = None,
    ) -> tuple[R, Any]:  # fmt: skip
        """:meth:`call`, with a note that writes nothing (the fakes keep no timeline)."""
        return self.call(provider, operation, order_id, fn, request=request), _NullNote()


class _NullNote:
    """The fake gate's :class:`services.provider_calls.CallNote`: a plain unit of work."""

    def write_alone(self, uow: Any) -> None:
        return None

    def recorded(self, uow: Any) -> Any:
        return uow()


class FakeSender:
    """A callback receiver that answers from a script: each POST takes the next of
    ``answers`` (a :class:`PostResult`, default 204) and lands in ``sent``; ``clock`` and
    ``takes_s`` let a test make each POST take time on a :class:`ManualClock`."""

    def __init__(self, clock: ManualClock | None = None, takes_s: float = 0.0) -> None:
        self.answers: deque[PostResult] = deque()
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []
        self.clock, self.takes_s = clock, takes_s

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostResult:
        self.sent.append((url, body, dict(headers)))
        if self.clock is not None:
            self.clock.advance(self.takes_s)
        return self.answers.popleft() if self.answers else PostResult(True, 204)


class Faulty:
    """Scripted faults: each provider call consumes the next one queued, in order.

    ``fail_next(n)``: the next ``n`` calls raise :class:`ProviderUnavailable` and change nothing;
    with ``after=True`` the call does its work first and then raises (the answer was lost).
    ``reject_next(code)``: the next call raises :class:`ProviderRejected` with ``code``.
    """

    name: str

    def __init__(self) -> None:
        self._faults: deque[tuple[ProviderError, bool]] = deque()

    def fail_next(self, n: int = 1, *, code: str | None = None, after: bool = False) -> None:
        for _ in range(n):
            self._faults.append((ProviderUnavailable(self.name, "injected", code=code), after))

    def reject_next(self, code: str, n: int = 1) -> None:
        for _ in range(n):
            self._faults.append((ProviderRejected(self.name, "injected", code=code), False))

    def _call(self, work: Callable[[], R]) -> R:
        fault, after = self._faults.popleft() if self._faults else (None, False)
        if fault is not None and not after:
            raise fault
        result = work()
        if fault is not None:
            raise fault
        return result


def signature(secret: str, text: str) -> str:
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def verified(provider: str, secret: str, text: str | None, sign: str | None) -> str:
    """``text`` if ``sign`` is its HMAC under ``secret`` (constant time); else SignatureInvalid."""
    if not text or not sign or not hmac.compare_digest(signature(secret, text), sign):
        raise SignatureInvalid(provider, "bad or missing signature")
    return text
