"""domain.tracking.order_follows: what an order does after its shipment moved (pure rules)."""

from __future__ import annotations

import pytest

from domain.orders import OrderStatus as O
from domain.tracking import OrderFollow, ShipmentStatus, order_follows

S = ShipmentStatus
FLAGGED = "tracking_exception: parcel damaged"


@pytest.mark.parametrize(
    ("order", "reason", "shipment", "expected"),
    [
        # 1. moving: a shipped order goes in transit, once
        (O.SHIPPED, None, S.IN_TRANSIT, OrderFollow(moves=(O.IN_TRANSIT,))),
        (O.SHIPPED, None, S.OUT_FOR_DELIVERY, OrderFollow(moves=(O.IN_TRANSIT,))),
        (O.IN_TRANSIT, None, S.OUT_FOR_DELIVERY, OrderFollow()),
        # 2. delivered: DELIVERED, and no further (receipt is the buyer's, or the clock's)
        (O.SHIPPED, None, S.DELIVERED, OrderFollow(moves=(O.DELIVERED,))),
        (O.IN_TRANSIT, None, S.DELIVERED, OrderFollow(moves=(O.DELIVERED,))),
        (O.RECEIPT_CONFIRMED, None, S.DELIVERED, OrderFollow()),
        (O.COMPLETED, None, S.DELIVERED, OrderFollow()),
        # 4. expired: flagged
        (O.IN_TRANSIT, None, S.EXPIRED, OrderFollow(flag="tracking_expired")),
        # 5. a tracking exception the carrier resolved moves on
        (O.NEEDS_ATTENTION, FLAGGED, S.IN_TRANSIT, OrderFollow(moves=(O.IN_TRANSIT,))),
        (O.NEEDS_ATTENTION, FLAGGED, S.DELIVERED, OrderFollow(moves=(O.DELIVERED,))),
        # ... but a return, or a flag of any other kind, stays for the operator
        (O.NEEDS_ATTENTION, "tracking_returned: refused", S.DELIVERED, OrderFollow()),
        (O.NEEDS_ATTENTION, "amount_mismatch", S.IN_TRANSIT, OrderFollow()),
        (O.NEEDS_ATTENTION, None, S.DELIVERED, OrderFollow()),
        # 6. nothing the order's table forbids: a cancelled order is not flagged or moved
        (O.CANCELLED, None, S.EXCEPTION, OrderFollow()),
        (O.CANCELLED, None, S.DELIVERED, OrderFollow()),
        # statuses that say nothing new
        (O.SHIPPED, None, S.INFO_RECEIVED, OrderFollow()),
        (O.SHIPPED, None, S.PENDING, OrderFollow()),
    ],
)
def test_the_order_follows_its_shipment(order, reason, shipment, expected):
    assert order_follows(order, reason, shipment, exception_text="parcel damaged") == expected


def test_an_exception_flags_with_its_text_and_a_return_is_named_apart():
    damaged = order_follows(O.IN_TRANSIT, None, S.EXCEPTION, exception_text="parcel damaged")
    assert damaged == OrderFollow(flag="tracking_exception: parcel damaged")
    returned = order_follows(O.IN_TRANSIT, None, S.EXCEPTION, returned=True, exception_text="x")
    assert returned == OrderFollow(flag="tracking_returned: x")
    # Already flagged by an exception: a second exception re-flags nothing (no self-transition).
    assert order_follows(O.NEEDS_ATTENTION, FLAGGED, S.EXCEPTION) == OrderFollow()
