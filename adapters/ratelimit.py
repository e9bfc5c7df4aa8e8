"""A token bucket per provider account, shared by every worker process through Redis.

The bucket holds at most ``burst`` tokens and refills continuously at ``rate_per_s``. One Lua
script refills and takes in a single atomic step, so any number of processes and threads on
any number of machines never take more than ``burst + rate_per_s * elapsed`` tokens in total.
The refill uses the Redis server's clock (``TIME``), never a client's: worker clocks drift and
a fast one would mint tokens.

State: one hash ``ratelimit:{provider}:{account}`` with ``tokens`` and ``ts`` (server time of
the last refill, seconds with microseconds). It expires once it would be full again anyway, so
an idle bucket costs nothing and a missing key simply means "full".

Nothing here blocks or sleeps: a caller that gets no token decides itself what to do (the
tracking scheduler hands the shipment back with a short delay).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import redis
from redis.commands.core import Script

# KEYS[1] bucket hash; ARGV: rate per second, burst, tokens wanted, "1" = all or nothing.
# Returns the number of tokens granted (0..wanted).
_TAKE = """
if redis.replicate_commands then redis.replicate_commands() end  -- Redis < 5: TIME then write
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, all_or_nothing = tonumber(ARGV[3]), ARGV[4] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil or ts == nil then
  tokens, ts = burst, now
elseif now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end  -- a server clock stepping back refills nothing until it catches up with ts
local granted = math.min(want, math.floor(tokens))
if all_or_nothing and granted < want then granted = 0 end
tokens = tokens - granted
-- %.6f: Lua's default number formatting keeps only 14 digits, which would round ts.
local fmt = '%.6f'
redis.call('HSET', KEYS[1], 'tokens', string.format(fmt, tokens), 'ts', string.format(fmt, ts))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return granted
"""


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """``rate_per_s`` tokens per second, at most ``burst`` at once, for one provider account."""

    client: redis.Redis
    provider: str
    rate_per_s: float
    burst: int
    account: str = "default"
    _script: Script = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.rate_per_s > 0 and math.isfinite(self.rate_per_s)):
            raise ValueError("rate_per_s must be a positive number")
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        # register_script re-sends the script by itself after a SCRIPT FLUSH or a restart.
        object.__setattr__(self, "_script", self.client.register_script(_TAKE))

    @property
    def key(self) -> str:
        return f"ratelimit:{self.provider}:{self.account}"

    def try_acquire(self, n: int = 1) -> bool:
        """Take ``n`` tokens if all are available now (then True); otherwise take none."""
        return self._take(n, all_or_nothing=True) == n

    def reserve(self, n: int) -> int:
        """Take as many tokens as are available now, up to ``n``; returns how many (0..n).

        For batches: poll that many items now and hand the rest back for later.
        """
        return self._take(n, all_or_nothing=False)

    def _take(self, n: int, *, all_or_nothing: bool) -> int:
        if n < 0:
            raise ValueError("n must not be negative")
        if n == 0:
            return 0
        granted = self._script(
            keys=[self.key],
            args=[repr(float(self.rate_per_s)), self.burst, n, "1" if all_or_nothing else "0"],
        )
        return int(granted)
