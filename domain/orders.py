"""Order status and its transition table: the only place that says which moves are legal.

::

    RECEIVED ─▶ RESERVED ─▶ AWAITING_PAYMENT ─▶ PAID ─▶ SHIPPED ─▶ IN_TRANSIT ─▶ DELIVERED ─▶ …
       │           │               │              │        │           │
       ▼           ▼               ▼              ▼        └───────────┴─▶ NEEDS_ATTENTION
    REJECTED    EXPIRED /       EXPIRED /      CANCELLED
                CANCELLED       CANCELLED /
                                NEEDS_ATTENTION

    … DELIVERED ─▶ RECEIPT_CONFIRMED ─▶ COMPLETED

After delivery the order waits for the buyer: RECEIPT_CONFIRMED when the buyer confirms receipt
or ``AUTO_RECEIVE_S`` after delivery, COMPLETED when the after-sale window
(``AFTERSALE_WINDOW_S``) has passed since receipt with no return open
(:mod:`services.receipt`). The name is not RECEIVED: that is the status of an order just taken
in at intake.

An order shipped as several parcels (one per warehouse, :mod:`domain.parcels`) also passes
through PARTIALLY_SHIPPED (some parcels booked, not all) and PARTIALLY_DELIVERED (some
delivered, not all); its status is worked out from its parcels
(:func:`domain.parcels.order_progress`), and along the shipping ladder
PAID ─▶ PARTIALLY_SHIPPED ─▶ SHIPPED ─▶ IN_TRANSIT ─▶ PARTIALLY_DELIVERED ─▶ DELIVERED it may
skip rungs forward (parcels move independently), never back. A one-parcel order never enters a
PARTIALLY_ status.
"""

from __future__ import annotations

import enum

from domain.errors import InvalidTransition


class OrderStatus(enum.StrEnum):
    RECEIVED = "RECEIVED"
    RESERVED = "RESERVED"
    REJECTED = "REJECTED"
    AWAITING_PAYMENT = "AWAITING_PAYMENT"
    PAID = "PAID"
    PARTIALLY_SHIPPED = "PARTIALLY_SHIPPED"
    SHIPPED = "SHIPPED"
    IN_TRANSIT = "IN_TRANSIT"
    PARTIALLY_DELIVERED = "PARTIALLY_DELIVERED"
    DELIVERED = "DELIVERED"
    RECEIPT_CONFIRMED = "RECEIPT_CONFIRMED"  # the buyer has it (confirmed, or by the clock)
    COMPLETED = "COMPLETED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"


S = OrderStatus

TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.RECEIVED: frozenset({S.RESERVED, S.REJECTED, S.CANCELLED}),
    S.RESERVED: frozenset({S.AWAITING_PAYMENT, S.PAID, S.EXPIRED, S.CANCELLED, S.NEEDS_ATTENTION}),
    S.AWAITING_PAYMENT: frozenset({S.PAID, S.EXPIRED, S.CANCELLED, S.NEEDS_ATTENTION}),
    S.PAID: frozenset({S.PARTIALLY_SHIPPED, S.SHIPPED, S.CANCELLED, S.NEEDS_ATTENTION}),
    # Forward along the ladder, skipping rungs: the other parcels may have moved meanwhile. A
    # partly booked order is never CANCELLED as a whole: cancelling it cancels the unbooked
    # parcels and the order follows the booked ones (services.payments.close.cancel_order).
    S.PARTIALLY_SHIPPED: frozenset(
        {S.SHIPPED, S.IN_TRANSIT, S.PARTIALLY_DELIVERED, S.DELIVERED, S.NEEDS_ATTENTION}
    ),
    S.SHIPPED: frozenset({S.IN_TRANSIT, S.PARTIALLY_DELIVERED, S.DELIVERED, S.NEEDS_ATTENTION}),
    S.IN_TRANSIT: frozenset({S.PARTIALLY_DELIVERED, S.DELIVERED, S.NEEDS_ATTENTION}),
    S.PARTIALLY_DELIVERED: frozenset({S.DELIVERED, S.NEEDS_ATTENTION}),
    S.DELIVERED: frozenset({S.RECEIPT_CONFIRMED}),
    S.RECEIPT_CONFIRMED: frozenset({S.COMPLETED}),
    # An operator resolves an order that needs attention by moving it on or cancelling it.
    S.NEEDS_ATTENTION: frozenset(
        {S.PAID, S.PARTIALLY_SHIPPED, S.SHIPPED, S.IN_TRANSIT, S.PARTIALLY_DELIVERED}
        | {S.DELIVERED, S.CANCELLED}
    ),
    S.COMPLETED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
    S.CANCELLED: frozenset(),
}

FINAL_STATUSES: frozenset[OrderStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)

#: Statuses in which stock is held by an ACTIVE reservation.
HOLDS_STOCK: frozenset[OrderStatus] = frozenset(
    {S.RESERVED, S.AWAITING_PAYMENT, S.PAID, S.PARTIALLY_SHIPPED}
)

#: Cancel is allowed until the parcel leaves. PARTIALLY_SHIPPED cancels only what has not
#: shipped (its unbooked parcels); every other status here cancels the whole order.
CANCELLABLE: frozenset[OrderStatus] = frozenset(
    {S.RECEIVED, S.RESERVED, S.AWAITING_PAYMENT, S.PAID, S.PARTIALLY_SHIPPED, S.NEEDS_ATTENTION}
)

#: The shipping ladder, in order: a parcel-driven move only ever goes up it.
SHIPPING_LADDER: tuple[OrderStatus, ...] = (
    S.PAID, S.PARTIALLY_SHIPPED, S.SHIPPED, S.IN_TRANSIT, S.PARTIALLY_DELIVERED, S.DELIVERED,
)  # fmt: skip


def can_transition(current: OrderStatus, target: OrderStatus) -> bool:
    return target in TRANSITIONS[current]


def ensure_transition(current: OrderStatus | str, target: OrderStatus | str) -> OrderStatus:
    """Return ``target`` as an OrderStatus if ``current -> target`` is legal, else raise
    :class:`InvalidTransition`."""
    cur, tgt = OrderStatus(current), OrderStatus(target)
    if not can_transition(cur, tgt):
        raise InvalidTransition(cur, tgt)
    return tgt


class RejectReason(enum.StrEnum):
    OUT_OF_STOCK = "out_of_stock"
    UNKNOWN_SKU = "unknown_sku"
    INACTIVE_PRODUCT = "inactive_product"
    CURRENCY_MISMATCH = "currency_mismatch"
    #: The order's discount is its whole catalog total or more: nothing would be charged.
    DISCOUNT_TOO_LARGE = "discount_too_large"
