"""Shared fixtures: a fresh PostgreSQL database and Redis db per session, cleaned per test, and
real processes (API, Celery workers, beat) started by pid and stopped after each test.

With ``DATABASE_URL`` / ``REDIS_URL`` unset the session starts the embedded servers
(``workers.embedded``); with them set it creates a throw-away database ``orderflow_test_<pid>`` on
that server and uses Redis db 9 (or the db named in the URL), flushed before each test.

``make test`` runs the suite in two pytest-xdist processes (``-n 2``): most tests wait on
workers, simulators and deadlines, so two at a time use the two cores this machine has. Each
xdist worker is a session of its own (:func:`_xdist_isolation`): its own embedded servers
(``STATE_DIR`` under ``.orderflow/xdist-<worker>``) or, on configured servers, its own database
and Redis db (9 + the worker's number), so the two never share a queue, a key or a row.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, make_url, text

from settings import get_settings
from tests.broker import amqp_session_vhost, purge_broker_for_test

TEST_REDIS_DB = 9

# The multi-host scenarios (tests/cluster) need root and network namespaces and take minutes:
# `make test-cluster` runs them (CLUSTER_TESTS=1), `make test` does not collect them.
collect_ignore = [] if os.environ.get("CLUSTER_TESTS") == "1" else ["cluster"]


def _xdist_worker() -> int | None:
    """This session's pytest-xdist worker number (``gw1`` -> 1), or None when run alone."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else None


def _xdist_isolation() -> dict[str, str]:
    """What keeps two xdist workers apart: embedded servers of its own per worker (a state dir
    each: two sessions sharing one would stop each other's servers), and ports picked from a
    range of its own (two sessions picking the same free port would start servers on it)."""
    worker = _xdist_worker()
    if worker is None:
        return {}
    low = 20000 + 3000 * (worker % 4)  # disjoint port ranges: up to four workers
    return {"STATE_DIR": str(get_settings().state_dir / f"xdist-gw{worker}"),
            "FREE_PORT_RANGE": f"{low}-{low + 2999}"}  # fmt: skip


# Short beat periods so recovery paths run within a test. Applied before any app module reads
# settings; every child process inherits them through the environment.
TEST_ENV = {
    "SWEEP_INTERVAL_S": "0.5",
    "PAYMENT_POLL_INTERVAL_S": "0.5",
    "CREATE_REDRIVE_S": "3",
    "TRACKING_INTERVAL_S": "0.3",
    "INTAKE_REDRIVE_S": "3",
    "TASK_MAX_RETRIES": "3",
    # Receipt and the after-sale window at once: a journey with beat running ends COMPLETED
    # within a sweep of delivery. Tests of the waiting itself set their own (test_receipt*.py).
    "AUTO_RECEIVE_S": "0",
    "AFTERSALE_WINDOW_S": "0",
    # The tests' callback receivers listen on loopback, which production refuses (the default
    # is empty); tests/security/test_ssrf.py and the rebinding test use the closed policy.
    "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
}


def _redis_test_url(url: str) -> str:
    """The session's Redis db: the one the URL names (else 9), plus the xdist worker's number."""
    if url.startswith("redis://") or url.startswith("rediss://"):
        head, _, path = url.rpartition("/")
        offset = _xdist_worker() or 0
        if "//" in head and path.isdigit():
            return f"{head}/{int(path) + offset}"  # the caller chose a db
        return url.rstrip("/") + f"/{TEST_REDIS_DB + offset}"
    return url  # embedded unix socket: the whole server is ours


@pytest.fixture(scope="session")
def services() -> Iterator[dict[str, str]]:
    """Database and Redis for the session; yields the URLs (also exported to os.environ)."""
    exported = [
        "DATABASE_URL",
        "REDIS_URL",
        "API_KEYS",
        "KEY_ENCRYPTION_KEY",
        "STATE_DIR",
        "FREE_PORT_RANGE",
    ]
    saved = {k: os.environ.get(k) for k in [*TEST_ENV, *exported, "PROMETHEUS_MULTIPROC_DIR"]}
    os.environ.update(TEST_ENV)
    os.environ.update(_xdist_isolation())
    os.environ["API_KEYS"] = f"test-{secrets.token_hex(8)},shop-a:shopkey-{secrets.token_hex(8)}"
    # Callback secrets are stored encrypted: a key made for this session (never one committed to
    # the repository), inherited by every process the tests start.
    os.environ["KEY_ENCRYPTION_KEY"] = Fernet.generate_key().decode()
    get_settings.cache_clear()
    from observability.metrics import prepare_multiproc_dir
    from workers.embedded import embedded_services

    # Per session, so concurrent test runs never sum each other's worker metrics.
    prepare_multiproc_dir(Path(tempfile.mkdtemp(prefix="orderflow-metrics-")))

    # On RabbitMQ (BROKER_URL=amqp://...) the session gets a vhost of its own (tests/broker.py).
    with embedded_services(), amqp_session_vhost():
        base = get_settings()
        assert base.database_url and base.redis_url
        admin = create_engine(base.database_url, isolation_level="AUTOCOMMIT")
        db_name = f"orderflow_test_{os.getpid()}_{secrets.token_hex(3)}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{db_name}"'))
        test_url = make_url(base.database_url).set(database=db_name)
        os.environ["DATABASE_URL"] = test_url.render_as_string(hide_password=False)
        os.environ["REDIS_URL"] = _redis_test_url(base.redis_url)
        get_settings.cache_clear()
        from models.db import dispose_engine
        from models.migrate import upgrade

        dispose_engine()
        upgrade()
        try:
            yield {"database_url": os.environ["DATABASE_URL"], "redis_url": os.environ["REDIS_URL"]}
        finally:
            dispose_engine()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
            admin.dispose()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            get_settings.cache_clear()


def redis_client() -> redis.Redis:
    from workers.embedded import redis_client_url

    # REDIS_URL, never the broker: with RabbitMQ as the broker, Redis data still lives here.
    return redis.Redis.from_url(redis_client_url(get_settings().redis_url or ""))


@pytest.fixture
def db(services: dict[str, str]) -> Iterator[None]:
    """A clean database and an empty Redis db for this test."""
    from models import Base
    from models.db import get_engine

    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with get_engine().begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    client = redis_client()
    client.flushdb()
    client.close()
    purge_broker_for_test()  # a broker other than this Redis db (e.g. RabbitMQ): empty queues
    if "api.orders" in sys.modules:  # a back-pressure reading of the last test's database
        sys.modules["api.orders"].intake_gate.cache_clear()
    yield


@pytest.fixture
def api_key(services: dict[str, str]) -> str:
    return next(k for k, src in get_settings().api_key_map().items() if src == "*")


@pytest.fixture
def procs(services: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """A ProcessGroup for this test; everything it started is stopped (by pid) afterwards."""
    from workers.procs import ProcessGroup

    group = ProcessGroup(log_dir=tmp_path / "logs")
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def catalog(db: None) -> Callable[..., None]:
    """Create products with stock: ``catalog({"SKU-1": 50}, price=1000, currency="CNY")``."""
    from domain.money import Money
    from services.catalog import receive_stock, upsert_product
    from services.unit_of_work import unit_of_work

    def make(
        stock: dict[str, int], *, price: int = 1000, currency: str = "CNY", warehouse: str = "main"
    ) -> None:
        with unit_of_work() as session:
            for sku, units in stock.items():
                upsert_product(session, sku, f"Product {sku}", Money(price, currency))
                if units:
                    receive_stock(session, sku, warehouse, units, actor="test")

    return make


def order_message(
    sku: str | list[tuple[str, int]] = "SKU-1",
    quantity: int = 1,
    *,
    source: str = "web",
    external_id: str | None = None,
    currency: str = "CNY",
    provider: str = "alipay",
) -> dict[str, Any]:
    """A valid order message; ``sku`` may be a list of (sku, quantity) lines."""
    lines = sku if isinstance(sku, list) else [(sku, quantity)]
    return {
        "source": source,
        "external_id": external_id or uuid.uuid4().hex,
        "customer_ref": "cust-1",
        "lines": [{"sku": s, "quantity": q} for s, q in lines],
        "currency": currency,
        "payment_provider": provider,
        "shipping_address": {
            "name": "Li Lei",
            "phone": "+86 138 0000 0000",
            "line1": "1 Test Road",
            "city": "Shanghai",
            "country": "CN",
        },
    }


def wait_until(
    predicate: Callable[[], Any],
    timeout_s: float = 60.0,
    every_s: float = 0.2,
    show: Callable[[], object] | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something true, and return that; fail the test with
    a clear message on timeout. The timeout only bounds a hang: on a busy machine a condition
    may take many times its usual time, so it is generous, never a measure of speed.

    ``show`` is called once on timeout and its value goes into the failure message, so a
    stuck pipeline says where it stuck (status counts, queue depths) instead of only "timeout".
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(every_s)
    seen = f"; last seen: {show()!r}" if show is not None else ""
    raise AssertionError(f"condition not met within {timeout_s}s{seen}")
