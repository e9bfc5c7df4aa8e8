"""The logistics port: booking a shipment and following it through a carrier-tracking provider.

Statuses are normalized to :class:`domain.tracking.ShipmentStatus` (the vocabulary of
provider-protocols.md §5), always stored beside the provider's raw code. Errors are the provider
branch of the one error tree (:mod:`adapters.errors`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from adapters.errors import ProviderError, ProviderRejected, ProviderUnavailable, SignatureInvalid
from domain.tracking import ShipmentStatus

__all__ = [
    "BookShipment",
    "Booked",
    "BookingService",
    "ProviderError",
    "ProviderRejected",
    "ProviderUnavailable",
    "PushUpdate",
    "SignatureInvalid",
    "TrackingEvent",
    "TrackingProvider",
    "TrackingResult",
]


@dataclass(frozen=True, slots=True)
class BookShipment:
    order_id: str
    idempotency_key: str
    recipient_name: str
    phone: str
    address: str
    items: Sequence[tuple[str, int]]  # (sku, quantity)


@dataclass(frozen=True, slots=True)
class Booked:
    carrier: str  # Kuaidi100 carrier code, lowercase, e.g. "yuantong"
    waybill: str


@dataclass(frozen=True, slots=True)
class TrackingEvent:
    at: datetime
    description: str
    location: str
    status: ShipmentStatus
    raw_code: str


@dataclass(frozen=True, slots=True)
class TrackingResult:
    carrier: str
    waybill: str
    status: ShipmentStatus
    raw_state: str
    events: Sequence[TrackingEvent]  # oldest first
    signed: bool = False  # ischeck=1
    note: str = ""  # the provider's word on the result, e.g. why it stopped tracking
    #: The parcel was refused, cancelled or is going back to the sender (status EXCEPTION): it
    #: will not reach the customer, so no later scan may resolve the order by itself.
    returned: bool = False


@dataclass(frozen=True, slots=True)
class PushUpdate:
    """A verified push: ``push_status`` is polling / shutdown / abort / updateall."""

    push_status: str
    message: str
    result: TrackingResult | None


@runtime_checkable
class BookingService(Protocol):
    name: str

    def book(self, request: BookShipment) -> Booked:
        """Book a shipment; the same idempotency key returns the same waybill."""
        ...


@runtime_checkable
class TrackingProvider(Protocol):
    name: str

    def query(self, carrier: str, waybill: str, phone: str | None = None) -> TrackingResult:
        """Real-time query. Raises ProviderUnavailable (retry later) / ProviderRejected."""
        ...

    def subscribe(self, carrier: str, waybill: str, callback_url: str, phone: str | None) -> bool:
        """Subscribe to pushes; True if newly subscribed, False if it already was (duplicate)."""
        ...

    def parse_push(self, form: Mapping[str, str]) -> PushUpdate:
        """Verify, then parse, a push callback (form fields). Raises SignatureInvalid."""
        ...

    def push_reply(self, ok: bool) -> tuple[int, bytes, str]:
        """(status code, body, content type) acknowledging a push."""
        ...
