"""kombu's Redis transport, with one fix: a worker survives the broker going away mid-poll.

The bug (kombu 5.7.0, Celery 5.7.0; found by ``tests/cluster``'s Redis restart, where a
threaded worker died and its queues stalled for good). When the broker connection drops,
Celery's consumer first ``collect()``\\s the connection, then ``close()``\\s it, ignoring
connection errors:

1. ``collect()`` closes the task channel. With a ``BRPOP`` in flight, ``Channel.close()`` first
   reads its reply, which raises a connection error (Redis is gone) before the channel is
   marked closed; ``collect()`` swallows that and detaches the transport
   (``transport.client = None``).
2. ``close()`` closes the same channel again. Its unacknowledged messages must be restored,
   which needs a new connection pool, whose parameters come from ``transport.client``: now
   None, so an ``AttributeError`` escapes. It is not a connection error, so nothing ignores it:
   Celery logs "Unrecoverable error" and the worker process exits.

Here a channel whose transport was detached refuses to build connection parameters with a
connection error, which both closes ignore as they should. The unacknowledged messages stay in
Redis's unacked index, and the visibility timeout brings them back (or, after a restart that
emptied Redis, the sweeper re-drives their orders from PostgreSQL).

:func:`install` makes this the transport of every ``redis://``, ``rediss://`` and
``redis+socket://`` URL in the process (the Celery app calls it before any connection). Redis
Sentinel (``sentinel://``) keeps kombu's own transport.
"""

from __future__ import annotations

from typing import Any

import kombu.transport
import redis.exceptions
from kombu.transport import redis as kombu_redis

#: The kombu transport aliases this module's :class:`Transport` replaces.
ALIASES = ("redis", "rediss")


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """kombu's connection parameters; a connection error once the transport is detached
        (see the module docstring), where kombu would raise ``AttributeError``."""
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection is already closed")
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
        return params


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    """Make :class:`Transport` the transport of ``redis://`` (and ``rediss://``,
    ``redis+socket://``) URLs in this process. Idempotent."""
    path = f"{__name__}:Transport"
    for alias in ALIASES:
        kombu.transport.TRANSPORT_ALIASES[alias] = path
        # kombu caches each alias's class on first use: forget a lookup made before this.
        kombu.transport._transport_cache.pop(alias, None)
