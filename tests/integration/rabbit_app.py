"""The orderflow Celery app plus one task that fails twice with a retryable error, for the
RabbitMQ test: ``celery -A tests.integration.rabbit_app worker``. Each run appends a line
``<time> <retries> <routing key>`` to the file it is given."""

from __future__ import annotations

import time

from tasks.base import OrderflowTask
from workers.app import app

__all__ = ["app"]


class Flaky(Exception):
    retryable = True


@app.task(name="orders.retry_probe", base=OrderflowTask, bind=True)
def retry_probe(self: OrderflowTask, marker: str, failures: int) -> None:
    with open(marker, "a") as f:
        routing_key = (self.request.delivery_info or {}).get("routing_key")
        f.write(f"{time.time():.3f} {self.request.retries} {routing_key}\n")
    if self.request.retries < failures:
        self.retry_or_fail(Flaky(f"attempt {self.request.retries}"))
