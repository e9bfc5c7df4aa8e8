"""The embedded default: servers start under a state dir, are reused, and stop cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import redis
from sqlalchemy import create_engine, text

from settings import PROJECT_ROOT, get_settings
from workers.embedded import EmbeddedServices, embedded_services, redis_client_url

# A second process of the same run: starts EmbeddedServices on the same state dir, reports what
# it got (URLs, the postmaster it reached, whether it started a Redis), then stops its handles.
GUEST = """
import json, sys
from pathlib import Path
from sqlalchemy import create_engine, text
from workers.embedded import EmbeddedServices

guest = EmbeddedServices(Path(sys.argv[1])).start()
engine = create_engine(guest.database_url)
with engine.connect() as conn:
    postmaster = conn.execute(text("SELECT pg_postmaster_start_time()::text")).scalar_one()
engine.dispose()
print(json.dumps({"database_url": guest.database_url, "redis_url": guest.redis_url,
                  "postmaster": postmaster, "started_redis": guest._redis_proc is not None}))
guest.stop()
"""


def postmaster_started(database_url: str) -> str:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT pg_postmaster_start_time()::text")).scalar_one())
    finally:
        engine.dispose()


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
        # Another process of the run reuses both servers, and its exit stops neither.
        started = postmaster_started(owner.database_url)
        run = subprocess.run(
            [sys.executable, "-c", GUEST, str(tmp_path / "state")], cwd=PROJECT_ROOT,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        seen = json.loads(run.stdout.strip().splitlines()[-1])
        assert seen["database_url"] == owner.database_url and seen["postmaster"] == started
        assert seen["redis_url"] == owner.redis_url and not seen["started_redis"]
        assert postmaster_started(owner.database_url) == started  # still the same server
        assert psutil.pid_exists(redis_pid)
    finally:
        owner.stop()
    assert not psutil.pid_exists(redis_pid) or psutil.Process(redis_pid).status() == "zombie"
    pg_pid_file = tmp_path / "state" / "pg" / "postmaster.pid"
    assert not pg_pid_file.exists()


@pytest.mark.configured
def test_urls_set_starts_nothing_and_touches_no_state(services, tmp_path, monkeypatch):
    """With DATABASE_URL and REDIS_URL set, neither the run's owner nor a CLI command starts a
    server or writes under STATE_DIR."""
    state = tmp_path / "state"
    monkeypatch.setenv("STATE_DIR", str(state))
    get_settings.cache_clear()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    environ = dict(os.environ)
    try:
        with embedded_services() as started:
            assert started is None
            assert {p.pid for p in psutil.Process().children(recursive=True)} == before
            assert dict(os.environ) == environ
    finally:
        get_settings.cache_clear()
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "db", "upgrade"], cwd=PROJECT_ROOT,
        capture_output=True, text=True, timeout=120, env={**os.environ},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert not state.exists(), sorted(str(p) for p in Path(state).rglob("*"))
