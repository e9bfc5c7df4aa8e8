"""Worker signal handlers."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown

from models.db import dispose_engine
from observability.metrics import process_exited


@worker_process_init.connect
def _fresh_engine_after_fork(**_: Any) -> None:
    # A pooled connection inherited from the parent must never be used by two processes.
    dispose_engine()


@worker_process_shutdown.connect
def _forget_exited_child_metrics(pid: int, **_: Any) -> None:
    # Live gauges of an exited child must not be summed any more; its counters stay in totals.
    process_exited(pid)
