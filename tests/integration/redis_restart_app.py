"""The orderflow Celery app plus one task that holds its message (acks late) until the test lets
it go, for the Redis restart test: ``celery -A tests.integration.redis_restart_app worker``.

``hold_probe(directory, name)`` writes ``<name>.started``, waits (at most 60 s) for
``<name>.release``, then writes ``<name>.done``."""

from __future__ import annotations

import time
from pathlib import Path

from workers.app import app

__all__ = ["app"]


@app.task(name="orders.hold_probe")
def hold_probe(directory: str, name: str) -> None:
    base = Path(directory)
    (base / f"{name}.started").touch()
    deadline = time.monotonic() + 60
    while not (base / f"{name}.release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the task's own wait for the test's signal, not a test's wait
    (base / f"{name}.done").touch()
