"""The status-callback protocol's constants (event type, headers, delivery statuses, limits) and
the retry policy of a delivery. See :mod:`services.callbacks` for how the pieces fit."""

from __future__ import annotations

from dataclasses import dataclass

from domain.backoff import equal_jitter_s
from domain.orders import OrderStatus

EVENT_TYPE = "order.status_changed"
#: A parcel moved and its order did not (:mod:`services.callbacks.outbox`).
PARCEL_EVENT_TYPE = "order.parcel_updated"
SIGNATURE_HEADER = "X-Orderflow-Signature"
EVENT_ID_HEADER = "X-Orderflow-Event-Id"
TIMESTAMP_HEADER = "X-Orderflow-Timestamp"
#: Receivers should refuse signatures older (or newer) than this.
SIGNATURE_TOLERANCE_S = 300

PENDING, DELIVERED, FAILED, PAUSED = "PENDING", "DELIVERED", "FAILED", "PAUSED"
DELIVERY_STATUSES = (PENDING, DELIVERED, FAILED, PAUSED)

#: Statuses whose event carries the parcel's tracking.
SHIPPED_OR_LATER = frozenset(
    {
        OrderStatus.PARTIALLY_SHIPPED, OrderStatus.SHIPPED, OrderStatus.IN_TRANSIT,
        OrderStatus.PARTIALLY_DELIVERED, OrderStatus.DELIVERED, OrderStatus.RECEIPT_CONFIRMED,
        OrderStatus.COMPLETED,
    }
)  # fmt: skip
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

    def after_failure(self, attempts: int, endpoint_failures: int) -> AfterFailure:
        """What a failed attempt leads to, given the delivery's attempts and the endpoint's
        consecutive failures, both counting this one."""
        give_up = attempts >= self.max_attempts
        return AfterFailure(
            retry_in_s=None if give_up else self.backoff_s(attempts),
            gate_s=self.backoff_s(endpoint_failures),
            pause_endpoint=endpoint_failures >= self.pause_after,
        )


@dataclass(frozen=True, slots=True)
class AfterFailure:
    """``retry_in_s``: when the delivery is tried again (None: it is FAILED, only a resend
    revives it); ``gate_s``: how long the endpoint gets no delivery at all; ``pause_endpoint``:
    the endpoint is paused until an operator resumes it."""

    retry_in_s: float | None
    gate_s: float
    pause_endpoint: bool
