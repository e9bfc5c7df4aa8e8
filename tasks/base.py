"""What every orderflow task shares: retry classification, capped jittered backoff and dead
letters.

A message whose task keeps killing its worker process (a poison message: acks-late plus
reject-on-worker-lost would redeliver it forever) is stopped at :data:`MAX_DELIVERIES`: each
redelivery (the broker's ``redelivered`` flag: Redis's restore and RabbitMQ's requeue set it) is
counted in Redis under the task id and retry number before the body runs, and the next delivery
past the limit becomes a dead letter instead of running again. A first delivery costs no Redis
round trip (the common case); a message the broker gave back unrun (a worker's warm shutdown)
counts as delivered, so such a message may be stopped one crash early: a dead letter can be
replayed, a crash loop cannot be stopped any other way.

A task body calls one service inside a unit of work. Any exception goes through
:meth:`OrderflowTask.retry_or_fail`: retryable ones (``retryable = True`` on our error tree,
lost database or broker connections, deadlocks, serialization failures) are retried with capped
exponential backoff and jitter; the rest, and retryable ones that exhausted ``max_retries``,
end in :meth:`on_failure`, which writes a ``dead_letters`` row that ``orderflow dlq replay``
can re-run.

An outage is not the message's fault: while PostgreSQL, Redis or the broker cannot be reached at
all (:func:`is_unreachable`), retries go on past ``max_retries``, every ``BACKOFF_CAP_S`` at
most, for as long as the outage lasts. With the default five retries a restart or fail-over
longer than about half a minute used to dead-letter every task in flight, each then waiting for
an operator's replay (found by tests/cluster's PostgreSQL restart); and an ``orders.intake``
message, the only copy of its order, could not even be written to the dead letters of a database
that was still down. A failure that persists without the outage (a deadlock, a provider's
error) still ends in a dead letter.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, NoReturn

import kombu.exceptions
import psycopg2
import redis.exceptions
import sqlalchemy.exc
from celery import Task

from domain.backoff import equal_jitter_s
from observability import metrics
from services import dead_letters, timeline
from services.unit_of_work import unit_of_work
from settings import get_settings
from workers.broker import broker_countdown, queue_of_routing_key
from workers.connections import redis_client

log = logging.getLogger(__name__)

_TRANSIENT: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,  # connection lost, deadlock detected, serialization failure
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # pool exhausted
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)

_UNREACHABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)

#: psycopg2's classes for errors libpq raises itself (exactly these, not their subclasses).
_LIBPQ_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)

#: Deliveries of one message (same task id and retry number) before it is dead-lettered.
MAX_DELIVERIES = 3
_DELIVERY_TTL_S = 86400

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 60.0


def is_retryable(exc: BaseException) -> bool:
    """Retry what may pass: errors that say so (``retryable``), the transient kinds above, and a
    lost database connection whatever DBAPI error it surfaced as. psycopg2 reports a server that
    went away mid-statement as a plain ``DatabaseError`` ("server closed the connection
    unexpectedly"), which SQLAlchemy marks ``connection_invalidated``; failing on it lost the
    message, and the order then waited for the sweeper's re-drive."""
    if getattr(exc, "retryable", False) or isinstance(exc, _TRANSIENT):
        return True
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated


def is_unreachable(exc: BaseException) -> bool:
    """The database, Redis or the broker could not be reached at all, as opposed to a statement
    that failed on a reachable server. libpq's own errors (connection refused, "the database
    system is shutting down" at connect, a connection lost) are psycopg2's base classes with no
    SQLSTATE; the server's errors (deadlock, serialization failure, statement timeout) are
    subclasses carrying one. A connection SQLAlchemy invalidated counts too."""
    if isinstance(exc, _UNREACHABLE):
        return True
    if not isinstance(exc, sqlalchemy.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    return type(orig) in _LIBPQ_ERRORS and getattr(orig, "pgcode", None) is None


def backoff_s(retries: int) -> float:
    """The delay before retry ``retries + 1``: :func:`domain.backoff.equal_jitter_s` from
    ``BACKOFF_BASE_S`` up to ``BACKOFF_CAP_S``."""
    return equal_jitter_s(retries + 1, first_s=BACKOFF_BASE_S, cap_s=BACKOFF_CAP_S)


class OrderflowTask(Task):  # type: ignore[misc]
    """Base class of every task. ``order_id_arg`` is the position of the order id, if any."""

    abstract = True
    order_id_arg: int | None = None

    @property
    def max_retries(self) -> int:  # type: ignore[override]
        return get_settings().task_max_retries

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = self._delivery_key()
        if key is not None:
            deliveries = _count_delivery(key)
            if deliveries > MAX_DELIVERIES:
                self._dead_letter(PoisonMessage(self.name, deliveries), args, kwargs)
                return None
        token = timeline.task_context.set(
            {"name": self.name, "worker": self.request.hostname, "retries": self.request.retries}
        )
        try:
            result = super().__call__(*args, **kwargs)
        finally:
            timeline.task_context.reset(token)
        if key is not None:
            _forget_delivery(key)  # finished (or raised) without killing the process
        return result

    def _delivery_key(self) -> str | None:
        """The redelivery counter's key, or None for a first delivery (nothing to count)."""
        request = self.request
        if request.called_directly or not request.id:
            return None
        if not (request.delivery_info or {}).get("redelivered"):
            return None
        return f"deliveries:{request.id}:{request.retries}"

    def retry_or_fail(self, exc: BaseException) -> NoReturn:
        """Retry ``exc`` later or fail with it (see the module docstring); never returns."""
        retries = self.request.retries
        if not is_retryable(exc) or (retries >= self.max_retries and not is_unreachable(exc)):
            raise exc  # a failure: on_failure dead-letters it
        log.warning("task %s retrying after %r", self.name, exc)
        metrics.task_retried(self.name, exc)
        self._timeline_retry(exc)
        # Past max_retries only while unreachable: each such retry allows exactly one more.
        limit = max(self.max_retries, retries + 1)
        countdown = self._countdown(backoff_s(retries))
        raise self.retry(exc=exc, countdown=countdown, max_retries=limit)

    def hand_off(
        self, exc: BaseException, task_name: str, arg: str | int, *, order_id: str | None = None
    ) -> None:
        """Continue a transient failure in ``task_name`` (which takes ``arg``, the order id
        unless ``order_id`` names the order, and retries on its own) instead of retrying this
        task: published with this task's first backoff, noted on the order's timeline as a
        retry. A failed publish is logged, not raised: the order keeps its stage deadline, so
        the sweeper re-drives it."""
        order = order_id if order_id is not None else str(arg)
        log.warning("task %s handing %s to %s after %r", self.name, arg, task_name, exc)
        metrics.task_retried(self.name, exc)
        self._timeline_retry(exc, order)
        try:
            self.app.send_task(task_name, args=[arg], countdown=self._countdown(backoff_s(0)))
        except Exception:
            log.exception("could not publish %s for %s; the sweeper re-drives it", task_name, arg)

    def _countdown(self, seconds: float) -> float:
        return broker_countdown(seconds, self.app.conf.broker_url or "")

    def _timeline_retry(self, exc: BaseException, order_id: str | None = None) -> None:
        """Note the failed attempt on the order's timeline (best effort: the DB may be down)."""
        args = self.request.args or []
        if order_id is None and self.order_id_arg is not None and len(args) > self.order_id_arg:
            order_id = str(args[self.order_id_arg])
        if order_id is None:
            return
        with contextlib.suppress(Exception), unit_of_work() as session:
            timeline.record(
                session, order_id, "task_retry",
                detail={"error": f"{type(exc).__name__}: {exc}"[:200]},
            )  # fmt: skip

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        metrics.task_failed(self.name, exc)
        key = self._delivery_key()
        if key is not None:
            _forget_delivery(key)
        self._dead_letter(exc, args, kwargs)

    def _dead_letter(
        self, exc: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        order_id = None
        if self.order_id_arg is not None and len(args) > self.order_id_arg:
            order_id = str(args[self.order_id_arg])
        try:
            with unit_of_work() as session:
                dead_letters.record(
                    session,
                    task_name=self.name,
                    task_id=self.request.id,
                    args=list(args),
                    kwargs=kwargs,
                    queue=queue_of_routing_key(
                        (self.request.delivery_info or {}).get("routing_key")
                    ),
                    error=exc,
                    attempts=self.request.retries + 1,
                    order_id=order_id,
                )
        except Exception:
            # The database is unreachable: the order keeps its stage deadline, so the sweeper
            # re-drives it once the database is back. Nothing is lost; log loudly.
            log.exception("could not record dead letter for %s %s", self.name, self.request.id)


class PoisonMessage(Exception):
    """A message whose task kept killing its worker process."""

    def __init__(self, task_name: str, deliveries: int) -> None:
        super().__init__(
            f"{task_name} was delivered {deliveries} times and never finished "
            f"(its worker process died each time); not running it again"
        )


def _count_delivery(key: str) -> int:
    """Count a redelivery (INCR with a TTL, one round trip) and return the deliveries so far,
    the first one included; on a Redis failure assume a second delivery."""
    try:
        pipe = redis_client().pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, _DELIVERY_TTL_S)
        return 1 + int(pipe.execute()[0])
    except redis.exceptions.RedisError:
        return 2  # fail open: losing the poison guard is better than stopping all work


def _forget_delivery(key: str) -> None:
    with contextlib.suppress(redis.exceptions.RedisError):  # else the TTL cleans up
        redis_client().delete(key)
