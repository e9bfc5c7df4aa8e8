"""What depends on the kind of Celery broker: Redis (the default) or RabbitMQ (``amqp://``).

Only the Celery broker changes with ``BROKER_URL``. Redis stays required either way
(``REDIS_URL``): circuit breakers, token buckets, poison-message delivery counters, login limits
and the beat heartbeat live there, never in the broker.

On RabbitMQ every task queue is a quorum queue (replicated, persisted, each publish confirmed),
bound to a topic exchange of its own name so that Celery's native delayed delivery can route a
retry's countdown back to it (quorum queues allow no global QoS, so a worker cannot hold
countdown messages itself the way it does on Redis).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable
from typing import Any

from kombu import Connection, Exchange, Queue
from kombu.transport.native_delayed_delivery import level_name

from workers import broker_blocked

#: The task queues, one per stage (see ``celeryconfig.task_routes``).
QUEUE_NAMES = ("orders", "payments", "shipping", "tracking", "maintenance", "callbacks")

#: Second guard against poison messages on RabbitMQ: a quorum queue drops a message returned
#: (worker died, channel closed) more often than this. The first guard, counting deliveries in
#: Redis (``tasks.base.MAX_DELIVERIES`` = 3), dead-letters such a message long before; this
#: one only acts when that guard cannot (Redis down, or a crash before the task body starts).
#: A dropped message loses nothing: PostgreSQL keeps the order's stage deadline and the
#: sweeper re-drives it. Changing it requires deleting the queues (or use a RabbitMQ policy).
AMQP_DELIVERY_LIMIT = 10

#: Celery's native delayed delivery keeps countdown/ETA messages in these 28 quorum queues
#: (``celery_delayed_0`` … ``celery_delayed_27``) until they are due.
DELAYED_QUEUE_NAMES = tuple(level_name(level) for level in range(28))

#: Publisher confirms: each publish waits for RabbitMQ's ack, so a publish that returned is
#: stored (on a quorum of nodes), and one RabbitMQ refused raises instead of vanishing. The
#: blocked/unblocked callbacks (py-amqp's Connection arguments) tell intake that RabbitMQ is in
#: an alarm (workers/broker_blocked.py).
#: ``read_timeout`` bounds every wait for the broker's next frame (py-amqp raises
#: socket.timeout): a blocked connection answers nothing, and closing one after a failed publish
#: waited for its close-ok forever (found by tests/cluster's memory alarm).
AMQP_TRANSPORT_OPTIONS: dict[str, Any] = {
    "confirm_publish": True,
    "on_blocked": broker_blocked.blocked,
    "on_unblocked": broker_blocked.unblocked,
    "read_timeout": 10,
    "write_timeout": 10,
}

#: How long a publish waits for RabbitMQ's confirm: a blocked broker (alarm) never sends it,
#: and without a limit the publisher would wait for as long as the alarm lasts. With Celery's
#: publish retries (3) a publish gives up after about four times this.
PUBLISH_CONFIRM_TIMEOUT_S = 2.0

#: The prefix native delayed delivery puts on a delayed message's routing key (28 bits).
_DELAY_PREFIX = re.compile(r"^(?:[01]\.){28}")

_AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
_REDIS_SCHEMES = frozenset({"redis", "rediss", "redis+socket", "unix", "sentinel"})


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def is_amqp(url: str) -> bool:
    """True for a RabbitMQ URL (``amqp://``, ``amqps://``, ``pyamqp://``)."""
    return scheme(url) in _AMQP_SCHEMES


def broker_countdown(seconds: float, url: str) -> float:
    """A countdown the broker honours. On RabbitMQ a countdown waits in Celery's native delayed
    delivery, which counts whole seconds and refuses one under a second (Celery 5.7 rejects,
    i.e. drops, such a message): round up there. Redis keeps sub-second precision."""
    if is_amqp(url):
        return float(max(1, math.ceil(seconds)))
    return seconds


def is_redis(url: str) -> bool:
    return scheme(url) in _REDIS_SCHEMES


def queue_of_routing_key(routing_key: str | None) -> str | None:
    """The queue a delivered message came from: on RabbitMQ a retried (delayed) message
    arrives with routing key ``0.0.…1.0.orders``; that is the ``orders`` queue."""
    return _DELAY_PREFIX.sub("", routing_key, count=1) if routing_key else routing_key


def quorum_queue_arguments() -> dict[str, Any]:
    return {"x-queue-type": "quorum", "x-delivery-limit": AMQP_DELIVERY_LIMIT}


def task_queues(url: str) -> list[Queue]:
    """The task queues as declared on this broker (every declarer must agree: RabbitMQ refuses
    to redeclare a queue with other arguments)."""
    if is_amqp(url):
        return [
            Queue(
                name,
                Exchange(name, type="topic"),
                routing_key=name,
                queue_arguments=quorum_queue_arguments(),
            )
            for name in QUEUE_NAMES
        ]
    return [Queue(name) for name in QUEUE_NAMES]


def producer_options(url: str) -> dict[str, Any]:
    """What a publishing-only Celery app (``producers.client``) needs from ``celeryconfig`` to
    declare and publish to the queues exactly as the workers do."""
    options: dict[str, Any] = {"task_queues": task_queues(url)}
    if is_amqp(url):
        options.update(
            broker_transport_options=dict(AMQP_TRANSPORT_OPTIONS),
            task_create_missing_queue_type="quorum",
            task_create_missing_queue_exchange_type="topic",
        )
    return options


def declare_task_queues(url: str, queues: Iterable[Queue]) -> None:
    """Declare every task queue with its exchange and binding, not only the ones this worker
    consumes: on RabbitMQ each worker binds *all* queues to the delayed-delivery exchange at
    start, and fails for a queue whose exchange nobody declared yet."""
    with Connection(url, transport_options=_plain_options(url)) as conn:
        conn.ensure_connection(max_retries=3, interval_start=0.5, timeout=5)
        channel = conn.channel()
        try:
            for queue in queues:
                queue.bind(channel).declare()
        finally:
            channel.close()


def _each_queue(url: str, names: Iterable[str], action: str) -> dict[str, int]:
    """Count (``action="count"``) or purge each named queue, on a fresh channel each (on
    RabbitMQ a missing queue closes the channel it was asked on). A missing queue counts 0."""
    found: dict[str, int] = {}
    with Connection(url, transport_options=_plain_options(url)) as conn:
        conn.ensure_connection(max_retries=1, timeout=5)
        for name in names:
            channel = conn.channel()
            try:
                if action == "purge":
                    found[name] = int(channel.queue_purge(name) or 0)
                else:
                    found[name] = int(channel.queue_declare(name, passive=True).message_count)
            except conn.channel_errors:
                found[name] = 0  # never declared on this broker
            finally:
                with contextlib.suppress(*conn.connection_errors, *conn.channel_errors):
                    channel.close()
    return found


def _plain_options(url: str) -> dict[str, Any]:
    return dict(AMQP_TRANSPORT_OPTIONS) if is_amqp(url) else {}


def queue_depths(url: str, names: Iterable[str] = QUEUE_NAMES) -> dict[str, int]:
    """Messages ready in each queue (not counting ones a consumer holds unacked)."""
    return _each_queue(url, names, "count")


def purge_task_queues(url: str) -> int:
    """Drop every message waiting in the task queues (and, on RabbitMQ, in the delayed-delivery
    queues); returns how many. For test runs, the demo and the bench only: a broker shared
    with real work must never be purged."""
    names = [*QUEUE_NAMES, *(DELAYED_QUEUE_NAMES if is_amqp(url) else ())]
    return sum(_each_queue(url, names, "purge").values())
