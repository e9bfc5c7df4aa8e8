"""Dispute rules: which provider dispute statuses are open, which closed, and whether an event
may overwrite the dispute's recorded state. Stdlib only.

1. Statuses are Stripe's: an inquiry (``warning_*``) or a chargeback (``needs_response``,
   ``under_review``) is open; ``warning_closed``, ``won`` and ``lost`` are closed, and final.
2. A closed dispute keeps its status: nothing reopens it (a late ``updated`` event is noted only).
3. An open dispute takes the event's state when the event is not older than the one that set
   the current state, and its status does not rank lower (an inquiry may become a chargeback,
   ``needs_response`` may become ``under_review``, never the other way); a closing status is
   taken whatever the event times say, since nothing follows a close.
4. Funds withdrawn and reinstated only grow (the provider's balance transactions only add up).
5. An order is flagged (moved to NEEDS_ATTENTION, reason ``dispute``) only while its dispute is
   open and only where the order's transition table allows it; otherwise the dispute is noted on
   the timeline and the Attention page lists it from the disputes table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from domain.orders import OrderStatus, can_transition


class DisputeStatus(enum.StrEnum):
    WARNING_NEEDS_RESPONSE = "warning_needs_response"
    WARNING_UNDER_REVIEW = "warning_under_review"
    WARNING_CLOSED = "warning_closed"
    NEEDS_RESPONSE = "needs_response"
    UNDER_REVIEW = "under_review"
    WON = "won"
    LOST = "lost"


D = DisputeStatus

#: How far along a dispute is; a status never moves to a lower rank (rule 3).
RANK: dict[str, int] = {
    D.WARNING_NEEDS_RESPONSE: 0,
    D.WARNING_UNDER_REVIEW: 1,
    D.NEEDS_RESPONSE: 2,
    D.UNDER_REVIEW: 3,
    D.WARNING_CLOSED: 4,
    D.WON: 4,
    D.LOST: 4,
}
CLOSED: frozenset[str] = frozenset({D.WARNING_CLOSED, D.WON, D.LOST})
#: The outcome recorded when a dispute closes (an inquiry closes without a chargeback).
OUTCOMES: dict[str, str] = {D.WON: "won", D.LOST: "lost", D.WARNING_CLOSED: "closed"}


def is_open(status: str) -> bool:
    """True for a known open status; an unknown one counts as open (a person should look)."""
    return status not in CLOSED


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the disputes table holds for a dispute (``None`` before its first event)."""

    status: str
    event_at: datetime


def takes_state(current: Recorded | None, status: str, event_at: datetime) -> bool:
    """Whether an event carrying ``status``, created at ``event_at``, overwrites ``current``
    (rules 2 and 3)."""
    if current is None:
        return True
    if current.status in CLOSED:
        return False
    if status in CLOSED:
        return True
    if event_at < current.event_at:
        return False
    return RANK.get(status, 0) >= RANK.get(current.status, 0)


class OrderFlag(enum.StrEnum):
    MOVE = "move"  # the order moves to NEEDS_ATTENTION with reason ``dispute``
    NOTE = "note"  # the order stays; the timeline and the Attention page show the dispute
    NONE = "none"  # nothing new for a person (a known dispute moving on, or closed)


def order_flag(order_status: str, *, first_seen: bool, status: str) -> OrderFlag:
    """What a dispute event does to its order (rule 5): only a dispute seen for the first time
    while open asks for a person; the order moves where the transition table lets it reach
    NEEDS_ATTENTION (not DELIVERED, COMPLETED or another final status, nor from NEEDS_ATTENTION
    itself)."""
    if not first_seen or not is_open(status):
        return OrderFlag.NONE
    if can_transition(OrderStatus(order_status), OrderStatus.NEEDS_ATTENTION):
        return OrderFlag.MOVE
    return OrderFlag.NOTE
