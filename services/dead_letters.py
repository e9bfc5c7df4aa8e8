"""Dead letters: tasks that failed for good, kept with what is needed to run them again."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from domain.errors import NotFound, ValidationError
from models import DeadLetter
from services import timeline


@dataclass(frozen=True, slots=True)
class Replay:
    """What the task layer must enqueue (after commit) to replay a dead letter."""

    task_name: str
    args: Sequence[Any]
    kwargs: Mapping[str, Any]
    queue: str | None
    dead_letter_id: int | None = None


def record(
    session: Session,
    *,
    task_name: str,
    task_id: str | None,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    queue: str | None,
    error: BaseException,
    attempts: int,
    order_id: str | None,
) -> int:
    """Store a failed task; the order's timeline gets a ``dead_letter`` event."""
    dl_id: int = session.execute(
        insert(DeadLetter)
        .values(
            task_name=task_name,
            task_id=task_id,
            args=list(args),
            kwargs=dict(kwargs),
            queue=queue,
            order_id=order_id,
            error_class=f"{type(error).__module__}.{type(error).__qualname__}",
            error_message=str(error)[:4000],
            attempts=attempts,
        )
        .returning(DeadLetter.id)
    ).scalar_one()
    if order_id:
        timeline.record(
            session,
            order_id,
            "dead_letter",
            detail={"task": task_name, "error": type(error).__name__, "dead_letter_id": dl_id},
        )
    return dl_id


def list_open(session: Session, limit: int = 100) -> list[DeadLetter]:
    return list(
        session.scalars(
            select(DeadLetter)
            .where(DeadLetter.status == "OPEN")
            .order_by(DeadLetter.id)
            .limit(limit)
        )
    )


def find(session: Session, dl_id: int) -> DeadLetter | None:
    return session.get(DeadLetter, dl_id)


def count_open(session: Session) -> int:
    return session.scalar(select(func.count()).where(DeadLetter.status == "OPEN")) or 0


def _take_open(session: Session, dl_id: int) -> DeadLetter:
    dl = session.get(DeadLetter, dl_id, with_for_update=True)
    if dl is None:
        raise NotFound(f"dead letter {dl_id} not found", field="dead_letter_id")
    if dl.status != "OPEN":
        raise ValidationError("id", f"dead letter {dl_id} is already {dl.status.lower()}")
    return dl


def _resolve(session: Session, dl_id: int, status: str, *, now: datetime, actor: str) -> DeadLetter:
    dl = _take_open(session, dl_id)
    session.execute(
        update(DeadLetter).where(DeadLetter.id == dl_id).values(status=status, resolved_at=now)
    )
    if dl.order_id:
        timeline.record(
            session, dl.order_id, f"dlq_{status.lower()}", detail={"dead_letter_id": dl_id},
            actor=actor,
        )  # fmt: skip
    return dl


def replay(session: Session, dl_id: int, *, now: datetime, actor: str) -> Replay:
    """Mark the dead letter replayed and return the task to enqueue after commit."""
    dl = _resolve(session, dl_id, "REPLAYED", now=now, actor=actor)
    return Replay(dl.task_name, dl.args, dl.kwargs, dl.queue, dl_id)


def reopen_unpublished(session: Session, dl_id: int, *, error: str, actor: str) -> bool:
    """The replay committed but its task never reached the broker: the dead letter is OPEN
    again (compare-and-set from REPLAYED, so a concurrent resolution wins) and the order's
    timeline says why. Returns whether it was reopened."""
    reopened = session.execute(
        update(DeadLetter)
        .where(DeadLetter.id == dl_id, DeadLetter.status == "REPLAYED")
        .values(status="OPEN", resolved_at=None)
        .returning(DeadLetter.order_id)
    ).first()
    if reopened is None:
        return False
    if reopened.order_id:
        timeline.record(
            session, reopened.order_id, "dlq_replay_unpublished",
            detail={"dead_letter_id": dl_id, "error": error[:200]}, actor=actor,
        )  # fmt: skip
    return True


def discard(session: Session, dl_id: int, *, now: datetime, actor: str) -> None:
    """Mark the dead letter handled without running it."""
    _resolve(session, dl_id, "DISCARDED", now=now, actor=actor)
