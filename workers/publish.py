"""Publishing tasks, beside the Celery app (api, cli and tasks publish through it; nothing but
the worker imports tasks/). Always called after the transaction that justified it committed."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import kombu.exceptions

from services.dead_letters import Replay, reopen_unpublished
from services.followup import Followup
from services.task_names import ORDERS_RESERVE_BATCH
from services.unit_of_work import unit_of_work
from settings import get_settings
from workers import broker_blocked
from workers.app import app

log = logging.getLogger(__name__)

#: A broker that cannot be reached (kombu wraps the transport's connection errors in this).
_BROKER_DOWN = (kombu.exceptions.OperationalError, ConnectionError)


def enqueue(task_name: str, *args: Any, **options: Any) -> None:
    """Publish one task by name (routing comes from ``celeryconfig.task_routes``)."""
    app.send_task(task_name, args=list(args), **options)


def enqueue_replay(replay: Replay, *, actor: str = "system") -> None:
    """Publish a replayed dead letter's task (after the replay's commit), on its own queue.

    When the publish fails the dead letter is put back to OPEN (see
    :func:`services.dead_letters.reopen_unpublished`), so it is neither lost nor shown as
    replayed, and the error is raised to the caller."""
    options = {"queue": replay.queue} if replay.queue else {}
    try:
        enqueue(replay.task_name, *replay.args, **options)
    except Exception as exc:
        if replay.dead_letter_id is not None:
            _reopen(replay.dead_letter_id, f"{type(exc).__name__}: {exc}", actor)
        raise


def _reopen(dl_id: int, error: str, actor: str) -> None:
    try:
        with unit_of_work() as session:
            reopen_unpublished(session, dl_id, error=error, actor=actor)
    except Exception:  # the database too: the replay stays marked, and the log says so
        log.exception("dead letter %s: replay not published and not reopened", dl_id)


def enqueue_followups(followups: Iterable[Followup]) -> int:
    """Publish what a service asked for after its commit."""
    return enqueue_many((f.task, f.arg) for f in followups)


def enqueue_many(items: Iterable[tuple[str, Any]]) -> int:
    """Publish ``(task_name, argument)`` pairs (an order id, a shipment id, a list of order ids)
    over one producer connection; returns how many went out.

    A failure part-way is logged, not raised: the rows' stage deadlines were already moved
    forward, so the sweeper re-publishes anything that did not get out.
    """
    sent = 0
    try:
        with app.producer_or_acquire() as producer:
            for task_name, arg in items:
                app.send_task(task_name, args=[arg], producer=producer)
                sent += 1
        broker_blocked.unblocked()  # confirmed (or sent, on Redis): the broker takes messages
    except _BROKER_DOWN as exc:  # expected now and then: one line, no traceback
        broker_blocked.publish_failed()
        log.error(
            "publishing stopped after %d tasks (broker unreachable: %s: %s); the sweeper will "
            "retry", sent, type(exc).__name__, exc,
        )  # fmt: skip
    except Exception:
        broker_blocked.publish_failed()
        log.exception("publishing stopped after %d tasks; the sweeper will retry", sent)
    return sent


def enqueue_reservations(order_ids: Sequence[str]) -> int:
    """Publish ``orders.reserve_batch`` messages of at most ``RESERVE_BATCH_MAX`` ids each, in
    the order given, over one producer connection; returns how many ids went out.

    A failure part-way is logged, not raised (as :func:`enqueue_many`): the orders keep their
    stage deadlines, so the sweeper re-publishes what did not get out.
    """
    size = get_settings().reserve_batch_max
    chunks = [list(order_ids[i : i + size]) for i in range(0, len(order_ids), size)]
    sent = enqueue_many((ORDERS_RESERVE_BATCH, chunk) for chunk in chunks)
    return sum(len(chunk) for chunk in chunks[:sent])
