"""Engine and session factory, one per process.

Celery's prefork pool forks after the parent may have opened connections; a connection must never
cross a fork, so the engine is keyed by pid and ``workers.signals`` disposes it in each child.
"""

from __future__ import annotations

import os
import threading

from sqlalchemy import Engine, create_engine
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
            )
            _engine_pid = os.getpid()
            _factory = sessionmaker(_engine, expire_on_commit=False)
        return _engine


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
