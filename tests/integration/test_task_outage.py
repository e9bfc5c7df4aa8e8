"""An outage is not the message's fault (tasks/base.py): a task whose database cannot be reached
retries past ``max_retries`` for as long as that lasts and then runs, with no dead letter; a
failure on a reachable server (a deadlock) still ends in one when its retries are spent.

A real worker process runs ``tests.integration.outage_app`` with ``TASK_MAX_RETRIES=1``."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from models import DeadLetter
from services.unit_of_work import unit_of_work
from tests.conftest import wait_until
from workers.procs import wait_worker_ready
from workers.publish import enqueue


def runs(directory: Path) -> list[int]:
    path = directory / "runs"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def dead_letters() -> list[tuple[str, int]]:
    with unit_of_work() as session:
        rows = session.execute(select(DeadLetter.task_name, DeadLetter.attempts))
        return [(name, attempts) for name, attempts in rows]


def start_worker(procs):
    worker = procs.worker("outage", "orders", concurrency=1, app="tests.integration.outage_app",
                          env={"TASK_MAX_RETRIES": "1"})  # fmt: skip
    wait_worker_ready(worker)
    return worker


def test_a_task_retries_through_an_outage_longer_than_its_retries(db, procs, tmp_path) -> None:
    worker = start_worker(procs)
    (tmp_path / "down").touch()
    enqueue("orders.outage_probe", str(tmp_path), "unreachable", queue="orders")
    # Four failed runs: three past the one retry max_retries allows.
    wait_until(lambda: len(runs(tmp_path)) >= 4 or dead_letters(), 90, show=worker.log_tail)
    assert dead_letters() == []
    (tmp_path / "down").unlink()  # the database is back
    wait_until(lambda: len(runs(tmp_path)) >= 5, 120, show=worker.log_tail)
    assert runs(tmp_path)[:5] == [0, 1, 2, 3, 4]
    assert dead_letters() == []


def test_a_deadlock_still_ends_in_a_dead_letter(db, procs, tmp_path) -> None:
    worker = start_worker(procs)
    (tmp_path / "down").touch()
    enqueue("orders.outage_probe", str(tmp_path), "deadlock", queue="orders")
    wait_until(dead_letters, 60, show=worker.log_tail)
    assert dead_letters() == [("orders.outage_probe", 2)]  # the first run and one retry
    assert runs(tmp_path) == [0, 1]
