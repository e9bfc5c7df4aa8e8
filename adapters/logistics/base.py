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
    "REALLOCATE_CODES",
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


#: Booking refusal codes (``ProviderRejected.code``) meaning "this warehouse cannot ship the
#: parcel" — out of stock there, or the site is closed — rather than "the request is wrong":
#: the shipping stage re-allocates the parcel's lines to another warehouse.
REALLOCATE_CODES = frozenset({"out_of_stock", "warehouse_closed"})


@dataclass(frozen=True, slots=True)
class BookShipment:
    order_id: str
    idempotency_key: str
    recipient_name: str
    phone: str
    address: str
    items: Sequence[tuple[str, int]]  # (sku, quantity)
    #: The warehouse the parcel leaves from (one parcel per warehouse); None for a legacy
    #: parcel that carries a whole order from wherever its stock is.
    warehouse: str | None = None


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
