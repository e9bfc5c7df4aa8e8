"""Test-only: orderflow's Celery app and API with a crash planted between commit and publish.

Started by the reliability suite as ``celery -A tests.reliability.crash_points worker`` and
``uvicorn --factory tests.reliability.crash_points:api``. Publishing a task named in
``CRASH_BEFORE_PUBLISH`` (comma-separated) kills the process with ``os._exit`` — after the
transaction that justified the message committed, before the message reached the broker — as a
power cut or the OOM killer would. Each (task, order) crashes at most once (a message carrying
a list of order ids, ``orders.reserve_batch``, crashes while one of them has not), and at most
``CRASH_LIMIT`` times per task name in all (counted in Redis, so across processes).

``CRASH_GROUP_PUBLISH=<n>`` plants the crash in the API's group commit instead: a flush that
committed at least ``n`` new orders dies before its one publish
(``workers.publish.enqueue_reservations``),
at most ``CRASH_LIMIT`` times in all; the orders of each crashed batch are recorded in the Redis
set ``crashpoint:group:orders`` and the crashes counted in ``crashpoint:group:count``.

The payment stage now starts in-line in the orders task once the reservation committed (no
``payments.create`` message then), so ``payments.create`` in ``CRASH_BEFORE_PUBLISH`` also
kills the process right before :func:`services.payments.create` runs in-line, under the same
once-per-order accounting: the same gap, after the reservation's commit, before the next step.

``CRASH_IN_BATCH_AFTER=<n>`` plants a SIGKILL inside ``orders.reserve_batch``'s transaction:
the process kills itself as order n+1's savepoint starts (n savepoints released, nothing
committed), once in all (the flag ``crashpoint:batch`` in Redis).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

import services.payments
import services.reservation
import workers.publish
from workers.app import app
from workers.connections import redis_client

__all__ = ["api", "app"]
_send_task = app.send_task


def _crash_first(name: str, args: Any) -> None:
    if name not in os.environ.get("CRASH_BEFORE_PUBLISH", "").split(","):
        return
    first = (args or [None])[0]
    order_ids = [str(i) for i in first] if isinstance(first, list) else [str(first)]
    r = redis_client()
    fresh = [i for i in order_ids if r.set(f"crashpoint:{name}:{i}", 1, nx=True, ex=3600)]
    if not fresh:
        return  # these orders' crash already happened
    if int(r.incr(f"crashpoint:{name}:count")) > int(os.environ.get("CRASH_LIMIT", "0")):
        return
    os._exit(1)


def _send_task_or_crash(name: str, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
    _crash_first(name, args if args is not None else kwargs.get("args"))
    return _send_task(name, args, *rest, **kwargs)


app.send_task = _send_task_or_crash  # type: ignore[method-assign]
_enqueue_reservations = workers.publish.enqueue_reservations


#: Held from the count to the exit: two flushes of one process at this point at once would
#: otherwise both count a crash while only the first lives to record its orders.
_GROUP_CRASH = threading.Lock()


def _enqueue_reservations_or_crash(order_ids: Sequence[str]) -> int:
    at_least = int(os.environ.get("CRASH_GROUP_PUBLISH", "0"))
    if at_least and len(order_ids) >= at_least:
        with _GROUP_CRASH:
            r = redis_client()
            if int(r.incr("crashpoint:group:count")) <= int(os.environ.get("CRASH_LIMIT", "0")):
                r.sadd("crashpoint:group:orders", *[str(order_id) for order_id in order_ids])
                os._exit(1)
    return _enqueue_reservations(order_ids)


# api.orders imports enqueue_reservations when it publishes, so it finds this one.
workers.publish.enqueue_reservations = _enqueue_reservations_or_crash

_create = services.payments.create


def _create_or_crash(order_id: str, *args: Any, **kwargs: Any) -> Any:
    _crash_first("payments.create", [order_id])
    return _create(order_id, *args, **kwargs)


# tasks.orders calls services.payments.create through the package, so it finds this one.
services.payments.create = _create_or_crash  # type: ignore[assignment]
_reserve_one = services.reservation._reserve_one


def _reserve_one_or_crash(*args: Any, **kwargs: Any) -> Any:
    after = int(os.environ.get("CRASH_IN_BATCH_AFTER", "0"))
    if after:
        r = redis_client()
        if int(r.incr("crashpoint:batch:calls")) > after and r.set("crashpoint:batch", 1, nx=True):
            os.kill(os.getpid(), signal.SIGKILL)
    return _reserve_one(*args, **kwargs)


services.reservation._reserve_one = _reserve_one_or_crash


def api() -> Any:
    """The real API (uvicorn ``--factory``), publishing through the patched app."""
    from api.app import create_app

    return create_app()
