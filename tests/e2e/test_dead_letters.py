"""Retries and dead letters with real worker processes and a real transient database error.

The fault is PostgreSQL's own: the test database gets ``lock_timeout`` (for connections opened
after it is set, i.e. the workers'), and the test holds the stock row of the ordered SKU with
``SELECT ... FOR UPDATE``. The reservation then fails with "canceling statement due to lock
timeout" (an ``OperationalError``, classified retryable like a deadlock) until the lock is let go.
No beat runs here: the sweeper would re-drive the stuck order and blur what the retries did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

from models import DeadLetter, OrderEvent
from services.unit_of_work import unit_of_work
from settings import get_settings
from tests.conftest import order_message, wait_until
from tests.helpers import assert_stock_consistent, pipeline_state, status_counts, stock_of

pytestmark = [pytest.mark.e2e, pytest.mark.broker]


@contextlib.contextmanager
def database_lock_timeout(ms: int) -> Iterator[None]:
    """``lock_timeout`` for every session opened on the test database until exit (this
    process's pooled sessions with it are dropped on exit, so later tests never inherit it)."""
    from models.db import dispose_engine, get_engine

    engine = get_engine().execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        name = conn.execute(text("SELECT current_database()")).scalar_one()
        conn.execute(text(f"ALTER DATABASE \"{name}\" SET lock_timeout = '{ms}ms'"))
    try:
        yield
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" RESET lock_timeout'))
        dispose_engine()


@contextlib.contextmanager
def stock_row_locked(sku: str) -> Iterator[None]:
    """Hold the (sku, main) stock row locked, as a long transaction elsewhere would."""
    from models.db import get_engine

    with get_engine().connect() as conn, conn.begin() as tx:
        conn.execute(text("SELECT 1 FROM stock WHERE sku = :sku FOR UPDATE"), {"sku": sku})
        yield
        tx.rollback()


def retry_events(order_id: str) -> list[dict[str, object]]:
    with unit_of_work() as s:
        return list(
            s.scalars(
                select(OrderEvent.detail)
                .where(OrderEvent.order_id == order_id, OrderEvent.kind == "task_retry")
                .order_by(OrderEvent.id)
            )
        )


def open_dead_letters() -> list[DeadLetter]:
    with unit_of_work() as s:
        return list(s.scalars(select(DeadLetter).where(DeadLetter.status == "OPEN")))


def test_broker_intake_retries_a_transient_reservation_failure(procs, catalog):
    """orders.intake stores the order, the in-line reservation times out on a lock: the order
    goes through orders.process's retries (not an immediate orders.intake dead letter) and is
    RESERVED once the lock is gone."""
    from producers.client import OrderProducer
    from workers.procs import wait_worker_ready

    catalog({"T": 5})
    msg = order_message("T", 1)
    with database_lock_timeout(300):
        wait_worker_ready(procs.worker("w1", "orders", concurrency=2))
        with stock_row_locked("T"):
            with OrderProducer() as producer:
                producer.send(msg)

            def retried() -> bool:
                with unit_of_work() as s:
                    ids = list(s.scalars(text("SELECT id FROM orders")))
                return len(ids) == 1 and len(retry_events(ids[0])) >= 1

            wait_until(retried, 60, show=pipeline_state)
        wait_until(lambda: status_counts() == {"RESERVED": 1}, 60, show=pipeline_state)
    assert open_dead_letters() == []
    with unit_of_work() as s:
        order_id = s.scalar(text("SELECT id FROM orders"))
    first = retry_events(order_id)[0]
    assert "lock timeout" in str(first["error"]) and first["task"]["name"] == "orders.intake"
    assert stock_of("T") == (5, 1)
    assert_stock_consistent()


def test_task_that_exhausts_its_retries_becomes_a_dead_letter(procs, catalog, monkeypatch):
    """orders.process keeps failing on a lock timeout: after TASK_MAX_RETRIES retries it is a
    dead_letters row with its task, arguments, error class, message and attempts; replayed once
    the lock is gone, the order is reserved."""
    from producers.intake import accept_message
    from services import dead_letters
    from workers.procs import wait_worker_ready
    from workers.publish import enqueue, enqueue_replay

    monkeypatch.setenv("TASK_MAX_RETRIES", "2")
    get_settings.cache_clear()
    catalog({"D": 5})
    order_id = accept_message(order_message("D", 1), channel="test").order_id
    with database_lock_timeout(300), stock_row_locked("D"):
        wait_worker_ready(procs.worker("w1", "orders", concurrency=2))
        enqueue("orders.process", order_id)
        wait_until(lambda: len(open_dead_letters()) == 1, 90, show=pipeline_state)
        [dl] = open_dead_letters()
    assert dl.task_name == "orders.process" and dl.args == [order_id] and dl.kwargs == {}
    assert dl.order_id == order_id and dl.queue == "orders"
    assert dl.error_class == "sqlalchemy.exc.OperationalError"
    assert "lock timeout" in dl.error_message
    assert dl.attempts == get_settings().task_max_retries + 1 == 3
    assert len(retry_events(order_id)) == 2  # the two retries, each on the order's timeline
    assert status_counts() == {"RECEIVED": 1} and stock_of("D") == (5, 0)

    with unit_of_work() as s:
        replay = dead_letters.replay(s, dl.id, now=datetime.now(UTC), actor="test")
    enqueue_replay(replay)
    wait_until(lambda: status_counts() == {"RESERVED": 1}, 60, show=pipeline_state)
    with unit_of_work() as s:
        kinds = list(s.scalars(select(OrderEvent.kind).where(OrderEvent.order_id == order_id)))
        assert s.scalar(select(func.count()).select_from(DeadLetter)) == 1
    assert "dead_letter" in kinds
    assert_stock_consistent()
