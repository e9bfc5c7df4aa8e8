"""Payment and refund statuses with their transition tables. Statuses only move forward.

::

    CREATING ─▶ PENDING ─▶ PAID ─▶ PARTIALLY_REFUNDED ─▶ REFUNDED
        │          │        ▲  └──────────────────────────▲
        └──────────┴─▶ CLOSED (a late payment after close still moves it to PAID: the money
                              was taken, and the service refunds it)

``CREATING`` means the idempotency key is stored and the provider call may or may not have
happened; retrying the create with the same key is always safe.
"""

from __future__ import annotations

import enum

from domain.orders import OrderStatus, can_transition


class PaymentStatus(enum.StrEnum):
    CREATING = "CREATING"
    PENDING = "PENDING"
    PAID = "PAID"
    CLOSED = "CLOSED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"


P = PaymentStatus

PAYMENT_TRANSITIONS: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    P.CREATING: frozenset({P.PENDING, P.PAID, P.CLOSED}),
    P.PENDING: frozenset({P.PAID, P.CLOSED}),
    P.CLOSED: frozenset({P.PAID}),
    P.PAID: frozenset({P.PARTIALLY_REFUNDED, P.REFUNDED}),
    P.PARTIALLY_REFUNDED: frozenset({P.REFUNDED}),
    P.REFUNDED: frozenset(),
}

#: Money has been taken at some point (refunds are tracked separately).
CAPTURED: frozenset[PaymentStatus] = frozenset({P.PAID, P.PARTIALLY_REFUNDED, P.REFUNDED})


def payment_can_move(current: PaymentStatus | str, target: PaymentStatus | str) -> bool:
    """True if ``current -> target`` is a forward move. Staying put is not a move."""
    return PaymentStatus(target) in PAYMENT_TRANSITIONS[PaymentStatus(current)]


class RefundStatus(enum.StrEnum):
    REQUESTED = "REQUESTED"  # stored with its refund number; provider not called yet
    PENDING = "PENDING"  # the provider accepted it and is processing
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


REFUND_TRANSITIONS: dict[RefundStatus, frozenset[RefundStatus]] = {
    RefundStatus.REQUESTED: frozenset(
        {RefundStatus.PENDING, RefundStatus.SUCCEEDED, RefundStatus.FAILED}
    ),
    RefundStatus.PENDING: frozenset({RefundStatus.SUCCEEDED, RefundStatus.FAILED}),
    RefundStatus.SUCCEEDED: frozenset(),
    RefundStatus.FAILED: frozenset(),
}


def refund_can_move(current: RefundStatus | str, target: RefundStatus | str) -> bool:
    return RefundStatus(target) in REFUND_TRANSITIONS[RefundStatus(current)]


class AfterCapture(enum.StrEnum):
    """What a payment captured at the provider does to its order (:func:`after_capture`)."""

    PAY = "pay"  # the order awaited payment: PAID, and the shipping stage starts
    REFUND = "refund"  # the order is over (expired, cancelled): the money goes back in full
    ATTENTION = "attention"  # amount or currency differ: NEEDS_ATTENTION, a person looks
    # Amount or currency differ and the order is over (expired, cancelled): what was paid goes
    # back in full and the payment is marked for a person (the order cannot move any more).
    REFUND_FLAGGED = "refund_flagged"
    NOTE = "note"  # they differ, but the order is past where it could be flagged: timeline only
    NOTHING = "nothing"  # already paid or further (a duplicate)


_AWAITING = frozenset({OrderStatus.RESERVED, OrderStatus.AWAITING_PAYMENT})


def after_capture(order_status: OrderStatus | str, *, amount_matches: bool) -> AfterCapture:
    """The rule for a newly captured payment, by the order's status. A wrong amount is never
    applied as paid, whatever the status: money that does not match the order needs a person.
    Money paid on an order that is over goes back whatever its amount: a wrong amount is
    refunded as paid and flagged too, never only written down."""
    status = OrderStatus(order_status)
    if not amount_matches:
        if status in (OrderStatus.EXPIRED, OrderStatus.CANCELLED):
            return AfterCapture.REFUND_FLAGGED
        attention = can_transition(status, OrderStatus.NEEDS_ATTENTION)
        return AfterCapture.ATTENTION if attention else AfterCapture.NOTE
    if status in _AWAITING:
        return AfterCapture.PAY
    if status in (OrderStatus.EXPIRED, OrderStatus.CANCELLED):
        return AfterCapture.REFUND
    return AfterCapture.NOTHING
