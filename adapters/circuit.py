"""A circuit breaker per provider, shared by every worker process through Redis.

The circuit opens on a failure *rate*, not a run of failures: when, over the last ``window_s``,
at least ``min_calls`` calls were made and at least ``failure_ratio`` of them failed, callers
skip the provider for ``cooldown_s`` (their orders keep waiting; nothing fails because a provider
is down). A provider that drops a third of its calls is degraded but working, and retries get
those orders through; shutting it out for the cool-down would only delay every order behind it.
A run of consecutive failures, which a busy degraded provider produces every few hundred calls,
would open such a circuit again and again.

When the cool-down ends calls go out again (half-open): the first failure re-opens the circuit
at once, the first success closes it, and the window starts empty.

Keys (``{name}`` is the provider): ``circuit:{name}:window`` (a hash of per-half-window call and
failure counts), ``circuit:{name}:open`` (exists while open, expires after the cool-down) and
``circuit:{name}:probe`` (exists from opening until the first outcome after it). Outcomes are
recorded by one Lua script that reads the Redis server's clock, so concurrent workers agree
without locks and without trusting their own clocks.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import redis

# KEYS: window hash, open flag, probe flag.
# ARGV: failed (0/1), window_ms, min_calls, failure_ratio, cooldown_ms.
# Returns 1 if this outcome opened the circuit, else 0.
_RECORD = """
local failed = tonumber(ARGV[1])
local half = math.max(1, math.floor(tonumber(ARGV[2]) / 2))
local now = redis.call('TIME')
local bucket = math.floor((tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)) / half)
local prev = bucket - 1

local function open()
  if redis.call('SET', KEYS[2], '1', 'PX', ARGV[5], 'NX') then
    redis.call('DEL', KEYS[1])
    redis.call('SET', KEYS[3], '1', 'PX', tonumber(ARGV[5]) + tonumber(ARGV[2]))
    return 1
  end
  return 0
end

if failed == 0 then
  redis.call('DEL', KEYS[3])
else
  if redis.call('EXISTS', KEYS[3]) == 1 and redis.call('EXISTS', KEYS[2]) == 0 then
    return open()
  end
end

redis.call('HINCRBY', KEYS[1], bucket .. ':n', 1)
redis.call('HINCRBY', KEYS[1], bucket .. ':f', failed)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
if redis.call('HLEN', KEYS[1]) > 4 then
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    local b = tonumber(string.match(field, '^(-?%d+):'))
    if b < prev then redis.call('HDEL', KEYS[1], field) end
  end
end
if failed == 0 then return 0 end

local calls = tonumber(redis.call('HGET', KEYS[1], bucket .. ':n') or 0)
  + tonumber(redis.call('HGET', KEYS[1], prev .. ':n') or 0)
local failures = tonumber(redis.call('HGET', KEYS[1], bucket .. ':f') or 0)
  + tonumber(redis.call('HGET', KEYS[1], prev .. ':f') or 0)
if calls >= tonumber(ARGV[3]) and failures >= tonumber(ARGV[4]) * calls then
  return open()
end
return 0
"""


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    """When a circuit opens and for how long (see the module docstring)."""

    min_calls: int = 20
    failure_ratio: float = 0.5
    window_s: float = 30.0
    cooldown_s: float = 30.0


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    client: redis.Redis
    name: str
    policy: CircuitPolicy = CircuitPolicy()

    def _keys(self) -> list[str]:
        return [f"circuit:{self.name}:{part}" for part in ("window", "open", "probe")]

    def state(self) -> CircuitState:
        return CircuitState.OPEN if not self.allow() else CircuitState.CLOSED

    def allow(self) -> bool:
        """True if a call may go out now."""
        return not self.client.exists(f"circuit:{self.name}:open")

    def retry_after_s(self) -> float:
        ttl_ms = int(self.client.pttl(f"circuit:{self.name}:open"))
        return max(ttl_ms, 0) / 1000

    def record_success(self) -> None:
        self._record(failed=False)

    def record_failure(self) -> bool:
        """Count a failure; returns True if this failure opened the circuit."""
        return self._record(failed=True)

    def _record(self, *, failed: bool) -> bool:
        p = self.policy
        args: list[Any] = [
            int(failed),
            max(2, int(p.window_s * 1000)),
            p.min_calls,
            p.failure_ratio,
            max(1, int(p.cooldown_s * 1000)),
        ]
        return bool(self.client.register_script(_RECORD)(keys=self._keys(), args=args))


def breaker_for(client: redis.Redis, name: str) -> CircuitBreaker:
    """The breaker for provider ``name`` with the policy from the settings."""
    from settings import get_settings

    s = get_settings()
    policy = CircuitPolicy(
        min_calls=s.circuit_min_calls,
        failure_ratio=s.circuit_failure_ratio,
        window_s=s.circuit_window_s,
        cooldown_s=s.circuit_cooldown_s,
    )
    return CircuitBreaker(client, name, policy)
