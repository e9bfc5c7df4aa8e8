"""Parcels: an order ships as one parcel per warehouse, and its status follows its parcels.

Pure rules (stdlib only), each used by :mod:`services.shipping`, :mod:`services.tracking` or
the cancel path:

1. **Planning** (:func:`plan_parcels`): one parcel per warehouse the order's held stock sits
   in, carrying that warehouse's units (SKU, quantity; repeated SKUs summed), warehouses and
   lines sorted by name so the plan is the same every time it is worked out.
2. **Booking key** (:func:`booking_key`): ``ship-<order hex>-<warehouse>-<seq>``, where
   ``seq`` numbers the parcels of that (order, warehouse): 1 for the planned one, one more for
   each parcel re-allocated there later. The key is derived, stored with the parcel before the
   first call and the same on every retry, so a replay books nothing new. A warehouse name
   that is not plain ``[A-Za-z0-9_.-]`` is replaced by ``w`` and 16 hex digits of its SHA-256.
3. **Progress** (:func:`order_progress`), over the live parcels (cancelled or refused ones do
   not count): PAID while none is booked, PARTIALLY_SHIPPED while some but not all are;
   once all are booked: DELIVERED when all are delivered, PARTIALLY_DELIVERED when some are,
   IN_TRANSIT when any is moving (in transit or in the last mile), else SHIPPED. A parcel in
   EXCEPTION or EXPIRED is booked and not delivered; it flags the order (rule 4) but does
   not change its progress.
4. **Following** (:func:`follow_parcels`), after one parcel of a several-parcel order moved:
   EXCEPTION flags the order ``tracking_exception: parcel <id> (<warehouse>): <text>`` (or
   ``tracking_returned: …``), EXPIRED flags it ``tracking_expired: parcel <id> (<warehouse>)``;
   any other move takes the order up the shipping ladder to its progress (never down, rungs
   may be skipped: :data:`domain.orders.SHIPPING_LADDER`); DELIVERED is its top. An
   order flagged by a tracking exception (not a return) moves on the same way once no live
   parcel is in EXCEPTION or EXPIRED any more: the carrier resolved it. A one-parcel order
   follows :func:`domain.tracking.order_follows`, exactly as before parcels existed.
5. **Re-allocation** (:func:`reallocation`): the lines of a refused parcel are allocated by
   :func:`domain.allocation.allocate` under the configured policy among the warehouses not
   excluded (the refusing one, any that refused this order before, and any holding a parcel
   of this order that is not booked yet, whose request must not change once sent).
6. **Cancel share** (:func:`lines_amount`, :func:`lines_share`): a cancelled parcel's refund
   is its lines' amount (quantity times the unit price the order was priced at); when the order
   was charged less than its lines' list amount (an order-level discount: ``total_amount``
   below the sum of its lines) each share is scaled by charged / list, rounded down, so the
   shares never add up to more than was charged. The caller caps it at what is left to refund.
7. **Unplaced lines** (:func:`refused_reason`, :func:`is_unplaced`, :func:`settled`): a refused
   parcel is cancelled with the reason ``refused:<code>``; when no warehouse could take its
   lines the reason ends in ``[unplaced]``: the buyer paid for lines that have no parcel. They
   stay owed until an operator's retry reserves them again (``[re-reserved]``) or a cancel or
   resolve refunds their share (``[refunded]``); an order is never moved on with lines
   ``[unplaced]``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from domain.allocation import Allocation, Availability, Line, Policy, allocate
from domain.orders import SHIPPING_LADDER, OrderStatus, can_transition
from domain.tracking import (
    EXCEPTION_REASON,
    EXPIRED_REASON,
    MOVING,
    RETURNED_REASON,
    OrderFollow,
    ShipmentStatus,
)

_PLAIN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: ``shipments.cancel_reason`` is at most this long.
REASON_MAX = 200
#: Rule 7: a refused parcel's reason starts with this.
REFUSED_PREFIX = "refused:"
UNPLACED = " [unplaced]"
#: What a legacy parcel without a warehouse is called in reasons.
UNKNOWN_WAREHOUSE = "?"


@dataclass(frozen=True, slots=True)
class Parcel:
    """A live parcel as the status rules see it: booked once it has a waybill."""

    id: int
    warehouse: str | None
    booked: bool
    status: ShipmentStatus = ShipmentStatus.PENDING

    @property
    def label(self) -> str:
        """``parcel <id> (<warehouse>)``: how reasons and the timeline name it."""
        return f"parcel {self.id} ({self.warehouse or UNKNOWN_WAREHOUSE})"


def plan_parcels(held: Iterable[tuple[str, str, int]]) -> dict[str, list[tuple[str, int]]]:
    """Rule 1: ``(sku, warehouse, quantity)`` holds as ``{warehouse: [(sku, quantity), …]}``."""
    plan: dict[str, dict[str, int]] = {}
    for sku, warehouse, qty in held:
        per = plan.setdefault(warehouse, {})
        per[sku] = per.get(sku, 0) + qty
    return {w: sorted(plan[w].items()) for w in sorted(plan)}


def booking_key(order_id: str, warehouse: str | None, seq: int) -> str:
    """Rule 2 (at most 5 + 32 + 1 + 64 + 1 + digits characters: fits ``booking_key``)."""
    base = f"ship-{order_id.replace('-', '')}"
    if warehouse is None:
        return base if seq == 1 else f"{base}-{seq}"
    tag = (
        warehouse
        if _PLAIN.fullmatch(warehouse)
        else "w" + hashlib.sha256(warehouse.encode()).hexdigest()[:16]
    )
    return f"{base}-{tag}-{seq}"


def order_progress(parcels: Sequence[Parcel]) -> OrderStatus:
    """Rule 3: the order's place on the shipping ladder. Raises ValueError with no parcel."""
    if not parcels:
        raise ValueError("an order's progress needs at least one live parcel")
    booked = [p for p in parcels if p.booked]
    if len(booked) < len(parcels):
        return OrderStatus.PARTIALLY_SHIPPED if booked else OrderStatus.PAID
    delivered = sum(1 for p in parcels if p.status == ShipmentStatus.DELIVERED)
    if delivered == len(parcels):
        return OrderStatus.DELIVERED
    if delivered:
        return OrderStatus.PARTIALLY_DELIVERED
    if any(p.status in MOVING for p in parcels):
        return OrderStatus.IN_TRANSIT
    return OrderStatus.SHIPPED


def climb(current: OrderStatus | str, target: OrderStatus) -> tuple[OrderStatus, ...]:
    """The moves that take an order from ``current`` up the shipping ladder to ``target``;
    none if ``target`` is not higher up. Each move goes to the
    highest rung not past ``target`` that the transition table allows (rungs are skipped when
    it may: PAID may reach SHIPPED but not IN_TRANSIT in one move). An order flagged
    NEEDS_ATTENTION climbs straight to ``target`` (the caller decides whether it may)."""
    cur = OrderStatus(current)
    if cur not in SHIPPING_LADDER and cur != OrderStatus.NEEDS_ATTENTION:
        return ()
    moves: list[OrderStatus] = []
    while cur != target:
        above = SHIPPING_LADDER.index(cur) + 1 if cur in SHIPPING_LADDER else 0
        rungs = SHIPPING_LADDER[above : SHIPPING_LADDER.index(target) + 1]
        step = next((r for r in reversed(rungs) if can_transition(cur, r)), None)
        if step is None:
            return tuple(moves)
        moves.append(step)
        cur = step
    return tuple(moves)


def follow_parcels(
    order_status: OrderStatus | str,
    order_reason: str | None,
    parcels: Sequence[Parcel],
    moved: Parcel,
    *,
    returned: bool = False,
    exception_text: str = "",
) -> OrderFollow:
    """Rule 4: what the order does after ``moved`` (one of ``parcels``, the order's live
    parcels with their new statuses) moved to ``moved.status``."""
    current = OrderStatus(order_status)
    if moved.status == ShipmentStatus.EXCEPTION:
        kind = RETURNED_REASON if returned else EXCEPTION_REASON
        return _flag(current, f"{kind}: {moved.label}: {exception_text}")
    if moved.status == ShipmentStatus.EXPIRED:
        return _flag(current, f"{EXPIRED_REASON}: {moved.label}")
    resumable = current == OrderStatus.NEEDS_ATTENTION and (order_reason or "").startswith(
        EXCEPTION_REASON
    )
    troubled = any(p.status in (ShipmentStatus.EXCEPTION, ShipmentStatus.EXPIRED) for p in parcels)
    if current == OrderStatus.NEEDS_ATTENTION and (not resumable or troubled):
        return OrderFollow()
    if current not in SHIPPING_LADDER and current != OrderStatus.NEEDS_ATTENTION:
        return OrderFollow()
    return OrderFollow(moves=climb(current, order_progress(parcels)))


def _flag(current: OrderStatus, reason: str) -> OrderFollow:
    if not can_transition(current, OrderStatus.NEEDS_ATTENTION):
        return OrderFollow()
    return OrderFollow(flag=reason)


def reallocation(
    lines: Sequence[Line],
    available: Availability,
    active: Mapping[str, bool],
    excluded: Iterable[str],
    policy: Policy,
    region: str | None,
) -> list[Allocation]:
    """Rule 5: where a refused parcel's lines go instead, or
    :class:`~domain.errors.ReservationRefused` (out_of_stock naming the short SKU) when the
    warehouses left cannot hold them all."""
    out = set(excluded)
    left = {sku: {w: n for w, n in per.items() if w not in out} for sku, per in available.items()}
    return allocate(lines, left, active, policy, region)


def lines_amount(lines: Iterable[tuple[str, int]], unit_amounts: Mapping[str, int]) -> int:
    """Rule 6: the minor units a parcel's lines cost (``unit_amounts`` by SKU). Raises
    KeyError for a SKU without a price: the caller must not guess a refund."""
    return sum(qty * unit_amounts[sku] for sku, qty in lines)


def lines_share(
    lines: Iterable[tuple[str, int]],
    unit_amounts: Mapping[str, int],
    *,
    list_total: int,
    charged: int,
) -> int:
    """Rule 6: what ``lines`` are worth on an order whose lines list at ``list_total`` and
    that was priced at ``charged`` (``orders.total_amount``). Raises KeyError like
    :func:`lines_amount`."""
    amount = lines_amount(lines, unit_amounts)
    if list_total <= 0 or charged >= list_total:
        return amount
    return amount * max(charged, 0) // list_total


def refused_reason(code: str, *, placed: bool) -> str:
    """Rule 7: the cancel reason of a parcel refused with ``code`` (fits ``REASON_MAX``)."""
    suffix = "" if placed else UNPLACED
    return f"{REFUSED_PREFIX}{code}"[: REASON_MAX - len(suffix)] + suffix


def is_unplaced(cancel_reason: str | None) -> bool:
    """Rule 7: the parcel was refused and its lines are owed (no parcel, not refunded)."""
    reason = cancel_reason or ""
    return reason.startswith(REFUSED_PREFIX) and reason.endswith(UNPLACED)


def settled(cancel_reason: str, how: str) -> str:
    """Rule 7: the reason of an unplaced parcel once its lines are ``how`` (``re-reserved``,
    ``refunded``); it still starts ``refused:`` so the warehouse stays excluded (rule 5)."""
    base = cancel_reason.removesuffix(UNPLACED)
    suffix = f" [{how}]"
    return base[: REASON_MAX - len(suffix)] + suffix
