"""What the sweeper re-drives for each overdue order (``services.sweeper.redrive_for``)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from domain.orders import OrderStatus
from services.sweeper import EXPIRE_NOW, redrive_for
from services.task_names import ORDERS_PROCESS, PAYMENTS_CREATE, PAYMENTS_EXPIRE, SHIPPING_BOOK
from tests.fakes import ManualClock

NOW = ManualClock()()
LATER, EARLIER = NOW + timedelta(minutes=5), NOW - timedelta(seconds=1)


@pytest.mark.parametrize(
    ("status", "deadline", "has_payment", "task"),
    [
        (OrderStatus.RECEIVED, None, False, ORDERS_PROCESS),  # the reservation was lost
        (OrderStatus.RESERVED, LATER, False, PAYMENTS_CREATE),  # the create was lost
        (OrderStatus.RESERVED, LATER, True, PAYMENTS_CREATE),  # same key: one charge at most
        (OrderStatus.AWAITING_PAYMENT, LATER, True, PAYMENTS_CREATE),
        (OrderStatus.RESERVED, EARLIER, False, EXPIRE_NOW),  # nothing at the provider
        (OrderStatus.AWAITING_PAYMENT, EARLIER, True, PAYMENTS_EXPIRE),  # close the trade first
        (OrderStatus.AWAITING_PAYMENT, NOW, True, PAYMENTS_EXPIRE),  # the deadline itself
        (OrderStatus.RESERVED, None, True, PAYMENTS_EXPIRE),  # no deadline: treat as overdue
        (OrderStatus.PAID, None, True, SHIPPING_BOOK),  # the booking was lost
    ],
)
def test_each_overdue_order_gets_the_task_that_moves_it_on(status, deadline, has_payment, task):
    assert redrive_for(status, deadline, now=NOW, has_payment=has_payment) == task
