"""Writes to the order timeline (``order_events``)."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from models import OrderEvent
from observability import metrics

#: Set by the task layer while a task runs: ``{"task", "worker", "retries"}``. Every timeline row
#: written meanwhile carries it, so a transition shows which attempt, on which worker, made it.
task_context: ContextVar[dict[str, Any] | None] = ContextVar("task_context", default=None)


def _with_task(detail: Mapping[str, Any] | None) -> dict[str, Any] | None:
    context = task_context.get()
    if context is None:
        return dict(detail) if detail else None
    return {**(detail or {}), "task": context}


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
    """Append one event to the order's timeline, in the caller's transaction."""
    if kind == "transition" and from_status and to_status:
        # Before the insert: the newest transition event is the one that entered from_status.
        seconds = metrics.seconds_in_stage(session, order_id)
        if seconds is not None:
            metrics.observe_transition(from_status, to_status, seconds)
    session.execute(
        insert(OrderEvent).values(
            order_id=order_id,
            kind=kind,
            from_status=from_status,
            to_status=to_status,
            detail=_with_task(detail),
            actor=actor,
        )
    )


def record_many(session: Session, rows: list[dict[str, Any]]) -> None:
    """Append several events at once (one round trip), e.g. from a batch job."""
    if rows:
        session.execute(
            insert(OrderEvent), [{**r, "detail": _with_task(r.get("detail"))} for r in rows]
        )
