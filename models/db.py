"""Engine and session factory, one per process.

Celery's prefork pool forks after the parent may have opened connections; a connection must never
cross a fork, so the engine is keyed by pid and ``workers.signals`` disposes it in each child.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from settings import get_settings

_lock = threading.Lock()
_engine: Engine | None = None
_engine_pid: int | None = None
_factory: sessionmaker[Session] | None = None


def get_engine() -> Engine:
    global _engine, _engine_pid, _factory
    with _lock:
        if _engine is None or _engine_pid != os.getpid():
            settings = get_settings()
            if not settings.database_url:
                raise RuntimeError("DATABASE_URL is not set and no embedded database is running")
            _engine = create_engine(
                settings.database_url,
                pool_size=settings.db_pool_size,
                max_overflow=settings.db_pool_size,
                pool_pre_ping=True,  # survive a PostgreSQL restart without a failed task
                pool_recycle=1800,
                connect_args=network_timeouts(
                    settings.db_network_timeout_s, _url_options(settings.database_url)
                ),
            )
            _engine_pid = os.getpid()
            _factory = sessionmaker(_engine, expire_on_commit=False)
        return _engine


def _url_options(url: str) -> str | None:
    """The libpq ``options`` a database URL carries (``?options=-c%20...``), if any."""
    options = make_url(url).query.get("options")
    return " ".join(options) if isinstance(options, tuple) else options


def network_timeouts(timeout_s: float, options: str | None = None) -> dict[str, int | str]:
    """libpq options that drop a TCP connection to PostgreSQL gone silent for ``timeout_s``
    (a partition, a host that vanished), on both ends. libpq and the server ignore all of them
    on a Unix socket (the embedded server).

    This end: without them a connect waits about two minutes for the kernel's SYN retries and a
    query on an open connection about fifteen for its retransmissions, holding a request or a
    task all that time. ``connect_timeout`` bounds the connect, ``tcp_user_timeout``
    unacknowledged data, keepalives an idle wait for a reply.

    The server's end (``options``, the session's ``tcp_keepalives_*`` and ``tcp_user_timeout``,
    PostgreSQL 12 or later): a client cut off in the
    middle of a transaction leaves its server session idle in that transaction, holding its row
    locks, and the server waits for the next command for as long as the operating system's
    keepalive allows (two hours by default). Every task needing those rows waited with it
    (tests/cluster: four orders locked by a cut-off worker host for good, the other host's tasks
    killed by their time limit). With keepalives probing the client the server ends such a
    session, and frees its locks, within about ``timeout_s``. ``options`` already in the
    database URL are kept, before these."""
    third = max(1, round(timeout_s / 3))
    interval = max(1, round(third / 3))
    # tcp_user_timeout covers what keepalives do not: the server never probes a connection
    # with unacknowledged data (a reply the client had not yet acknowledged when it vanished).
    server = f"-c tcp_keepalives_idle={third} -c tcp_keepalives_interval={interval} " \
             f"-c tcp_keepalives_count=3 -c tcp_user_timeout={int(timeout_s * 1000)}"  # fmt: skip
    return {
        "connect_timeout": max(2, third),  # libpq's minimum is 2 s
        "tcp_user_timeout": int(timeout_s * 1000),
        "keepalives": 1,
        "keepalives_idle": third,
        "keepalives_interval": interval,
        "keepalives_count": 3,
        "options": f"{options} {server}" if options else server,
    }


def session_factory() -> sessionmaker[Session]:
    get_engine()
    assert _factory is not None
    return _factory


def dispose_engine() -> None:
    """Forget this process's engine (after fork, or when settings change in tests)."""
    global _engine, _engine_pid, _factory
    with _lock:
        if _engine is not None and _engine_pid == os.getpid():
            _engine.dispose()
        elif _engine is not None:
            _engine.dispose(close=False)  # inherited from the parent: drop without closing
        _engine, _engine_pid, _factory = None, None, None


def server_version() -> str:
    """The PostgreSQL server's version (``orderflow doctor`` shows it; it also proves a
    connection works)."""
    with get_engine().connect() as conn:
        return str(conn.execute(text("SHOW server_version")).scalar_one())


@contextmanager
def scratch_database(name: str, *, keep: bool = False) -> Iterator[str]:
    """A fresh, empty database ``name`` on the configured server (one left by an earlier run is
    dropped first), with ``DATABASE_URL`` pointing at it inside the block; yields its URL. The
    engine is disposed on the way in and out, so no connection crosses databases. Dropped
    afterwards unless ``keep`` (the demo keeps its own for a look afterwards)."""
    from workers.embedded import exported_env

    base = get_settings().database_url
    assert base is not None
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        with exported_env({"DATABASE_URL": url}):
            dispose_engine()
            try:
                yield url
            finally:
                dispose_engine()
    finally:
        if not keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
