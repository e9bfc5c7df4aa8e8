"""The orderflow Celery app plus one task that fails with a chosen error while a file says so,
for the outage test: ``celery -A tests.integration.outage_app worker``.

``outage_probe(directory, kind)`` appends a line to ``<directory>/runs``, then, while
``<directory>/down`` exists, fails through :meth:`OrderflowTask.retry_or_fail` with the error
``kind`` names: ``unreachable`` is libpq's own "the database system is shutting down" (no
SQLSTATE, as a PostgreSQL restart gives), ``deadlock`` the server's deadlock (SQLSTATE 40P01)."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import sqlalchemy.exc

from tasks.base import OrderflowTask
from workers.app import app

__all__ = ["app"]


class _Deadlock(psycopg2.OperationalError):
    """psycopg2.errors.DeadlockDetected as the server raises it (with its SQLSTATE)."""

    pgcode = "40P01"


def _error(kind: str) -> BaseException:
    if kind == "unreachable":
        orig = psycopg2.OperationalError(
            'connection to server at "127.0.0.1", port 5432 failed: FATAL:  the database '
            "system is shutting down"
        )
    else:
        orig = _Deadlock("deadlock detected")
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, orig)


@app.task(name="orders.outage_probe", base=OrderflowTask, bind=True)
def outage_probe(self: OrderflowTask, directory: str, kind: str) -> None:
    base = Path(directory)
    with (base / "runs").open("a") as runs:
        runs.write(f"{self.request.retries}\n")
    if (base / "down").exists():
        self.retry_or_fail(_error(kind))
