"""Pure payment rules: forward-only payment and refund statuses, and the edges of the Stripe
webhook tolerance (300 s either way; DESIGN §3.7 and §3.8)."""

from __future__ import annotations

import hashlib
import hmac
import itertools

import pytest

from adapters.payments.stripe import verify_signature
from domain.errors import SignatureInvalid
from domain.payments import (
    CAPTURED,
    PaymentStatus,
    RefundStatus,
    payment_can_move,
    refund_can_move,
)

P, R = PaymentStatus, RefundStatus

#: The moves the business allows, written out here independently of the domain's table.
PAYMENT_MOVES = {
    (P.CREATING, P.PENDING), (P.CREATING, P.PAID), (P.CREATING, P.CLOSED),
    (P.PENDING, P.PAID), (P.PENDING, P.CLOSED),
    (P.CLOSED, P.PAID),  # paid after the close: recorded, then refunded by the service
    (P.PAID, P.PARTIALLY_REFUNDED), (P.PAID, P.REFUNDED),
    (P.PARTIALLY_REFUNDED, P.REFUNDED),
}  # fmt: skip
REFUND_MOVES = {
    (R.REQUESTED, R.PENDING), (R.REQUESTED, R.SUCCEEDED), (R.REQUESTED, R.FAILED),
    (R.PENDING, R.SUCCEEDED), (R.PENDING, R.FAILED),
}  # fmt: skip


@pytest.mark.parametrize(("current", "target"), list(itertools.product(P, P)))
def test_payment_status_moves_only_forward(current: P, target: P) -> None:
    assert payment_can_move(current, target) is ((current, target) in PAYMENT_MOVES)


@pytest.mark.parametrize(("current", "target"), list(itertools.product(R, R)))
def test_refund_status_moves_only_forward(current: R, target: R) -> None:
    assert refund_can_move(current, target) is ((current, target) in REFUND_MOVES)


def test_captured_money_is_never_uncaptured() -> None:
    """Once money was taken no move leads back to a status without it (refunds are rows)."""
    for current, target in PAYMENT_MOVES:
        if current in CAPTURED:
            assert target in CAPTURED, (current, target)


SECRET = "whsec_test_only_rules"
BODY = b'{"id":"evt_1","type":"payment_intent.succeeded"}'
NOW = 1_800_000_000.0


def header_at(t: int) -> str:
    digest = hmac.new(SECRET.encode(), f"{t}.".encode() + BODY, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


@pytest.mark.parametrize("age_s", [-300, -1, 0, 1, 299, 300])
def test_stripe_signature_within_300_s_either_way_is_accepted(age_s: int) -> None:
    verify_signature(header_at(int(NOW) - age_s), BODY, SECRET, 300, NOW)


@pytest.mark.parametrize("age_s", [-301, 301, 3600])
def test_stripe_signature_past_300_s_either_way_is_refused(age_s: int) -> None:
    with pytest.raises(SignatureInvalid, match="tolerance"):
        verify_signature(header_at(int(NOW) - age_s), BODY, SECRET, 300, NOW)


def test_one_key_rotation_sequence_for_stored_and_walked_keys():
    from adapters.payments import stripe
    from adapters.payments.base import key_number, rotated_key

    base = "pay-0123456789abcdef0123456789abcdef"
    keys = [rotated_key(base, n) for n in range(4)]
    assert keys == [base, f"{base}:r1", f"{base}:r2", f"{base}:r3"]
    assert [key_number(base, k) for k in keys] == [0, 1, 2, 3]
    assert key_number(base, f"{base}-r7") == 7  # a key stored before the sequence was shared
    # The adapter walks exactly the sequence the service stores along.
    assert stripe._key_sequence(base)[:4] == keys


@pytest.mark.parametrize(
    ("order_status", "matches", "action"),
    [
        ("RESERVED", True, "pay"),  # paid before the create's answer was recorded
        ("AWAITING_PAYMENT", True, "pay"),
        ("EXPIRED", True, "refund"),  # paid after the deadline: the money goes back
        ("CANCELLED", True, "refund"),
        ("PAID", True, "nothing"),  # a duplicate
        ("SHIPPED", True, "nothing"),
        ("AWAITING_PAYMENT", False, "attention"),  # never applied as paid
        ("EXPIRED", False, "refund_flagged"),  # over: the money goes back, and a person is told
        ("CANCELLED", False, "refund_flagged"),
        ("COMPLETED", False, "note"),  # paid long ago: this capture cannot be a new one
    ],
)
def test_what_a_captured_payment_does_to_its_order(order_status, matches, action):
    from domain.payments import after_capture

    assert after_capture(order_status, amount_matches=matches) == action
