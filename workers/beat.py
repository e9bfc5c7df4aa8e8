"""Beat run by one host at a time: Celery's file scheduler behind a leader lease in Redis.

Two beats (two hosts, for availability) would each send every periodic job once per period:
twice in all. :class:`LeaderScheduler` lets only the holder of a lease send. Each tick the beat
takes or renews ``orderflow:beat:leader`` (``SET NX PX`` / renew-if-mine, one Lua call), valid
``BEAT_LEASE_S`` by Redis's clock, not a host's; a beat that does not hold it keeps its schedule
moving without sending, so when the leader goes silent (crashed, cut off, paused) the other
takes over within one lease and sends each job at its next due time, not all at once.

Ticks are capped at a third of the lease, so a live leader renews well before it expires; a
beat that stops gives the lease up, so the next one to start leads at once.
When Redis cannot be reached a beat counts as not leading: it sends nothing (with the Redis
broker it could not anyway) rather than risk two leaders. At a hand-over a job may be sent once
more than its period allows; every job is safe to run twice (each claims its rows with
``FOR UPDATE SKIP LOCKED``, DESIGN.md §3).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

import redis
from celery.beat import PersistentScheduler

from settings import get_settings
from workers.connections import redis_client

log = logging.getLogger(__name__)

LEASE_KEY = "orderflow:beat:leader"
# Take the lease when free, renew it when ours; 1 when held after the call, else 0.
_HOLD = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""


# Give the lease up only if still ours (it may have expired and gone to another beat).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class Lease:
    """A lease in Redis held by one owner at a time (``owner`` names host and process)."""

    def __init__(self, client: redis.Redis, ttl_s: float, key: str = LEASE_KEY) -> None:
        self.client, self.ttl_s, self.key = client, ttl_s, key
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)

    def hold(self) -> bool:
        """Take or renew the lease; False when another owner holds it or Redis is unreachable.
        A lease of 0 s is none: always True (every beat sends, ``BEAT_LEASE_S=0``)."""
        if self.ttl_s == 0:
            return True
        try:
            return bool(self._hold(keys=[self.key], args=[self.owner, int(self.ttl_s * 1000)]))
        except redis.RedisError as exc:
            log.warning("beat: lease unknown (%s: %s); sending nothing", type(exc).__name__, exc)
            return False

    def release(self) -> None:
        """Give the lease up (a beat stopping): a beat started next leads at once, instead of
        standing by until the lease runs out."""
        try:
            self._release(keys=[self.key], args=[self.owner])
        except redis.RedisError as exc:  # it runs out by itself
            log.warning("beat: lease not released (%s: %s)", type(exc).__name__, exc)


class LeaderScheduler(PersistentScheduler):  # type: ignore[misc]  # Celery is untyped
    """Celery's ``PersistentScheduler`` that sends only while it holds the leader lease."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lease = Lease(redis_client(), get_settings().beat_lease_s)
        self.leading = False
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        leading = self.lease.hold()
        if leading != self.leading:
            log.warning("beat %s: %s", self.lease.owner, "leading" if leading else "standing by")
            self.leading = leading
        delay = float(super().tick(*args, **kwargs))
        return min(delay, self.lease.ttl_s / 3) if self.lease.ttl_s else delay

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        if self.leading:
            super().apply_entry(entry, producer=producer)

    def close(self) -> None:
        super().close()
        self.lease.release()
