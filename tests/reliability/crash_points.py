"""Test-only: orderflow's Celery app and API with a crash planted between commit and publish.

Started by the reliability suite as ``celery -A tests.reliability.crash_points worker`` and
``uvicorn --factory tests.reliability.crash_points:api``. Publishing a task named in
``CRASH_BEFORE_PUBLISH`` (comma-separated) kills the process with ``os._exit`` — after the
transaction that justified the message committed, before the message reached the broker — as a
power cut or the OOM killer would. Each (task, order) crashes at most once, and at most
``CRASH_LIMIT`` times per task name in all (counted in Redis, so across processes).
"""

from __future__ import annotations

import os
from typing import Any

from workers.app import app
from workers.connections import redis_client

__all__ = ["api", "app"]
_send_task = app.send_task


def _crash_first(name: str, args: Any) -> None:
    if name not in os.environ.get("CRASH_BEFORE_PUBLISH", "").split(","):
        return
    order_id = str((args or [None])[0])
    r = redis_client()
    if not r.set(f"crashpoint:{name}:{order_id}", 1, nx=True, ex=3600):
        return  # this order's crash already happened
    if int(r.incr(f"crashpoint:{name}:count")) > int(os.environ.get("CRASH_LIMIT", "0")):
        return
    os._exit(1)


def _send_task_or_crash(name: str, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
    _crash_first(name, args if args is not None else kwargs.get("args"))
    return _send_task(name, args, *rest, **kwargs)


app.send_task = _send_task_or_crash  # type: ignore[method-assign]


def api() -> Any:
    """The real API (uvicorn ``--factory``), publishing through the patched app."""
    from api.app import create_app

    return create_app()
