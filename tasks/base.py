"""What every orderflow task shares: retry classification, capped jittered backoff and dead
letters.

A task body calls one service inside a unit of work. Any exception goes through
:meth:`OrderflowTask.retry_or_fail`: retryable ones (``retryable = True`` on our error tree,
lost database or broker connections, deadlocks, serialization failures) are retried with capped
exponential backoff and jitter; the rest, and retryable ones that exhausted ``max_retries``,
end in :meth:`on_failure`, which writes a ``dead_letters`` row that ``orderflow dlq replay``
can re-run.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime
from typing import Any, NoReturn

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from celery import Task

from services import dead_letters
from services.unit_of_work import unit_of_work
from settings import get_settings

log = logging.getLogger(__name__)

_TRANSIENT: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,  # connection lost, deadlock detected, serialization failure
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # pool exhausted
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def is_retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", False)) or isinstance(exc, _TRANSIENT)


def backoff_s(retries: int) -> float:
    """Full-jitter exponential backoff: uniform in [cap/2, cap] of min(CAP, BASE * 2**n)."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2**retries))
    return random.uniform(ceiling / 2, ceiling)


class OrderflowTask(Task):  # type: ignore[misc]
    """Base class of every task. ``order_id_arg`` is the position of the order id, if any."""

    abstract = True
    order_id_arg: int | None = None

    @property
    def max_retries(self) -> int:  # type: ignore[override]
        return get_settings().task_max_retries

    def retry_or_fail(self, exc: BaseException) -> NoReturn:
        if is_retryable(exc):
            log.warning("task %s retrying after %r", self.name, exc)
            raise self.retry(exc=exc, countdown=backoff_s(self.request.retries))
        raise exc

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        order_id = None
        if self.order_id_arg is not None and len(args) > self.order_id_arg:
            order_id = str(args[self.order_id_arg])
        try:
            with unit_of_work() as session:
                dead_letters.record(
                    session,
                    task_name=self.name,
                    task_id=task_id,
                    args=list(args),
                    kwargs=kwargs,
                    queue=(self.request.delivery_info or {}).get("routing_key"),
                    error=exc,
                    attempts=self.request.retries + 1,
                    order_id=order_id,
                )
        except Exception:
            # The database is unreachable: the order keeps its stage deadline, so the sweeper
            # re-drives it once the database is back. Nothing is lost; log loudly.
            log.exception("could not record dead letter for %s %s", self.name, task_id)
