"""Database assertions and worker conditions shared by integration and end-to-end tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import func, select, text

from models import Order, Stock
from services.queries import stock_drift
from services.unit_of_work import unit_of_work
from workers.embedded import pgserver_bin_dir

if TYPE_CHECKING:
    from workers.procs import Proc


def status_counts() -> dict[str, int]:
    with unit_of_work() as s:
        return dict(s.execute(select(Order.status, func.count()).group_by(Order.status)).all())


def stock_of(sku: str, warehouse: str = "main") -> tuple[int, int]:
    with unit_of_work() as s:
        row = s.get(Stock, (sku, warehouse))
        assert row is not None
        return row.on_hand, row.reserved


def assert_stock_consistent() -> None:
    """Counters equal ledger sums, nothing negative, and reserved equals active reservations."""
    with unit_of_work() as s:
        assert stock_drift(s) == []
        negative = s.execute(
            text("SELECT count(*) FROM stock WHERE reserved < 0 OR on_hand < reserved")
        ).scalar_one()
        assert negative == 0
        mismatch = s.execute(
            text(
                """
                SELECT count(*) FROM stock st
                LEFT JOIN (SELECT sku, warehouse, sum(quantity) q FROM reservations
                           WHERE status = 'ACTIVE' GROUP BY sku, warehouse) r
                  ON r.sku = st.sku AND r.warehouse = st.warehouse
                WHERE st.reserved <> coalesce(r.q, 0)
                """
            )
        ).scalar_one()
        assert mismatch == 0


def reservations_per_order() -> dict[str, int]:
    """order id -> number of 'reserve' ledger rows (an order reserved twice shows up here)."""
    with unit_of_work() as s:
        rows = s.execute(
            text(
                "SELECT order_id, count(*) FROM stock_movements WHERE kind = 'reserve' "
                "GROUP BY order_id"
            )
        ).all()
        return {r[0]: r[1] for r in rows}


def pipeline_state() -> dict[str, object]:
    """Where the orders are: order and payment statuses and open dead letters by task.

    Used as ``wait_until(..., show=pipeline_state)`` so a timeout says where the pipeline stuck.
    """
    from models import DeadLetter, Payment

    with unit_of_work() as s:
        payments = s.execute(select(Payment.status, func.count()).group_by(Payment.status)).all()
        dead = s.execute(
            select(DeadLetter.task_name, DeadLetter.error_class, func.count())
            .where(DeadLetter.status == "OPEN")
            .group_by(DeadLetter.task_name, DeadLetter.error_class)
        ).all()
    return {
        "orders": status_counts(),
        "payments": dict(payments),
        "dead_letters": {f"{t} {e}": n for t, e, n in dead},
    }


def celery_inspect(workers: Sequence[Proc], method: str) -> dict[str, list[dict[str, Any]]] | None:
    """``celery inspect <method>`` (``active``, ``reserved``, ``scheduled``) on ``workers``
    (started by :class:`workers.procs.ProcessGroup`, named ``<name>@<host>``): node -> its
    tasks, as Celery reports them (``id``, ``name``, ``args``, ``time_start``, ...); None unless
    every one of them answered."""
    from celery.utils.nodenames import gethostname

    from workers.app import app

    nodes = [f"{w.name}@{gethostname()}" for w in workers]
    inspect = app.control.inspect(destination=nodes, timeout=5.0)
    replies = getattr(inspect, method)() or {}
    return replies if set(nodes) <= set(replies) else None


def workers_idle(workers: Sequence[Proc], queues: Iterable[str]) -> bool:
    """Nothing left to run: no message ready in ``queues`` on the broker, and none of
    ``workers`` holds a task, running, prefetched or waiting for its countdown.

    A condition for ``wait_until`` before checking that something did *not* happen: every
    message published so far has been taken and finished (acks late: a message leaves the
    queue for a worker's reserved list, then its active one). The queues are read before and
    after the workers, so a message moving from a queue to a worker in between is not missed.
    """
    from tests.broker import broker_url
    from workers.broker import queue_depths

    names = list(queues)
    if any(queue_depths(broker_url(), names).values()):
        return False
    for method in ("active", "reserved", "scheduled"):
        replies = celery_inspect(workers, method)
        if replies is None or any(replies.values()):
            return False
    return not any(queue_depths(broker_url(), names).values())


def _major(pg_dump: str) -> int:
    out = subprocess.run([pg_dump, "--version"], capture_output=True, text=True, check=True)
    found = re.search(r"(\d+)(?:\.\d+)?", out.stdout)
    assert found, out.stdout
    return int(found.group(1))


def pg_dump_for_server() -> str:
    """A ``pg_dump`` that can dump the test database's server: its major version must be at
    least the server's. Candidates are the client pgserver ships (a project dependency, so always
    there) and one on ``PATH`` (any version, or none); the newest that fits wins. Skips the test,
    naming the versions, when none can."""
    bundled = pgserver_bin_dir() / "pg_dump"
    candidates = [str(bundled)] if bundled.exists() else []
    if (on_path := shutil.which("pg_dump")) is not None:
        candidates.append(on_path)
    with unit_of_work() as s:
        server = int(s.execute(text("SHOW server_version_num")).scalar_one()) // 10000
    usable = sorted((_major(c), c) for c in candidates if _major(c) >= server)
    if not usable:
        pytest.skip(f"no pg_dump of major version >= {server} (the server's) among {candidates}")
    return usable[-1][1]
