"""The orderflow Celery app plus one task that kills its worker process every time it runs.

Test-only: started with ``celery -A tests.e2e.crash_app worker`` to show that a poison
message is delivered at most MAX_DELIVERIES times, then dead-lettered, while other work flows.
"""

from __future__ import annotations

import os

from tasks.base import OrderflowTask
from workers.app import app

__all__ = ["app"]


@app.task(name="orders.crash_always", base=OrderflowTask, bind=True)
def crash_always(self: OrderflowTask, marker: str) -> None:
    with open(marker, "a") as f:  # one line per delivery, written before the crash
        f.write(f"{os.getpid()}\n")
    os._exit(1)  # as a segfault or the OOM killer would
