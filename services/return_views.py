"""Returns as plain JSON-able data, for the API, the CLI and the console."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from domain.errors import NotFound
from models import Order, Return


def return_view(ret: Return) -> dict[str, Any]:
    """One return with its lines; times as ISO 8601, amounts in minor units."""

    def at(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": ret.id,
        "order_id": ret.order_id,
        "return_no": ret.return_no,
        "kind": ret.kind,
        "status": ret.status,
        "reason": ret.reason,
        "requested_by": ret.requested_by,
        "decided_by": ret.decided_by,
        "decision_note": ret.decision_note,
        "currency": ret.currency,
        "refund_amount": ret.refund_amount,
        "refund_no": ret.refund_no,
        "parcel_due_at": at(ret.parcel_due_at),
        "parcel": {"carrier": ret.carrier, "waybill": ret.waybill} if ret.waybill else None,
        "warehouse": ret.warehouse,
        "created_at": at(ret.created_at),
        "approved_at": at(ret.approved_at),
        "received_at": at(ret.received_at),
        "lines": [
            {
                "sku": line.sku,
                "quantity": line.quantity,
                "restocked": line.restocked,
                "damaged": line.damaged,
                "lost": line.lost,
                "refund_amount": line.refund_amount,
            }
            for line in ret.lines
        ],
    }


def returns_of(session: Session, order_id: str) -> list[dict[str, Any]]:
    """The order's returns, oldest first."""
    rows = session.scalars(select(Return).where(Return.order_id == order_id).order_by(Return.id))
    return [return_view(r) for r in rows]


def get_return(session: Session, return_id: int, source: str = "*") -> dict[str, Any]:
    """One return; NotFound for a missing one, or one of an order of another source than
    ``source`` (``*``: any), answered alike."""
    ret = session.get(Return, return_id)
    owner = session.scalar(select(Order.source).where(Order.id == ret.order_id)) if ret else None
    if ret is None or (source != "*" and owner != source):
        raise NotFound(f"return {return_id} not found", field="return_id")
    return return_view(ret)


def list_returns(session: Session, *, status: str | None = None, limit: int = 50) -> list[Return]:
    """The newest returns first, of one status if given (an operator's queue: REQUESTED)."""
    stmt = select(Return).order_by(Return.created_at.desc(), Return.id.desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(Return.status == status)
    return list(session.scalars(stmt))
