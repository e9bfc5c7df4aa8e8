"""Replaying or discarding many dead letters at once, chosen by a filter (the console's attention
page).

Contracts:

* :class:`DeadLetterFilter` — task name (exact), queue (exact), a substring of the error (class
  and message, case-insensitive) and a minimum age (``90s``, ``15m``, ``2h``, ``3d``); empty
  fields match everything. :meth:`DeadLetterFilter.parse` refuses bad input with
  ``ValidationError`` naming the field. Only OPEN dead letters ever match.
* :func:`count_matching` — the preview: how many OPEN dead letters match now.
* :func:`resolve_batch` — one batch, in the caller's transaction: up to ``limit`` matching OPEN
  rows, oldest first, claimed ``FOR UPDATE SKIP LOCKED`` (a row another person is replaying
  right now is skipped, not waited for), each through :func:`services.dead_letters.replay` or
  :func:`~services.dead_letters.discard` so their semantics hold (status, ``resolved_at``, the
  ``dlq_*`` timeline row), plus one ``console_action`` row per affected order. Returns the
  replays for the caller to publish after the commit.
* :func:`record_summary` — the one audit row of a click: action, filter, how many were done
  and how many still match (a click is capped: :data:`CLICK_CAP`).

The caller commits each batch before publishing its replays and starting the next, so a
failure part-way leaves the earlier batches done and published, and the summary says how many.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from domain.errors import ValidationError
from models import DeadLetter
from services import console, dead_letters, operators
from services.dead_letters import Replay

#: Dead letters one click handles at most; the page says how many still match after it.
CLICK_CAP = 1000
#: Dead letters per transaction (each batch is committed, then its replays are published).
BATCH = 200
BULK_ACTIONS = ("replay", "discard")

_AGE = re.compile(r"^(\d{1,7})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which OPEN dead letters a bulk action takes (empty fields match all)."""

    task: str = ""
    queue: str = ""
    error: str = ""
    older_than: str = ""  # a minimum age: 90s, 15m, 2h, 3d

    @classmethod
    def parse(cls, form: Mapping[str, str]) -> DeadLetterFilter:
        """From the console's form fields, or ``ValidationError`` naming the bad one."""
        values = {k: form.get(k, "").strip() for k in ("task", "queue", "error", "older_than")}
        for name, limit in (("task", 200), ("queue", 64), ("error", 200)):
            if len(values[name]) > limit:
                raise ValidationError(name, f"at most {limit} characters")
        flt = cls(**values)
        flt.min_age_s()  # validates older_than
        return flt

    def min_age_s(self) -> int:
        if not self.older_than:
            return 0
        match = _AGE.match(self.older_than)
        if match is None:
            raise ValidationError("older_than", "a number and a unit: 90s, 15m, 2h or 3d")
        return int(match.group(1)) * _UNIT_S[match.group(2)]

    def describe(self) -> dict[str, str]:
        """The non-empty fields (what the audit row and the page show)."""
        return {k: v for k, v in asdict(self).items() if v}

    def where(self) -> list[ColumnElement[bool]]:
        """The SQL conditions; the age is judged by the database's clock."""
        clauses: list[ColumnElement[bool]] = [DeadLetter.status == "OPEN"]
        if self.task:
            clauses.append(DeadLetter.task_name == self.task)
        if self.queue:
            clauses.append(DeadLetter.queue == self.queue)
        if self.error:
            text = func.concat(DeadLetter.error_class, ": ", DeadLetter.error_message)
            clauses.append(text.icontains(self.error, autoescape=True))
        if self.older_than:
            age = timedelta(seconds=self.min_age_s())
            clauses.append(DeadLetter.created_at <= func.now() - age)
        return clauses


@dataclass(frozen=True, slots=True)
class Batch:
    """One committed batch: the dead letters it resolved and the replays to publish."""

    ids: list[int]
    replays: list[Replay]


def count_matching(session: Session, flt: DeadLetterFilter) -> int:
    """How many OPEN dead letters match ``flt`` now (the preview)."""
    return int(session.scalar(select(func.count()).where(*flt.where())) or 0)


def sample(session: Session, flt: DeadLetterFilter, *, limit: int = 20) -> list[DeadLetter]:
    """The oldest few that match (shown under the preview count)."""
    stmt = select(DeadLetter).where(*flt.where()).order_by(DeadLetter.id).limit(limit)
    return list(session.scalars(stmt))


def resolve_batch(
    session: Session,
    flt: DeadLetterFilter,
    action: str,
    *,
    now: datetime,
    actor: str,
    limit: int = BATCH,
) -> Batch:
    """Replay or discard up to ``limit`` matching OPEN dead letters (see the module docstring)."""
    if action not in BULK_ACTIONS:
        raise ValidationError("action", f"must be one of {', '.join(BULK_ACTIONS)}")
    ids = list(
        session.scalars(
            select(DeadLetter.id)
            .where(*flt.where())
            .order_by(DeadLetter.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    replays: list[Replay] = []
    per_order: dict[str, list[int]] = {}
    for dl_id in ids:
        if action == "replay":
            replays.append(dead_letters.replay(session, dl_id, now=now, actor=actor))
        else:
            dead_letters.discard(session, dl_id, now=now, actor=actor)
        dl = dead_letters.find(session, dl_id)
        if dl is not None and dl.order_id:
            per_order.setdefault(dl.order_id, []).append(dl_id)
    for order_id, dl_ids in per_order.items():
        detail = {"dead_letter_ids": dl_ids, "filter": flt.describe()}
        console.record_action(session, order_id, f"dlq_bulk_{action}", actor=actor, detail=detail)
    return Batch(ids, replays)


def record_summary(
    session: Session,
    flt: DeadLetterFilter,
    action: str,
    *,
    done: int,
    actor: str,
    address: str,
    error: str | None = None,
) -> int:
    """The click's one audit row (filter, count done, count still matching); returns the
    count still matching."""
    remaining = count_matching(session, flt)
    detail: dict[str, Any] = {"filter": flt.describe(), "count": done, "remaining": remaining}
    if error is not None:
        detail["error"] = error[:200]
    outcome = "ok" if error is None else "error"
    operators.audit(
        session, actor=actor, action=f"dlq_bulk_{action}", outcome=outcome,
        target="dead_letters", address=address, detail=detail,
    )  # fmt: skip
    return remaining
