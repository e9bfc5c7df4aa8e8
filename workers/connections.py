"""The process's Redis client (circuit breakers, token buckets, heartbeats, delivery counts).

Not the broker connection (Celery/kombu own that). redis-py's pool notices a fork and reconnects,
so one cached client per process is safe under prefork.
"""

from __future__ import annotations

from functools import lru_cache

import redis

from settings import get_settings
from workers.embedded import redis_client_url


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    s = get_settings()
    if not s.redis_url:
        raise RuntimeError("REDIS_URL is not set and no embedded Redis is running")
    return redis.Redis.from_url(redis_client_url(s.redis_url), socket_timeout=2)
