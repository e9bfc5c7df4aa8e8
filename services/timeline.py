"""Writes to the order timeline (``order_events``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from models import OrderEvent


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
    session.execute(
        insert(OrderEvent).values(
            order_id=order_id,
            kind=kind,
            from_status=from_status,
            to_status=to_status,
            detail=dict(detail) if detail else None,
            actor=actor,
        )
    )


def record_many(session: Session, rows: list[dict[str, Any]]) -> None:
    """Append several events at once (one round trip), e.g. from a batch job."""
    if rows:
        session.execute(insert(OrderEvent), rows)
