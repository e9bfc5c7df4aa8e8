"""Shipment tracking policy: forward-only status moves and the adaptive polling cadence.

Statuses are the normalized vocabulary of provider-protocols.md §5 (adapters report them as
:class:`ShipmentStatus` too; this module imports nothing from ``adapters``)::

    PENDING ─▶ INFO_RECEIVED ─▶ IN_TRANSIT ─▶ OUT_FOR_DELIVERY ─────┐
                                              AVAILABLE_FOR_PICKUP ─┼─▶ DELIVERED (final)
                                              ATTEMPT_FAIL ─────────┘
        any non-final status ─▶ EXCEPTION ─▶ IN_TRANSIT or later (the carrier resolved it)
        any non-final status ─▶ EXPIRED (final: the provider stopped tracking)

Polling is the fallback to Kuaidi100's pushes: :func:`next_poll_delay` decides when a shipment
is queried next, from its status, how long it has been quiet, whether pushes arrive and how many
polls in a row failed. Every duration is in seconds.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta

from domain.orders import OrderStatus, can_transition


class ShipmentStatus(enum.StrEnum):
    PENDING = "PENDING"
    INFO_RECEIVED = "INFO_RECEIVED"
    IN_TRANSIT = "IN_TRANSIT"
    OUT_FOR_DELIVERY = "OUT_FOR_DELIVERY"
    AVAILABLE_FOR_PICKUP = "AVAILABLE_FOR_PICKUP"
    ATTEMPT_FAIL = "ATTEMPT_FAIL"
    DELIVERED = "DELIVERED"
    EXCEPTION = "EXCEPTION"
    EXPIRED = "EXPIRED"


T = ShipmentStatus

#: Progress of a parcel. EXCEPTION and EXPIRED are not on this ladder (see :func:`can_advance`).
RANK: dict[ShipmentStatus, int] = {
    T.PENDING: 0,
    T.INFO_RECEIVED: 1,
    T.IN_TRANSIT: 2,
    T.OUT_FOR_DELIVERY: 3,
    T.AVAILABLE_FOR_PICKUP: 3,
    T.ATTEMPT_FAIL: 3,
    T.DELIVERED: 4,
}

FINAL: frozenset[ShipmentStatus] = frozenset({T.DELIVERED, T.EXPIRED})

#: The last mile: the parcel is at the recipient's door, locker or station.
LAST_MILE: frozenset[ShipmentStatus] = frozenset(
    {T.OUT_FOR_DELIVERY, T.AVAILABLE_FOR_PICKUP, T.ATTEMPT_FAIL}
)

#: Statuses that say the carrier has the parcel and is moving it (for the order: IN_TRANSIT).
MOVING: frozenset[ShipmentStatus] = frozenset({T.IN_TRANSIT, *LAST_MILE})

#: Leaving EXCEPTION needs evidence that the carrier moves the parcel again: a status at least
#: this far up the ladder. A PENDING/INFO_RECEIVED result after an exception is stale data.
_RESUME_RANK = RANK[T.IN_TRANSIT]


def is_final(status: ShipmentStatus | str) -> bool:
    """True when tracking is over (nothing can move the shipment any more)."""
    return ShipmentStatus(status) in FINAL


def can_advance(current: ShipmentStatus | str, new: ShipmentStatus | str) -> bool:
    """True if a shipment in ``current`` may move to ``new``. Staying put is not a move.

    * DELIVERED and EXPIRED are final: nothing leaves them.
    * DELIVERED and EXPIRED can be entered from any non-final status.
    * EXCEPTION can be entered from any non-final status, and left for IN_TRANSIT or later.
    * Otherwise the rank must go up, or stay on the last-mile rung: OUT_FOR_DELIVERY ->
      ATTEMPT_FAIL -> OUT_FOR_DELIVERY (a second attempt) -> AVAILABLE_FOR_PICKUP is how a
      real delivery goes. Whether such a sideways move is *newer* is decided by the caller from
      event times, which this table cannot see.
    """
    cur, tgt = ShipmentStatus(current), ShipmentStatus(new)
    if cur in FINAL or cur == tgt:
        return False
    if tgt in (T.EXCEPTION, T.EXPIRED):
        return True
    if cur == T.EXCEPTION:
        return RANK[tgt] >= _RESUME_RANK
    if cur in LAST_MILE and tgt in LAST_MILE:
        return True
    return RANK[tgt] > RANK[cur]


@dataclass(frozen=True, slots=True)
class Cadence:
    """Polling intervals in seconds. Defaults suit Kuaidi100 in production.

    ``min_interval`` is a hard floor on every delay: Kuaidi100 locks a waybill that is queried
    more often than every 30 minutes. ``push_multiplier`` stretches the normal intervals of a
    shipment that receives pushes (polling is then only a safety net); it never applies to the
    error backoff.
    """

    new: float = 2 * 3600  # PENDING / INFO_RECEIVED: the first scan usually comes within hours
    in_transit: float = 4 * 3600  # Kuaidi100 itself re-checks carriers about every 4 h
    last_mile: float = 3600  # out for delivery / pickup / attempt fail: delivery is imminent
    quiet: float = 12 * 3600  # no new event for ``quiet_after``: the parcel is parked somewhere
    quiet_after: float = 2 * 86400
    exception: float = 3600  # escalated: an operator is waiting for the resolution
    push_multiplier: float = 3.0
    error_base: float = 1800  # first retry after a failed poll, doubling per failure
    error_cap: float = 86400
    min_interval: float = 1800

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"Cadence.{f.name} must be positive")
        if self.push_multiplier < 1:
            raise ValueError("Cadence.push_multiplier must be >= 1 (pushes never speed polling)")

    def scaled(self, divisor: float) -> Cadence:
        """Every duration divided by ``divisor`` (demo and tests compress time); the push
        multiplier is a ratio and stays."""
        if divisor <= 0:
            raise ValueError("divisor must be positive")
        durations = {f.name: getattr(self, f.name) / divisor for f in fields(self)}
        durations.pop("push_multiplier")
        return replace(self, **durations)


def next_poll_delay(
    status: ShipmentStatus | str,
    *,
    last_event_age_s: float | None,
    has_push: bool,
    failures: int,
    cadence: Cadence,
) -> float | None:
    """Seconds until the shipment should be queried again, or None to stop polling.

    Contract: None exactly for final statuses (DELIVERED, EXPIRED); otherwise a finite delay,
    never below ``cadence.min_interval``. After failures it is at most
    ``max(error_cap, min_interval)``; otherwise at most the longest status/quiet interval,
    times ``push_multiplier`` when pushes arrive (or ``min_interval`` if that is longer).

    * ``failures`` > 0 (consecutive failed polls): exponential backoff ``error_base * 2**(n-1)``
      capped at ``error_cap``, whatever the status — after an error nothing new is known, and
      the backoff keeps a failing provider from being hammered.
    * Otherwise the interval of the status; a non-exception shipment whose newest event is older
      than ``quiet_after`` (``last_event_age_s``; None = unknown, not quiet) is polled at the
      quiet interval instead; ``has_push`` stretches the result by ``push_multiplier``.
    """
    st = ShipmentStatus(status)
    if st in FINAL:
        return None
    if failures > 0:
        # Cap the exponent first: 2**failures for a long outage would overflow a float.
        backoff = cadence.error_base * 2.0 ** min(failures - 1, 64)
        return max(cadence.min_interval, min(cadence.error_cap, backoff))
    delay = _status_interval(st, cadence)
    quiet = last_event_age_s is not None and last_event_age_s >= cadence.quiet_after
    if quiet and st != T.EXCEPTION:  # an exception stays escalated until someone resolves it
        delay = max(delay, cadence.quiet)
    if has_push:
        delay *= cadence.push_multiplier
    return max(cadence.min_interval, delay)


def _status_interval(status: ShipmentStatus, cadence: Cadence) -> float:
    if status == T.EXCEPTION:
        return cadence.exception
    if status in LAST_MILE:
        return cadence.last_mile
    if status == T.IN_TRANSIT:
        return cadence.in_transit
    return cadence.new  # PENDING, INFO_RECEIVED


@dataclass(frozen=True, slots=True)
class PollChunk:
    """Shipments polled by one task, and when: ``not_before`` is the latest due time among
    them, so no member is queried before it is due (nor inside its minimum interval)."""

    shipment_ids: tuple[int, ...]
    not_before: datetime


def pace(
    claimed: Sequence[tuple[int, datetime]], *, now: datetime, rate_per_s: float, burst: int
) -> list[tuple[int, datetime]]:
    """Spread claimed ``(shipment_id, due)`` pairs over time at the quota's pace; pure.

    In due order, the ``k``-th (from 0) is not due before ``now + (k + 1 - burst) / rate_per_s``
    (a full bucket of ``burst`` tokens at ``now``, then ``rate_per_s`` more per second); a due
    time already later stays. Without this, a backlog all due at once lands in one poll task
    whose reservation gets at most ``burst`` tokens — the quota's per-second share would never
    be used and the rest would be handed back tick after tick. Never moves a poll earlier.
    """
    if rate_per_s <= 0 or burst < 1:
        raise ValueError("rate_per_s must be positive and burst at least 1")
    paced = []
    for k, (sid, due) in enumerate(sorted(claimed, key=lambda pair: (pair[1], pair[0]))):
        earliest = now + timedelta(seconds=max(0.0, (k + 1 - burst) / rate_per_s))
        paced.append((sid, max(due, earliest)))
    return paced


def plan_chunks(
    claimed: Sequence[tuple[int, datetime]], *, size: int, window_s: float
) -> list[PollChunk]:
    """Group claimed ``(shipment_id, due)`` pairs, in due order, into poll tasks.

    A chunk closes when it holds ``size`` shipments or when the next one is due more than
    ``window_s`` after the chunk's first: a member then waits at most ``window_s`` past its own
    due time for the others. Pure.
    """
    chunks: list[PollChunk] = []
    current: list[tuple[int, datetime]] = []
    for sid, due in sorted(claimed, key=lambda pair: (pair[1], pair[0])):
        if current and (len(current) >= size or (due - current[0][1]).total_seconds() > window_s):
            chunks.append(_chunk(current))
            current = []
        current.append((sid, due))
    if current:
        chunks.append(_chunk(current))
    return chunks


def _chunk(members: list[tuple[int, datetime]]) -> PollChunk:
    return PollChunk(tuple(sid for sid, _ in members), max(due for _, due in members))


# -- the order follows its shipment ------------------------------------------------------------

#: Order reasons the tracking stage writes; only an order flagged with this prefix is moved on
#: automatically when the carrier resolves the problem.
EXCEPTION_REASON = "tracking_exception"
EXPIRED_REASON = "tracking_expired"
#: A refused or returned parcel: never cleared by a later scan — the scans that follow are the
#: parcel's way back, and its "delivered" is to the sender.
RETURNED_REASON = "tracking_returned"
#: The provider finished tracking a parcel that has no delivery scan (services.tracking.finish).
ENDED_REASON = "tracking_ended"


@dataclass(frozen=True, slots=True)
class OrderFollow:
    """What the order does after its shipment moved: the statuses it passes through, in order
    (each allowed by the order's transition table from the one before), or the reason it is
    flagged NEEDS_ATTENTION with. Both empty: the order stays where it is."""

    moves: tuple[OrderStatus, ...] = ()
    flag: str | None = None


def order_follows(
    order_status: OrderStatus | str,
    order_reason: str | None,
    shipment: ShipmentStatus,
    *,
    returned: bool = False,
    exception_text: str = "",
) -> OrderFollow:
    """The order's next steps when its shipment moved to ``shipment``:

    1. Moving (IN_TRANSIT, last mile): a SHIPPED order goes IN_TRANSIT.
    2. DELIVERED: a SHIPPED or IN_TRANSIT order goes DELIVERED (receipt and the after-sale
       window come later: :mod:`services.receipt`).
    3. EXCEPTION: the order is flagged ``tracking_exception: <text>``, or ``tracking_returned:
       <text>`` for a refused or returned parcel.
    4. EXPIRED: the order is flagged ``tracking_expired``.
    5. An order flagged by a tracking exception (rule 3, not a return) is moved on by rules 1
       and 2 as if it were SHIPPED: the carrier resolved the problem.
    6. A step the order's transition table forbids is not taken (never an error), and neither
       is any step after it.
    """
    current = OrderStatus(order_status)
    resumable = current == OrderStatus.NEEDS_ATTENTION and (order_reason or "").startswith(
        EXCEPTION_REASON
    )
    if shipment in MOVING and (current == OrderStatus.SHIPPED or resumable):
        return OrderFollow(moves=_allowed(current, (OrderStatus.IN_TRANSIT,)))
    if shipment == ShipmentStatus.DELIVERED and (
        current in (OrderStatus.SHIPPED, OrderStatus.IN_TRANSIT) or resumable
    ):
        return OrderFollow(moves=_allowed(current, (OrderStatus.DELIVERED,)))
    flag = None
    if shipment == ShipmentStatus.EXCEPTION:
        flag = f"{RETURNED_REASON if returned else EXCEPTION_REASON}: {exception_text}"
    elif shipment == ShipmentStatus.EXPIRED:
        flag = EXPIRED_REASON
    if flag is None or not can_transition(current, OrderStatus.NEEDS_ATTENTION):
        return OrderFollow()
    return OrderFollow(flag=flag)


def _allowed(current: OrderStatus, targets: tuple[OrderStatus, ...]) -> tuple[OrderStatus, ...]:
    taken: list[OrderStatus] = []
    for target in targets:
        if not can_transition(current, target):
            break
        taken.append(target)
        current = target
    return tuple(taken)
