"""Celery settings, taken from :mod:`settings`. Each line says why (DESIGN.md §4)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from services.task_names import (
    MAINTENANCE_DISPATCH_CALLBACKS,
    MAINTENANCE_POLL_PAYMENTS,
    MAINTENANCE_RECONCILE,
    MAINTENANCE_SCHEDULE_TRACKING,
    MAINTENANCE_SETTLEMENT,
    MAINTENANCE_SWEEP,
    MAINTENANCE_TRACKING_STALENESS,
)
from settings import get_settings
from workers.broker import AMQP_TRANSPORT_OPTIONS, PUBLISH_CONFIRM_TIMEOUT_S, is_amqp
from workers.broker import task_queues as broker_task_queues

_s = get_settings()

# Redis by default; amqp:// selects RabbitMQ (README "Choosing a broker"). Redis itself stays
# required either way (REDIS_URL: circuit breakers, delivery counters, heartbeats).
broker_url = _s.effective_broker_url
# State lives in PostgreSQL; task results would only fill Redis.
task_ignore_result = True
result_backend = None
# Ack only after the task finished, and requeue if the worker process died mid-task:
# a crash redelivers the message instead of losing it (tasks are idempotent).
task_acks_late = True
task_reject_on_worker_lost = True
# One message at a time per process, so a crash redelivers at most one in-flight task each.
worker_prefetch_multiplier = 1
# JSON only: no pickle from the broker.
task_serializer = "json"
accept_content = ["json"]
event_serializer = "json"
timezone = "UTC"
enable_utc = True
# Every task has a deadline; the hard limit kills a hung child, which acks-late redelivers.
task_soft_time_limit = _s.task_soft_time_limit_s
task_time_limit = _s.task_time_limit_s
# Redis redelivers an unacked message after this; it must exceed every task's hard limit,
# or a slow task would run twice concurrently. kombu looks for such messages only every
# interval x throttle seconds (10 x 10 by default): sweep ten times per visibility timeout
# instead, so a message a dead host abandoned comes back within 1.1 x the timeout.
# Socket timeouts: with the broker cut off (a partition, not a refused connection) a publish
# would otherwise wait on the kernel's retransmissions for minutes; it fails within seconds and
# the sweeper re-publishes from PostgreSQL.
broker_transport_options = {
    "socket_connect_timeout": 5,
    "socket_timeout": 10,
    "socket_keepalive": True,
    "visibility_timeout": _s.visibility_timeout_s,
    "unacked_restore_interval": max(1, _s.visibility_timeout_s // 10),
    "unacked_restore_throttle": 1,
}
# The task queues, as every process must declare them on this broker (workers/broker.py).
task_queues = broker_task_queues(broker_url)
if is_amqp(broker_url):
    # RabbitMQ: quorum queues (replicated, on disk) and publisher confirms, so a publish that
    # returned is stored; no visibility timeout (a message comes back only when its consumer's
    # channel closes). Quorum queues allow no global QoS, so countdown/ETA retries wait in
    # RabbitMQ (Celery's native delayed delivery, in quorum queues too), not in the worker.
    broker_transport_options = dict(AMQP_TRANSPORT_OPTIONS)
    worker_detect_quorum_queues = True
    broker_native_delayed_delivery_queue_type = "quorum"
    # A queue named outside QUEUE_NAMES (e.g. by `dlq replay`) is a quorum queue too.
    task_create_missing_queue_type = "quorum"
    task_create_missing_queue_exchange_type = "topic"
broker_connection_retry_on_startup = True
# If the broker connection drops, running acks-late tasks will be redelivered anyway:
# cancel them rather than letting them finish and ack on a dead channel.
worker_cancel_long_running_tasks_on_connection_loss = True
# Publishing waits for the broker to accept the message (and retries briefly on errors).
task_publish_retry = True
task_publish_retry_policy = {"max_retries": 3, "interval_start": 0.1, "interval_step": 0.5}
# Task events cost about half of a small task's CPU and only a monitor reads them: off until
# Flower (or `celery events`) asks, and off again when it stops asking (workers/task_events.py).
worker_send_task_events = False
task_send_sent_event = False

task_default_queue = "orders"
# Route by the task name's prefix: orders.* -> orders, payments.* -> payments, and so on.
# A route's other keys are publish options of every task it routes: each publish waits for
# RabbitMQ's confirm at most PUBLISH_CONFIRM_TIMEOUT_S (Redis ignores it).
task_routes = {
    f"{q}.*": {"queue": q, "confirm_timeout": PUBLISH_CONFIRM_TIMEOUT_S}
    for q in ("orders", "payments", "shipping", "tracking", "callbacks", "maintenance")
}

# Beat's own file, a file of the beat host (BEAT_SCHEDULE_FILE, else in STATE_DIR): never the
# working directory, which may be read-only or shared. One beat sends at a time, the holder of
# a lease in Redis (workers/beat.py): beat may run on two hosts for availability.
beat_schedule_filename = str(_s.beat_schedule_file or _s.state_dir / "celerybeat-schedule")
with contextlib.suppress(OSError):  # a worker on a read-only disk never opens it
    Path(beat_schedule_filename).parent.mkdir(parents=True, exist_ok=True)
beat_scheduler = "workers.beat:LeaderScheduler"


def _stale_after(period_s: float) -> float:
    """A beat job's ``expires``: a tick left in the queue past its use (workers were down) is
    dropped, not run in a pile. Celery turns it into a moment by the *beat host's* clock and
    the worker compares it with its own, so it includes ``CLOCK_SKEW_ALLOWANCE_S``: with a bare
    period a worker whose clock runs a minute ahead would drop every tick (found by
    tests/cluster: its sweeper never ran)."""
    return period_s + _s.clock_skew_allowance_s


beat_schedule = {
    "sweep-stalled-orders": {
        "task": MAINTENANCE_SWEEP,
        "schedule": _s.sweep_interval_s,
        "options": {"expires": _stale_after(_s.sweep_interval_s * 2)},
    },
    "poll-payments": {
        "task": MAINTENANCE_POLL_PAYMENTS,
        "schedule": _s.payment_poll_interval_s,
        "options": {"expires": _stale_after(_s.payment_poll_interval_s * 2)},
    },
    "reconcile-payments": {
        "task": MAINTENANCE_RECONCILE,
        "schedule": _s.reconcile_interval_s,
        "options": {"expires": _stale_after(3600)},
    },
    "schedule-tracking": {
        "task": MAINTENANCE_SCHEDULE_TRACKING,
        "schedule": _s.tracking_interval_s,
        "options": {"expires": _stale_after(_s.tracking_interval_s * 2)},
    },
    "tracking-staleness": {
        "task": MAINTENANCE_TRACKING_STALENESS,
        "schedule": 3600.0,
        "options": {"expires": _stale_after(3600)},
    },
    "dispatch-callbacks": {
        "task": MAINTENANCE_DISPATCH_CALLBACKS,
        "schedule": _s.callback_dispatch_interval_s,
        "options": {"expires": _stale_after(_s.callback_dispatch_interval_s * 2)},
    },
    # Fetches the last days' bills not stored yet (a bill not ready or refused is asked again
    # next time) and matches them: hourly, so a day is reconciled soon after it is complete.
    "settlement": {
        "task": MAINTENANCE_SETTLEMENT,
        "schedule": _s.settlement_interval_s,
        "options": {"expires": _stale_after(_s.settlement_interval_s)},
    },
}
