"""A payment flagged for a person (``payments.attention``): set where a capture needed one and
its order could no longer move (:func:`services.payments.confirm._refund_flagged`), listed on the
console's Attention page, cleared here once someone has looked."""

from __future__ import annotations

from sqlalchemy.orm import Session

from domain.errors import ValidationError
from services import timeline
from services.order_state import lock_order
from services.payments.common import lock_payment


def acknowledge(session: Session, order_id: str, *, actor: str, note: str) -> str:
    """Clear the order's payment flag, writing who did it, the note and what the flag said on
    the timeline; returns what it said. Raises :class:`ValidationError` on ``order`` when the
    payment is not flagged (or there is no payment), and on ``note`` when it is blank."""
    if not note.strip():
        raise ValidationError("note", "say what was done (it goes on the timeline)")
    lock_order(session, order_id)
    payment = lock_payment(session, order_id)
    if payment is None or payment.attention is None:
        raise ValidationError("order", f"order {order_id} has no payment waiting for a person")
    flagged, payment.attention = payment.attention, None
    timeline.record(
        session, order_id, "attention_acknowledged",
        detail={"was": flagged, "note": note.strip()[:500]}, actor=actor,
    )  # fmt: skip
    return flagged
