"""The status-callback protocol's constants (event type, headers, delivery statuses, limits) and
the retry policy of a delivery. See :mod:`services.callbacks` for how the pieces fit."""

from __future__ import annotations

from dataclasses import dataclass

from domain.backoff import equal_jitter_s
from domain.orders import OrderStatus

EVENT_TYPE = "order.status_changed"
SIGNATURE_HEADER = "X-Orderflow-Signature"
EVENT_ID_HEADER = "X-Orderflow-Event-Id"
TIMESTAMP_HEADER = "X-Orderflow-Timestamp"
#: Receivers should refuse signatures older (or newer) than this.
SIGNATURE_TOLERANCE_S = 300

PENDING, DELIVERED, FAILED, PAUSED = "PENDING", "DELIVERED", "FAILED", "PAUSED"
DELIVERY_STATUSES = (PENDING, DELIVERED, FAILED, PAUSED)

#: Statuses whose event carries the parcel's tracking.
SHIPPED_OR_LATER = frozenset(
    {OrderStatus.SHIPPED, OrderStatus.IN_TRANSIT, OrderStatus.DELIVERED, OrderStatus.COMPLETED}
)
MIN_SECRET_LEN = 16
MAX_URL_LEN = 2000
MAX_ERROR_LEN = 500


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How failures are retried. The task layer builds it from settings."""

    backoff_first_s: float = 10.0  # first retry after ~this; doubles per attempt
    backoff_cap_s: float = 900.0  # longest gap between two attempts of one delivery
    pause_after: int = 10  # consecutive endpoint failures that pause the endpoint
    max_attempts: int = 20  # a delivery that failed this often is FAILED (resend revives it)

    def backoff_s(self, failures: int) -> float:
        """The delay after the ``failures``-th failure (:func:`domain.backoff.equal_jitter_s`)."""
        return equal_jitter_s(failures, first_s=self.backoff_first_s, cap_s=self.backoff_cap_s)
