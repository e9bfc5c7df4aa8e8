"""The Celery application. Start a worker with ``celery -A workers.app worker -Q orders``."""

from __future__ import annotations

from celery import Celery

from workers import redis_transport

redis_transport.install()  # before any broker connection: a worker survives Redis going away

app = Celery(
    "orderflow",
    include=[
        "tasks.orders",
        "tasks.payments",
        "tasks.shipping",
        "tasks.tracking",
        "tasks.maintenance",
        "tasks.callbacks",
        "tasks.settlement",
    ],
)
app.config_from_object("celeryconfig")

from workers import signals  # noqa: E402,F401  (registers the worker signal handlers)
from workers.task_events import TaskEventsLease  # noqa: E402  (and its control commands)

app.steps["consumer"].add(TaskEventsLease)
