"""Task events only while a monitor asks for them (workers/task_events.py), on a real worker."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from services.task_names import MAINTENANCE_TRACKING_STALENESS
from tests.conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.broker]


def _events_state(node: str) -> dict[str, Any] | None:
    from workers.app import app

    replies = app.control.broadcast(
        "orderflow_task_events", reply=True, timeout=2.0, destination=[node]
    )
    for reply in replies or []:
        if node in reply:
            return dict(reply[node]["ok"])
    return None


class _Succeeded:
    """Collects the ids of ``task-succeeded`` events from the broker, in a thread."""

    def __init__(self) -> None:
        from workers.app import app

        self.ids: list[str] = []
        self._conn = app.connection_for_read()
        self._receiver = app.events.Receiver(
            self._conn, handlers={"task-succeeded": lambda e: self.ids.append(e["uuid"])}
        )
        self._bound = threading.Event()
        consume_ready = self._receiver.on_consume_ready

        def on_consume_ready(*args: Any, **kwargs: Any) -> None:
            consume_ready(*args, **kwargs)
            self._bound.set()

        self._receiver.on_consume_ready = on_consume_ready  # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._receiver.capture, daemon=True)

    def __enter__(self) -> _Succeeded:
        self._thread.start()
        assert self._bound.wait(20), "event receiver not bound"  # bound before we send
        return self

    def __exit__(self, *_: object) -> None:
        self._receiver.should_stop = True
        self._thread.join(timeout=10)
        self._conn.release()


def test_task_events_follow_a_monitor_lease(procs, db, monkeypatch):
    from celery.utils.nodenames import gethostname

    from workers.app import app
    from workers.procs import wait_worker_ready

    monkeypatch.setenv("TASK_EVENTS_LEASE_S", "2")
    wait_worker_ready(procs.worker("events", "maintenance", concurrency=1))
    node = f"events@{gethostname()}"

    assert wait_until(lambda: _events_state(node), 20)["task_events"] is False

    with _Succeeded() as seen:
        app.control.enable_events(destination=[node])  # what Flower sends every 5 s
        wait_until(lambda: (_events_state(node) or {}).get("task_events"), 20)
        task_id = app.send_task(MAINTENANCE_TRACKING_STALENESS, queue="maintenance").id
        wait_until(lambda: task_id in seen.ids, 30, show=lambda: seen.ids)

    # Nobody asks again: the lease runs out and the worker stops sending them.
    wait_until(lambda: (_events_state(node) or {}).get("task_events") is False, 30)
