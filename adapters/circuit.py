"""A circuit breaker per provider, shared by every worker process through Redis.

After ``threshold`` consecutive failures the circuit opens for ``cooldown_s``: callers skip the
provider and wait (their orders keep waiting; nothing fails because a provider is down). When
the cool-down ends one call is let through (half-open); a success closes the circuit, a failure
opens it again.

Keys: ``circuit:{name}:failures`` (consecutive failures) and ``circuit:{name}:open`` (exists
while open, expires after the cool-down). Both writes are single atomic Redis commands, so
concurrent workers agree without locks.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import redis


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    client: redis.Redis
    name: str
    threshold: int
    cooldown_s: float

    @property
    def _failures(self) -> str:
        return f"circuit:{self.name}:failures"

    @property
    def _open(self) -> str:
        return f"circuit:{self.name}:open"

    def state(self) -> CircuitState:
        return CircuitState.OPEN if self.client.exists(self._open) else CircuitState.CLOSED

    def allow(self) -> bool:
        """True if a call may go out now."""
        return not self.client.exists(self._open)

    def retry_after_s(self) -> float:
        ttl_ms = int(self.client.pttl(self._open))
        return max(ttl_ms, 0) / 1000 if ttl_ms > 0 else 0.0

    def record_success(self) -> None:
        self.client.delete(self._failures)

    def record_failure(self) -> bool:
        """Count a failure; returns True if this failure opened the circuit."""
        failures = int(self.client.incr(self._failures))
        if failures >= self.threshold:
            opened = bool(self.client.set(self._open, "1", px=int(self.cooldown_s * 1000), nx=True))
            if opened:
                # Half-open after the cool-down: one more failure re-opens it at once.
                self.client.set(self._failures, self.threshold - 1)
            return opened
        return False
