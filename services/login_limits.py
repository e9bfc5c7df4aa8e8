"""Login and registration rate limits: a sliding window per key in Redis, judged by the Redis
server's clock, taken atomically by one script.

Contracts:

* **Rate limit** (:class:`LoginLimiter`): at most ``max_failures`` failed logins per account
  *and* per client address in any ``window_s``, and with ``global_max_failures`` at most that
  many across every account and address; the next attempt raises :class:`LoginThrottled`
  without checking the password, even a correct one. Users' logins (namespace ``login``) and
  the console's (namespace ``console``) are two limiters of this one class.
* **Registration limit** (:class:`RegistrationLimiter`): at most ``max_attempts``
  registrations that pass validation per client address in any ``window_s``; the next raises
  :class:`RegistrationThrottled` before anything is hashed or stored.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from dataclasses import dataclass, field

import redis
from redis.commands.core import Script

from domain.errors import OrderflowError

# --- errors -------------------------------------------------------------------------------------


class RateLimited(OrderflowError):
    """A rate limit refused the attempt; try again in ``retry_after_s`` seconds."""

    what = "attempts"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many {self.what}; try again in {retry_after_s}s")
        self.retry_after_s = retry_after_s


class LoginThrottled(RateLimited):
    """Too many failed logins for this account or address."""

    what = "failed logins"


class RegistrationThrottled(RateLimited):
    """Too many registrations from this client address."""

    what = "registrations"


# --- rate limits --------------------------------------------------------------------------------

# A sliding-window log per key: a sorted set of attempts scored by the Redis server's clock in
# ms (never a client's: clocks of API processes drift). One script prunes, checks every key and
# takes a slot in all of them atomically, so concurrent attempts can never exceed the limit.
# KEYS: the logs to check; ARGV: window ms, member naming this attempt, then one limit per key.
# Returns 0 when the slot was taken, else the ms until the oldest attempt ages out.
_ACQUIRE = """
if redis.replicate_commands then redis.replicate_commands() end
local window, member = tonumber(ARGV[1]), ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + window - now)
  end
end
if wait > 0 then return wait end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, window)
end
return 0
"""


def _address_bucket(address: str) -> str:
    # One IPv6 host usually owns a whole /64; limiting single addresses would be no limit.
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:100]
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _take_slot(
    script: Script, keys: list[str], limits: list[int], window_s: int
) -> tuple[str, int]:
    """Take a slot in every log of ``keys`` (``limits[i]`` for ``keys[i]``): ``(member, 0)``,
    or ``("", seconds to wait)``."""
    member = secrets.token_hex(8)
    wait_ms = int(script(keys=keys, args=[window_s * 1000, member, *limits]))
    if wait_ms > 0:
        return "", max(1, -(-wait_ms // 1000))
    return member, 0


@dataclass(frozen=True, slots=True)
class LoginLimiter:
    """At most ``max_failures`` failed logins per account and per client address in any
    ``window_s`` seconds (sliding window). State lives in Redis under ``<namespace>:fail:*``.

    Every attempt first takes a slot (:meth:`acquire`); a successful login gives it back
    (:meth:`release`), so only failures stay counted. Refused attempts take no slot, so the
    window frees up ``window_s`` after the oldest counted failure.
    """

    client: redis.Redis
    max_failures: int = 10
    window_s: int = 60
    #: Failures across every account and address per window (None: no global limit). It
    #: bounds a guessing run spread over many addresses and names.
    global_max_failures: int | None = None
    namespace: str = "login"
    _script: Script = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_failures < 1 or self.window_s < 1:
            raise ValueError("max_failures and window_s must be at least 1")
        if self.global_max_failures is not None and self.global_max_failures < 1:
            raise ValueError("global_max_failures must be at least 1")
        object.__setattr__(self, "_script", self.client.register_script(_ACQUIRE))

    def keys(self, email: str, address: str) -> list[str]:
        # The account key is a hash: raw addresses need not sit in Redis. Unknown emails are
        # limited like known ones, or a 429 would reveal which accounts exist.
        account = hashlib.sha256(email.encode()).hexdigest()[:32]
        ns = self.namespace
        keys = [f"{ns}:fail:account:{account}", f"{ns}:fail:addr:{_address_bucket(address)}"]
        return keys + ([f"{ns}:fail:global"] if self.global_max_failures is not None else [])

    def _limits(self) -> list[int]:
        per_key = [self.max_failures, self.max_failures]
        return per_key + ([self.global_max_failures] if self.global_max_failures else [])

    def acquire(self, email: str, address: str) -> str:
        """Take a slot for one attempt and return its id, or raise :class:`LoginThrottled`."""
        keys = self.keys(email, address)
        member, wait_s = _take_slot(self._script, keys, self._limits(), self.window_s)
        if wait_s:
            raise LoginThrottled(wait_s)
        return member

    def release(self, email: str, address: str, member: str) -> None:
        """The attempt did not fail: stop counting it."""
        pipe = self.client.pipeline(transaction=True)
        for key in self.keys(email, address):
            pipe.zrem(key, member)
        pipe.execute()


@dataclass(frozen=True, slots=True)
class RegistrationLimiter:
    """At most ``max_attempts`` registrations per client address (IPv6: per /64) in any
    ``window_s`` seconds, successful or not (a 409 counts: it is what enumeration needs).
    The same sliding-window script as :class:`LoginLimiter`, under ``register:addr:*``."""

    client: redis.Redis
    max_attempts: int = 20
    window_s: int = 3600
    _script: Script = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.window_s < 1:
            raise ValueError("max_attempts and window_s must be at least 1")
        object.__setattr__(self, "_script", self.client.register_script(_ACQUIRE))

    @staticmethod
    def keys(address: str) -> list[str]:
        return [f"register:addr:{_address_bucket(address)}"]

    def acquire(self, address: str) -> None:
        """Count one registration, or raise :class:`RegistrationThrottled`."""
        keys = self.keys(address)
        _, wait_s = _take_slot(self._script, keys, [self.max_attempts], self.window_s)
        if wait_s:
            raise RegistrationThrottled(wait_s)
