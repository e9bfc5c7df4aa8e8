"""Whether RabbitMQ refuses this process's publishes (a memory or disk alarm).

In an alarm RabbitMQ stops reading from publishing connections and tells them so
(``connection.blocked``); a publish then waits for a confirm that does not come. Publishes carry
``confirm_timeout`` (``celeryconfig.task_routes``), so they fail instead of hanging, and intake
answers 503 with ``Retry-After`` while the broker says it is blocked (:func:`retry_in`), instead
of storing orders faster than they can be queued: back-pressure, not loss. Orders stored before
that keep their stage deadlines, and the sweeper publishes them once the alarm clears.

The state is per process: py-amqp calls :func:`blocked` / :func:`unblocked` when it reads the
broker's notification on this process's connection. A blocked connection is only read while it
publishes, so while blocked intake lets one request through every ``Retry-After`` seconds (a
probe; the others get 503) to try again: a confirmed publish clears the state.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

#: A probe that never reported (its order was a repeat: nothing to publish) is forgotten after
#: this long; a failing publish reports sooner (four confirm timeouts and reconnects).
PROBE_EXPIRY_S = 60.0

_lock = threading.Lock()
_state: dict[str, float | None] = {"since": None, "failed_at": None, "probe_at": None}


def blocked(reason: str) -> None:
    """py-amqp's ``on_blocked``: RabbitMQ blocked this connection (``reason``: its alarm)."""
    log.warning("broker blocked this process's publishing: %s", reason)
    with _lock:
        _state["since"] = _state["since"] or time.monotonic()


def unblocked() -> None:
    """py-amqp's ``on_unblocked``, and any confirmed publish: the broker takes messages again."""
    with _lock:
        was = _state["since"]
        _state.update(since=None, failed_at=None, probe_at=None)
    if was is not None:
        log.warning("broker takes this process's publishes again")


def publish_failed() -> None:
    """A publish failed (the probe's, or any other): the next probe waits ``Retry-After``."""
    with _lock:
        _state.update(failed_at=time.monotonic(), probe_at=None)


def retry_in(retry_after_s: float) -> float | None:
    """Seconds intake should tell a client to wait, or None to go ahead. Always None unless the
    broker said it is blocked; then None for one probe per ``retry_after_s`` after the last
    failed publish, and ``retry_after_s`` (or what is left of it) for everyone else."""
    now = time.monotonic()
    with _lock:
        if _state["since"] is None:
            return None
        probe_at, failed_at = _state["probe_at"], _state["failed_at"]
        if probe_at is not None and now - probe_at < PROBE_EXPIRY_S:
            return retry_after_s  # a probe is publishing: wait for its answer
        left = retry_after_s - (now - failed_at) if failed_at is not None else 0.0
        if left > 0:
            return left
        _state["probe_at"] = now
        return None
