"""Writes to the order timeline (``order_events``)."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from observability import metrics

#: Set by the task layer while a task runs: ``{"task", "worker", "retries"}``. Every timeline row
#: written meanwhile carries it, so a transition shows which attempt, on which worker, made it.
task_context: ContextVar[dict[str, Any] | None] = ContextVar("task_context", default=None)


def with_task(detail: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``detail`` plus the running task's context (if any): what a timeline row stores."""
    context = task_context.get()
    if context is None:
        return dict(detail) if detail else None
    return {**(detail or {}), "task": context}


# The RETURNING sub-select reads the newest earlier transition of the order (the statement's
# snapshot does not include the new row; ``e.id <`` makes that explicit): how long the order sat in
# ``from_status``, by the database clock, in the same round trip as the insert.
_INSERT_EVENT = text(
    """
    INSERT INTO order_events (order_id, kind, from_status, to_status, detail, actor)
    VALUES (:order_id, :kind, :from_status, :to_status, :detail, :actor)
    RETURNING extract(epoch FROM now() - (
        SELECT max(e.created_at) FROM order_events e
        WHERE e.order_id = :order_id AND e.kind = 'transition' AND e.id < order_events.id))
    """
).bindparams(bindparam("detail", type_=JSONB))


def record(
    session: Session,
    order_id: str,
    kind: str,
    *,
    from_status: str | None = None,
    to_status: str | None = None,
    detail: Mapping[str, Any] | None = None,
    actor: str = "system",
) -> None:
    """Append one event to the order's timeline, in the caller's transaction (one round trip).

    A transition out of ``from_status`` also observes the stage-latency histogram: seconds since
    the order's previous transition event (intake writes one for RECEIVED).
    """
    params = {
        "order_id": order_id,
        "kind": kind,
        "from_status": from_status,
        "to_status": to_status,
        "detail": with_task(detail),
        "actor": actor,
    }
    seconds = session.connection().execute(_INSERT_EVENT, params).scalar_one()
    if kind == "transition" and from_status and to_status and seconds is not None:
        metrics.observe_transition(from_status, to_status, float(seconds))
