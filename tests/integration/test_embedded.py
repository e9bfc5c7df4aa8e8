"""The embedded default: servers start under a state dir, are reused, and stop cleanly."""

from __future__ import annotations

import psutil
import redis
from sqlalchemy import create_engine, text

from workers.embedded import EmbeddedServices, redis_client_url


def test_embedded_servers_start_reuse_and_stop(tmp_path):
    owner = EmbeddedServices(tmp_path / "state").start()
    try:
        engine = create_engine(owner.database_url)
        with engine.connect() as conn:
            assert conn.execute(text("select 1")).scalar_one() == 1
        engine.dispose()
        r = redis.Redis.from_url(redis_client_url(owner.redis_url))
        assert r.ping()
        r.close()
        redis_pid = owner._redis_proc.pid
        # A second process of the same run finds the running Redis and starts nothing.
        guest = EmbeddedServices(tmp_path / "state", need_postgres=False).start()
        assert guest._redis_proc is None and guest.redis_url == owner.redis_url
        guest.stop()
        assert psutil.pid_exists(redis_pid)  # the guest did not stop the owner's server
    finally:
        owner.stop()
    assert not psutil.pid_exists(redis_pid) or psutil.Process(redis_pid).status() == "zombie"
    pg_pid_file = tmp_path / "state" / "pg" / "postmaster.pid"
    assert not pg_pid_file.exists()
