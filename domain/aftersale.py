"""After-sale: returns, exchanges and line refunds on an order the buyer has received (issue 22).

Pure rules (stdlib only), for the after-sale services to come:

1. **Kinds and statuses** (:data:`RETURN_TRANSITIONS`, :func:`can_move`). Every kind starts
   REQUESTED and moves only forward::

       REQUESTED ─▶ APPROVED ─▶ (refund-only) ─────────────────────────▶ REFUNDED
           │            └─▶ AWAITING_PARCEL ─▶ RECEIVED ─▶ REFUNDED (return-and-refund;
           │                       │              │                  exchange: fallback)
           ├─▶ REJECTED            │              ├─▶ RESHIPPED (exchange)
           └─▶ CLOSED ◀────────────┘              └─▶ CLOSED

   REQUESTED ─▶ CLOSED is the buyer withdrawing; AWAITING_PARCEL ─▶ CLOSED is a parcel not
   shipped back by its deadline (or withdrawn before shipping); RECEIVED ─▶ CLOSED is a return
   received with nothing to refund or reship (rule 2: every unit LOST), or an operator's
   decision (e.g. the buyer damaged the goods). An exchange may also go RECEIVED ─▶ REFUNDED
   when its replacement cannot be supplied: the goods are back, so the buyer is paid instead.
   REFUND_ONLY never waits for a parcel. REJECTED, CLOSED, REFUNDED and RESHIPPED are final
   (:data:`FINAL_STATUSES`). REFUNDED means the refund is written with its idempotent number;
   the refund's own status (:class:`domain.payments.RefundStatus`) says whether money moved.
2. **Dispositions** (:func:`ledger_kind`, :func:`on_hand_delta`, :func:`settled_units`,
   :func:`after_receipt`): the warehouse names one per received line (or per part of one).
   RESTOCK puts the units back on hand (ledger kind ``return_restock``, ``+units``); DAMAGED
   units arrived but cannot be sold (``write_off``, on hand unchanged: shipping already took
   them off); LOST units never arrived (no ledger row). RESTOCK and DAMAGED units are settled
   (refunded, or reshipped by an exchange): damage is what most returns are about, and the
   shop bears the carrier's. LOST units are not; a return with nothing settled closes.
3. **Returnable quantities** (:func:`returnable`, :func:`holds_units`): a line's returnable
   units are its delivered units minus the units of every earlier return on it that still
   holds them: any return except a REJECTED one and a CLOSED one that was never received
   (withdrawn, or not shipped back). Open returns hold their units, so two concurrent requests
   cannot both take the last one; a return CLOSED after receipt holds them (the goods left the
   buyer). For a refund-only before shipping the caller passes the units ordered and not
   shipped instead of delivered ones.
4. **Requests** (:func:`check_request`): at least one line; each names a line of the order
   once, with a whole quantity of at least 1 and at most its returnable units. Errors are
   :class:`~domain.errors.ValidationError` naming ``lines``, ``lines.<i>.<key_field>`` or
   ``lines.<i>.quantity`` (``i`` from 0, as intake's errors), the first one found in order.
5. **Line shares** (:func:`line_shares`): what each line was actually charged. The order-level
   discount (list total minus charged, never below 0) is split over the lines in proportion to
   their list amounts (quantity times unit amount). Each share is its exact value
   ``list * charged / list_total`` rounded down or up (largest remainder: the units left over
   after rounding down go to the largest remainders; ties to the larger list amount, then the
   earlier line), so the shares add up exactly to what was charged. A charge above the list
   total (a fee) is no line's: the shares are then the list amounts.
6. **Refunds** (:func:`refund_for`): ``k`` more units of a line with ``b`` already refunded
   refund ``floor(share*(b+k)/q) - floor(share*b/q)``: whatever the steps, the line's units
   returned in full refund exactly its share, and never more.
7. **Cap** (:func:`cap_refund`): a refund never takes the total refunded past what was
   captured. An amount someone asked for is refused beyond it (``amount``: 4xx, nothing
   changed); a computed one (``clamp=True``, e.g. a line share after earlier cancellations
   rounded differently) is cut down to what is left.
8. **Approval** (:func:`auto_approve`): a request is approved without an operator only when
   a threshold is configured, it has lines, every line's product is returnable, it is within
   the products' windows and its amount is at most the threshold. The amount of an exchange is
   the value of the lines exchanged (what the shop would otherwise refund): an expensive
   exchange costs stock and two parcels, so it waits for an operator like a refund.
9. **Deadlines** (:func:`receipt_due`, :func:`window_ends`, :func:`parcel_due`,
   :func:`within`): a delivered order counts as received ``auto_receive_s`` after delivery; the
   after-sale window ends ``window_s`` after receipt; an approved return's parcel is due
   ``ship_back_s`` after approval. Times are timezone-aware; an instant equal to the deadline
   is past it.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from domain.errors import ValidationError

K = TypeVar("K", bound=Hashable)


class ReturnKind(enum.StrEnum):
    REFUND_ONLY = "REFUND_ONLY"  # 仅退款: money back, nothing comes back
    RETURN_AND_REFUND = "RETURN_AND_REFUND"  # 退货退款
    EXCHANGE = "EXCHANGE"  # 换货: the same lines shipped again


class ReturnStatus(enum.StrEnum):
    REQUESTED = "REQUESTED"
    APPROVED = "APPROVED"
    REJECTED = "REJECTED"
    AWAITING_PARCEL = "AWAITING_PARCEL"
    RECEIVED = "RECEIVED"
    REFUNDED = "REFUNDED"
    CLOSED = "CLOSED"
    RESHIPPED = "RESHIPPED"


R = ReturnStatus
_NONE: frozenset[ReturnStatus] = frozenset()
_START: dict[ReturnStatus, frozenset[ReturnStatus]] = {
    R.REQUESTED: frozenset({R.APPROVED, R.REJECTED, R.CLOSED}),
    R.REJECTED: _NONE,
    R.CLOSED: _NONE,
    R.REFUNDED: _NONE,
    R.RESHIPPED: _NONE,
}
_PARCEL_BACK: dict[ReturnStatus, frozenset[ReturnStatus]] = {
    R.APPROVED: frozenset({R.AWAITING_PARCEL}),
    R.AWAITING_PARCEL: frozenset({R.RECEIVED, R.CLOSED}),
}

#: Rule 1. A status a kind never enters maps to no move.
RETURN_TRANSITIONS: dict[ReturnKind, dict[ReturnStatus, frozenset[ReturnStatus]]] = {
    ReturnKind.REFUND_ONLY: {
        **_START,
        R.APPROVED: frozenset({R.REFUNDED}),
        R.AWAITING_PARCEL: _NONE,
        R.RECEIVED: _NONE,
    },
    ReturnKind.RETURN_AND_REFUND: {
        **_START,
        **_PARCEL_BACK,
        R.RECEIVED: frozenset({R.REFUNDED, R.CLOSED}),
    },
    ReturnKind.EXCHANGE: {
        **_START,
        **_PARCEL_BACK,
        R.RECEIVED: frozenset({R.RESHIPPED, R.REFUNDED, R.CLOSED}),
    },
}

#: Rule 1: a return in one of these is over, whatever its kind.
FINAL_STATUSES: frozenset[ReturnStatus] = frozenset({R.REJECTED, R.CLOSED, R.REFUNDED, R.RESHIPPED})


def can_move(
    kind: ReturnKind | str, current: ReturnStatus | str, target: ReturnStatus | str
) -> bool:
    """Rule 1: True if a return of ``kind`` may go ``current -> target``. Staying put is not a
    move. Raises ValueError for a kind or status that does not exist."""
    return ReturnStatus(target) in RETURN_TRANSITIONS[ReturnKind(kind)][ReturnStatus(current)]


class Disposition(enum.StrEnum):
    RESTOCK = "RESTOCK"  # arrived sellable: back on hand
    DAMAGED = "DAMAGED"  # arrived, cannot be sold: written off
    LOST = "LOST"  # never arrived


#: Rule 2: the stock ledger kind each disposition writes (LOST writes none).
_LEDGER_KINDS: dict[Disposition, str | None] = {
    Disposition.RESTOCK: "return_restock",
    Disposition.DAMAGED: "write_off",
    Disposition.LOST: None,
}


def ledger_kind(disposition: Disposition | str) -> str | None:
    """Rule 2: the ``stock_movements.kind`` for units with ``disposition``, or None when no
    row is written (LOST: nothing arrived)."""
    return _LEDGER_KINDS[Disposition(disposition)]


def on_hand_delta(disposition: Disposition | str, units: int) -> int:
    """Rule 2: the change to on hand (``delta_on_hand``) for ``units`` received with
    ``disposition``: ``+units`` for RESTOCK, 0 otherwise (reserved never changes)."""
    return units if Disposition(disposition) == Disposition.RESTOCK else 0


def settled_units(received: Iterable[tuple[K, Disposition | str, int]]) -> dict[K, int]:
    """Rule 2: per line, the units to refund (or reship) from the warehouse's ``(line,
    disposition, units)``: every unit not LOST. Lines with none settled are left out."""
    out: dict[K, int] = {}
    for key, disposition, units in received:
        if Disposition(disposition) != Disposition.LOST and units > 0:
            out[key] = out.get(key, 0) + units
    return out


def after_receipt(kind: ReturnKind | str, settled: int) -> ReturnStatus:
    """Rule 2: where a RECEIVED return goes with ``settled`` units to settle: CLOSED with none,
    else REFUNDED (return-and-refund) or RESHIPPED (exchange). Raises ValueError for a
    refund-only, which is never received."""
    k = ReturnKind(kind)
    if k == ReturnKind.REFUND_ONLY:
        raise ValueError("a refund-only return has no parcel to receive")
    if settled <= 0:
        return R.CLOSED
    return R.RESHIPPED if k == ReturnKind.EXCHANGE else R.REFUNDED


@dataclass(frozen=True, slots=True)
class EarlierLine(Generic[K]):
    """One line of an earlier return on the order: ``received`` once it reached RECEIVED."""

    key: K
    quantity: int
    status: ReturnStatus
    received: bool = False


def holds_units(status: ReturnStatus | str, *, received: bool) -> bool:
    """Rule 3: whether a return in ``status`` still holds its units against the line."""
    s = ReturnStatus(status)
    if s == R.REJECTED:
        return False
    return received or s != R.CLOSED


def returnable(delivered: Mapping[K, int], earlier: Iterable[EarlierLine[K]]) -> dict[K, int]:
    """Rule 3: per line of ``delivered``, the units a new return may still take (never below
    0). Earlier lines on a key not in ``delivered`` are ignored."""
    left = dict(delivered)
    for line in earlier:
        if line.key in left and holds_units(line.status, received=line.received):
            left[line.key] -= line.quantity
    return {key: max(units, 0) for key, units in left.items()}


def check_request(
    lines: Sequence[tuple[K, int]], available: Mapping[K, int], *, key_field: str = "sku"
) -> None:
    """Rule 4: raise :class:`ValidationError` for the first bad line of ``lines`` (``(key,
    quantity)`` as requested), given ``available`` from :func:`returnable`."""
    if not lines:
        raise ValidationError("lines", "at least one line is required")
    seen: dict[K, int] = {}
    for i, (key, quantity) in enumerate(lines):
        where = f"lines.{i}"
        if key not in available:
            raise ValidationError(f"{where}.{key_field}", f"{key!r} is not a line of this order")
        if key in seen:
            raise ValidationError(
                f"{where}.{key_field}", f"{key!r} is already requested by lines.{seen[key]}"
            )
        seen[key] = i
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
            raise ValidationError(f"{where}.quantity", "must be a whole number of at least 1")
        left = available[key]
        if quantity > left:
            raise ValidationError(
                f"{where}.quantity",
                f"{quantity} is more than the {left} left to return on this line "
                "(delivered minus earlier returns)",
            )


def line_shares(lines: Sequence[tuple[K, int, int]], charged_total: int) -> dict[K, int]:
    """Rule 5: each line's share of ``charged_total`` from ``(key, quantity, unit_amount)``,
    in minor units. The shares add up to ``min(charged_total, list total)`` exactly, and each
    is within 1 of its exact proportional value and never above its list amount. Pass the
    lines in a fixed order (``line_no``): it breaks ties. Raises ValueError for a repeated
    key or a negative quantity, unit amount or charge."""
    if charged_total < 0:
        raise ValueError("charged_total must not be negative")
    amounts: dict[K, int] = {}
    for key, quantity, unit_amount in lines:
        if key in amounts:
            raise ValueError(f"line {key!r} is repeated")
        if quantity < 0 or unit_amount < 0:
            raise ValueError(f"line {key!r} has a negative quantity or unit amount")
        amounts[key] = quantity * unit_amount
    list_total = sum(amounts.values())
    if charged_total >= list_total:
        return amounts
    shares = {key: amount * charged_total // list_total for key, amount in amounts.items()}
    leftover = charged_total - sum(shares.values())
    # Largest remainder first, then the larger list amount, then the earlier line.
    ranked = sorted(
        enumerate(amounts.items()),
        key=lambda e: (-(e[1][1] * charged_total % list_total), -e[1][1], e[0]),
    )
    for _, (key, _amount) in ranked[:leftover]:
        shares[key] += 1
    return shares


def refund_for(share: int, line_quantity: int, returned_before: int, returning_now: int) -> int:
    """Rule 6: the refund for ``returning_now`` more units of a line of ``line_quantity``
    units whose share is ``share``, ``returned_before`` of them already refunded. Raises
    ValueError unless ``0 <= returned_before``, ``0 <= returning_now`` and their sum is at most
    ``line_quantity`` (the request was checked first: rule 4)."""
    if line_quantity < 1 or share < 0:
        raise ValueError("a line has at least one unit and a share of at least 0")
    if returned_before < 0 or returning_now < 0:
        raise ValueError("unit counts must not be negative")
    after = returned_before + returning_now
    if after > line_quantity:
        raise ValueError(f"{after} units refunded on a line of {line_quantity}")
    return share * after // line_quantity - share * returned_before // line_quantity


def cap_refund(amount: int, captured: int, refunded_so_far: int, *, clamp: bool = False) -> int:
    """Rule 7: ``amount`` if it fits in what is left to refund (``captured`` minus
    ``refunded_so_far``, never below 0); beyond it, what is left when ``clamp``, else
    :class:`ValidationError` on ``amount``. A negative amount is always refused."""
    if amount < 0:
        raise ValidationError("amount", "must not be negative")
    left = max(captured - refunded_so_far, 0)
    if amount <= left:
        return amount
    if clamp:
        return left
    raise ValidationError(
        "amount",
        f"{amount} is more than the {left} left to refund ({captured} captured, "
        f"{refunded_so_far} refunded already)",
    )


def auto_approve(
    kind: ReturnKind | str,
    amount: int,
    lines_returnable: Iterable[bool],
    *,
    within_window: bool,
    threshold: int | None,
) -> bool:
    """Rule 8: True if the request is approved without an operator. ``amount`` is the refund
    asked for, or for an exchange the value of its lines; ``lines_returnable`` has one flag per
    line (its product's returnable flag); ``threshold`` None means every request waits for an
    operator."""
    ReturnKind(kind)  # the rule is the same for every kind; an unknown one is still an error
    flags = list(lines_returnable)
    if threshold is None or not flags or not within_window:
        return False
    return all(flags) and 0 <= amount <= threshold


def _after(start: datetime, seconds: int, name: str) -> datetime:
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    if seconds < 0:
        raise ValueError("a delay must not be negative")
    return start + timedelta(seconds=seconds)


def receipt_due(delivered_at: datetime, auto_receive_s: int) -> datetime:
    """Rule 9: when a delivered order counts as received without the buyer confirming."""
    return _after(delivered_at, auto_receive_s, "delivered_at")


def window_ends(received_at: datetime, window_s: int) -> datetime:
    """Rule 9: when the after-sale window of an order received at ``received_at`` ends."""
    return _after(received_at, window_s, "received_at")


def parcel_due(approved_at: datetime, ship_back_s: int) -> datetime:
    """Rule 9: by when an approved return's parcel must be shipped back, else it closes."""
    return _after(approved_at, ship_back_s, "approved_at")


def within(now: datetime, deadline: datetime) -> bool:
    """Rule 9: True while ``now`` is before ``deadline`` (equal is past it)."""
    return now < deadline
