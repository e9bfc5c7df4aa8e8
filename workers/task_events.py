"""Task events only while someone watches them.

Task events (``task-received``, ``task-started``, ``task-succeeded`` ...) are about half of a
small task's worker CPU (docs/performance.md), and nothing of orderflow's own needs them: the
Prometheus series are written by the tasks themselves. Only a monitor does (Flower, ``celery
events``). So workers start with them off (``worker_send_task_events = False``), and:

* a monitor turns them on with the ``enable_events`` control command, as Flower does by itself
  every 5 seconds while it runs (its ``--enable_events`` option, on by default);
* each such command renews a lease of ``TASK_EVENTS_LEASE_S`` seconds; when the lease runs out
  (the monitor stopped asking), the worker turns them off again. A worker configured to send task
  events always (``worker_send_task_events = True``: no event group filter) is left alone.

The ``orderflow_task_events`` control command answers whether this worker sends them now and how
long its lease has left (``celery -A workers.app inspect`` cannot tell).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import bootsteps
from celery.worker.control import Panel, control_command, ok

from settings import get_settings

log = logging.getLogger(__name__)

_TASK = "task"
_builtin_enable_events = Panel.data["enable_events"]
#: When a monitor last asked for task events (time.monotonic()); one value per worker process.
_last_asked: list[float] = [float("-inf")]


def lease_expired(groups: set[str] | None, last_asked: float, now: float, lease_s: float) -> bool:
    """True when task events are on by request (``groups`` holds ``task``) and nobody has asked
    for them for ``lease_s`` seconds. ``groups`` None or empty means every event group is sent
    by configuration: never expired."""
    if not groups or _TASK not in groups:
        return False
    return now - last_asked >= lease_s


@control_command()
def enable_events(state: Any) -> Any:
    """Celery's ``enable_events``, renewing this worker's task-event lease."""
    _last_asked[0] = time.monotonic()
    return _builtin_enable_events(state)


@control_command()
def orderflow_task_events(state: Any) -> Any:
    """Whether this worker sends task events now, and the seconds its lease has left."""
    dispatcher = state.consumer.event_dispatcher
    groups = dispatcher.groups if dispatcher is not None else set()
    sending = dispatcher is not None and (not groups or _TASK in groups)
    left = get_settings().task_events_lease_s - (time.monotonic() - _last_asked[0])
    return ok({"task_events": sending, "lease_left_s": max(0.0, round(left, 1))})


def _expire(consumer: Any) -> None:
    dispatcher = consumer.event_dispatcher
    if dispatcher is None:
        return
    lease_s = get_settings().task_events_lease_s
    if lease_expired(dispatcher.groups, _last_asked[0], time.monotonic(), lease_s):
        dispatcher.groups.discard(_TASK)
        log.info("task events off: no monitor asked for them in %.0f s", lease_s)


class TaskEventsLease(bootsteps.StartStopStep):
    """Consumer step: checks the lease on the worker's timer, four times per lease."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer: Any = None

    def start(self, parent: Any) -> None:
        every = max(0.25, get_settings().task_events_lease_s / 4)
        self._timer = parent.timer.call_repeatedly(every, _expire, (parent,), priority=10)

    def stop(self, parent: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
