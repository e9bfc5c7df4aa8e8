"""Worker signal handlers."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import (
    after_setup_logger,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)

from models.db import dispose_engine
from observability.metrics import process_exited
from workers.broker import declare_task_queues, is_amqp

log = logging.getLogger(__name__)


#: Celery's per-task "Received task" and "Task ... succeeded" lines: two log records per task
#: (about a sixth of a small task's CPU, docs/performance.md). Failures and retries are still
#: logged at WARNING and above; `-l DEBUG` brings the lines back.
_PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


@after_setup_logger.connect
def _quiet_per_task_lines(logger: logging.Logger, loglevel: int, **_: Any) -> None:
    if loglevel > logging.DEBUG:
        for name in _PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@worker_init.connect
def _declare_every_task_queue(sender: Any, **_: Any) -> None:
    # RabbitMQ: the worker binds every task queue to native delayed delivery (retry
    # countdowns) at start; declare them all first, or the queues of other workers not yet
    # started would fail that binding. Best effort: the consumer retries the broker anyway.
    app = sender.app
    url = app.conf.broker_url or ""
    if not is_amqp(url):
        return
    try:
        declare_task_queues(url, app.amqp.queues.values())
    except Exception:  # logged; the worker's own connection retries
        log.warning("could not declare the task queues on the broker", exc_info=True)


@worker_process_init.connect
def _fresh_engine_after_fork(**_: Any) -> None:
    # A pooled connection inherited from the parent must never be used by two processes.
    dispose_engine()


@worker_process_shutdown.connect
def _forget_exited_child_metrics(pid: int, **_: Any) -> None:
    # Live gauges of an exited child must not be summed any more; its counters stay in totals.
    process_exited(pid)
